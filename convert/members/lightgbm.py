"""LightGBM: an LGBMClassifier pickle (allowlisted) or a native .txt, converted with onnxmltools.

LightGBM splits on `x <= t` with a double t and reads the service's float64 rows as doubles: the member's
graph takes float64 and every split holds its exact double (`margins_graph` with `splits64`), where the
converter's float32 threshold would send a value between t and its float32 neighbour the other way. LightGBM
also reads any input with |x| <= 1e-35 (its kZeroThreshold) as 0.0, and puts splits at +-1e-35 between the
negative, zero and positive bins; `onnx_threshold` folds that reading into the split value. The doubles come
from the model text (`text_thresholds`): its JSON dump writes any split at or past 1e300 (a split that parts
NaN from every value is at inf) as 1e300. A random forest (boosting_type="rf") averages its iterations where
the converter sums them: `average_trees` scales the leaves. Models ONNX cannot express (categorical splits,
linear trees, zero-as-missing splits whose default direction disagrees with the threshold) are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..loaders import load_pickle, read_checked
from . import LoadedMember, MemberKind, MemberSource, always, register
from .export import to_contract
from .lightgbm_text import booster_stand_ins, check_model_text
from .trees import ONNXMLTOOLS_OPSET, check_classes, input_types, margins_graph, tree_node

PROBE_TIMEOUT_S = 120
# Read in a child first: LightGBM's text parser aborts its process on some malformed files (an out-of-range
# split_feature or left_child: "terminate called without an active exception") and loops on a child cycle.
# An LGBMClassifier pickle carries the same text and parses it while unpickling, so it is probed too, through
# the same allowlisted unpickler as the real read. Before either, `check_model_text` refuses by tree and field
# what LightGBM would misread without crashing (a child naming a leaf past the tree's leaves): a .txt in this
# process before the probe, a pickle's text inside the unpickler (stand-in Booster), in the child and here.
_CHECK_BOOSTER = "b.dump_model(); b.predict(numpy.zeros((1, b.num_feature())))"
# A file LightGBM merely refuses (LightGBMError) is reported from the child too: read in this process, LightGBM
# would also print its own "[LightGBM] [Fatal] ..." line on the terminal beside our refusal. The child says
# why after REFUSED and exits REFUSED_EXIT; its stderr is captured, so nothing of LightGBM's reaches the user.
REFUSED, REFUSED_EXIT = "ensemble-onnx: LightGBM refused it: ", 3
_REPORT = ("\nexcept Exception as exc:\n"  # load_pickle wraps what unpickling raised: its cause says
           "    why = exc if isinstance(exc, lightgbm.basic.LightGBMError) else exc.__cause__\n"
           "    if not isinstance(why, lightgbm.basic.LightGBMError):\n        raise\n"
           f"    sys.stderr.write({REFUSED!r} + str(why).replace('\\n', ' ') + '\\n'); sys.exit({REFUSED_EXIT})")
_PROBES = {
    "text": ("import sys, numpy, lightgbm\ntry:\n"
             f"    b = lightgbm.Booster(model_file=sys.argv[1]); {_CHECK_BOOSTER}{_REPORT}"),
    "pickle": ("import sys, numpy, pathlib, lightgbm; from convert.loaders import load_pickle\n"
               "from convert.members.lightgbm_text import booster_stand_ins\np = pathlib.Path(sys.argv[1])\ntry:\n"
               f"    b = load_pickle(p, 'lightgbm', booster_stand_ins(p)).booster_; {_CHECK_BOOSTER}{_REPORT}"),
}


# Where LightGBM's checks fail, it quotes the build machine's source file and line ("Check failed: (strs.size())
# == (static_cast<size_t>(n)) at /__w/LightGBM/.../common.h, line 1173 ."): noise to the user, dropped.
_SOURCE_AT = re.compile(r"\s*at \S+\.(?:h|hpp|c|cc|cpp), line \d+\s*\.?")


def lightgbm_reason(said: str) -> str:
    """LightGBM's message on one line, without its source path and line."""
    return _SOURCE_AT.sub("", said.replace("\n", " ")).strip()


def _lightgbm_said(stderr: str, file: Path) -> str:
    """LightGBM's own reason from a child's stderr, once and short: our REFUSED line, else its last
    "[LightGBM] [Fatal]" line, else the last line; without the prefix or the file's path (the message names
    the file already)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = (next((x.removeprefix(REFUSED) for x in reversed(lines) if x.startswith(REFUSED)), None)
            or next((x.split("[Fatal]", 1)[1] for x in reversed(lines) if "[LightGBM] [Fatal]" in x), None)
            or (lines[-1] if lines else ""))
    said = lightgbm_reason(said.replace(f" in model file {file}", "").replace(str(file), "the file")).rstrip(".")
    return said if len(said) <= 200 else said[:197] + "..."


def probe_model_file(file: Path, form: str) -> None:
    """Refuse, by name, a .txt or pickle (`form`) that kills or hangs the process reading it, or that
    LightGBM refuses, before this process reads it. Any other failure in the child (a Python exception: an
    allowlist refusal) is left to the in-process read, which reports its own message."""
    import signal
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _PROBES[form], str(file)], capture_output=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFileError(f"{file}: LightGBM did not finish reading it in {PROBE_TIMEOUT_S} s (a malformed "
                             f"tree, e.g. a cycle of children); re-save the model from LightGBM.") from None
    stderr = done.stderr.decode(errors="replace")
    if done.returncode == REFUSED_EXIT and REFUSED in stderr:
        raise ModelFileError(f"{file}: not a readable LightGBM model ({_lightgbm_said(stderr, file)}).")
    if done.returncode < 0 or (done.returncode != 0 and "Traceback" not in stderr):
        how = (f"killed by {signal.Signals(-done.returncode).name}" if -done.returncode in signal.valid_signals()
               else f"exit {done.returncode}")
        said = _lightgbm_said(stderr, file)
        raise ModelFileError(f"{file}: LightGBM crashed reading it ({how}{': ' + said if said else ''}); the file "
                             f"is malformed or truncated. Re-save the model from LightGBM.")


def read_model(source: MemberSource) -> tuple[Any, Any]:
    """(booster, LGBMClassifier or None) from a .txt or an LGBMClassifier pickle."""
    import lightgbm

    if source.file.suffix == ".txt":
        check_model_text(read_checked(source.file, "model", "LightGBM model"), source.file)
        probe_model_file(source.file, "text")
        try:
            booster = lightgbm.Booster(model_file=str(source.file))
        except lightgbm.basic.LightGBMError as exc:
            raise ModelFileError(
                f"{source.file}: not a readable LightGBM model ({lightgbm_reason(str(exc))}).") from exc
        return booster, None
    probe_model_file(source.file, "pickle")
    model = load_pickle(source.file, "lightgbm", booster_stand_ins(source.file))
    if not isinstance(model, lightgbm.LGBMClassifier):
        raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected an LGBMClassifier.")
    n_classes = int(model.n_classes_)
    check_classes(model.classes_, n_classes, source.file)
    # The classifier's class count and its booster's text are pickled apart: a booster that scores another
    # number of columns than the classifier reports would reach the ensemble graph with the wrong width.
    scores = model.booster_.num_model_per_iteration()
    if scores != (1 if n_classes == 2 else n_classes):
        raise ModelFileError(f"{source.file}: the LGBMClassifier has {n_classes} classes, but its booster's text "
                             f"scores {scores} per row (num_class); re-save the model from LightGBM.")
    return model.booster_, model


def preorder(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A dumped tree's split nodes in pre-order (node, left subtree, right subtree)."""
    if "split_index" in node:
        yield node
        yield from preorder(node["left_child"])
        yield from preorder(node["right_child"])


def internal_nodes(dump: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for tree in dump["tree_info"]:
        yield from preorder(tree["tree_structure"])


def _has_linear_leaf(node: dict[str, Any]) -> bool:
    if "split_index" in node:
        return _has_linear_leaf(node["left_child"]) or _has_linear_leaf(node["right_child"])
    return bool(node.get("leaf_features"))  # a linear tree's leaves carry coefficients over features


def check_expressible(dump: dict[str, Any], file: Any) -> None:
    objective = str(dump.get("objective", "")).split(" ")[0]
    if objective not in ("multiclass", "binary"):
        raise UnsupportedModelError(f"{file}: objective '{objective}' gives no class probabilities the ensemble "
                                    f"can use ('multiclass' softmax or 'binary' logistic).")
    if any(_has_linear_leaf(tree["tree_structure"]) for tree in dump["tree_info"]):
        raise UnsupportedModelError(f"{file}: linear trees (linear_tree=true) have no ONNX tree equivalent.")
    for node in internal_nodes(dump):
        if node["decision_type"] != "<=":
            raise UnsupportedModelError(f"{file}: categorical split on feature {node['split_feature']} "
                                        f"(decision '{node['decision_type']}') cannot be exported faithfully.")
        if node["missing_type"] == "Zero" and node["default_left"] != (0.0 <= node["threshold"]):
            raise UnsupportedModelError(
                f"{file}: a zero-as-missing split on feature {node['split_feature']} sends 0.0 the other way "
                f"than its threshold {node['threshold']}; ONNX has no zero-as-missing. Retrain with "
                "zero_as_missing=false.")


ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold: it reads |x| <= this as exactly 0.0


def onnx_threshold(t: float) -> float:
    """The double t' with `x <= t'` iff LightGBM sends float64 x left, i.e. `z <= t` for z = 0 when
    |x| <= kZeroThreshold and z = x otherwise (its dense-row reader drops such values as zeros)."""
    if -ZERO_THRESHOLD <= t < 0.0:   # the tiny values read as 0 > t: only x < -kZeroThreshold goes left
        return float(np.nextafter(-ZERO_THRESHOLD, -np.inf))
    if 0.0 <= t < ZERO_THRESHOLD:    # the tiny values read as 0 <= t: everything up to +kZeroThreshold goes left
        return ZERO_THRESHOLD
    return t


def onnx_preorder(attrs: dict[str, Any], nodes: dict[int, int]) -> list[int]:
    """Attribute indices of one converted tree's split nodes, in pre-order (true branch first).
    `nodes` maps the tree's node ids to attribute indices."""
    modes = attrs["nodes_modes"].strings
    true_ids, false_ids = attrs["nodes_truenodeids"].ints, attrs["nodes_falsenodeids"].ints
    children = {c for i in nodes.values() if modes[i] != b"LEAF" for c in (true_ids[i], false_ids[i])}
    order: list[int] = []
    stack = [n for n in nodes if n not in children][:1]  # the root
    while stack:
        i = nodes[stack.pop()]
        if modes[i] != b"LEAF":
            order.append(i)
            stack += [false_ids[i], true_ids[i]]
    return order


def text_thresholds(text: str) -> list[list[float]]:
    """Each tree's `threshold` array from LightGBM's model text, by split index, as LightGBM holds them (inf
    included). A tree without splits has none."""
    trees: list[list[float]] = []
    for line in text.splitlines():
        if line.startswith("Tree="):
            trees.append([])
        elif line.startswith("threshold=") and trees:
            trees[-1] = [float(v) for v in line.removeprefix("threshold=").split(" ") if v]
    return trees


def _avoid_inf(t: float) -> float:
    """What LightGBM's JSON dump writes for a split value (Common::AvoidInf)."""
    return min(max(t, -1e300), 1e300)


def exact_thresholds(onx: Any, dump: dict[str, Any], text: str,
                     file: Any) -> tuple[list[tuple[int, float]], list[float]]:
    """Each split's exact double threshold, read off the model `text`: ((feature, value) of every split, one
    double per converted node for `margins_graph`'s `splits64`, leaves holding their converted value).

    Splits are matched by position in the tree structure, and each pair must agree on feature and float32-rounded
    threshold, so a converter that reorders or rewrites trees is refused rather than patched wrongly; the text's
    value must be the dump's (past +-1e300, as the dump writes it)."""
    doubles = text_thresholds(text)
    attrs = {a.name: a for a in tree_node(onx).attribute}
    values = attrs["nodes_values"].floats
    splits64 = [float(v) for v in values]
    trees: dict[int, dict[int, int]] = {}
    for i, (t, n) in enumerate(zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints, strict=True)):
        trees.setdefault(t, {})[n] = i
    exact = []
    for tree_index, tree in enumerate(dump["tree_info"]):
        converted, original = onnx_preorder(attrs, trees.get(tree_index, {})), list(preorder(tree["tree_structure"]))
        if len(converted) != len(original):
            raise UnsupportedModelError(f"{file}: tree {tree_index} has {len(original)} splits, converted "
                                        f"{len(converted)}.")
        in_text = doubles[tree_index] if tree_index < len(doubles) else []
        for i, node in zip(converted, original, strict=True):
            t = float(node["threshold"])
            held = in_text[node["split_index"]] if node["split_index"] < len(in_text) else math.nan
            with np.errstate(over="ignore"):
                same = np.float32(values[i]) == np.float32(t)
            if (attrs["nodes_featureids"].ints[i] != node["split_feature"] or not same
                    or attrs["nodes_modes"].strings[i] != b"BRANCH_LEQ" or _avoid_inf(held) != t):
                raise UnsupportedModelError(f"{file}: cannot align converted split {i} of tree {tree_index} with the "
                                            "model.")
            splits64[i] = onnx_threshold(held)
            exact.append((int(node["split_feature"]), splits64[i]))
    return sorted(set(exact)), splits64


def average_trees(onx: Any, iterations: int) -> None:
    """A random forest's score is the mean of its iterations' trees, not their sum: scale every leaf."""
    attrs = {a.name: a for a in tree_node(onx).attribute}
    weights = attrs["class_weights"].floats
    for i, w in enumerate(weights):
        weights[i] = w / iterations


def rounds_used(source: MemberSource, booster: Any, wrapper: Any | None) -> tuple[int, str]:
    """The iterations the service's predict used, and why: LGBMClassifier.predict_proba stops at its booster's
    best_iteration; Booster(model_file=...).predict uses every iteration the file holds (LightGBM writes a
    model saved after early stopping up to its best iteration, and reads no best_iteration back); the
    member option "rounds" is num_iteration=rounds."""
    from .trees import rounds_option

    total = booster.current_iteration()
    best = booster.best_iteration
    if not isinstance(best, int) or isinstance(best, bool):  # a pickle's booster carries it as it was pickled
        raise ModelFileError(f"{source.file}: the booster's best_iteration is {str(best)[:40]}, not an iteration "
                             f"count; re-save the model from LightGBM.")
    wanted = rounds_option(source, total)
    if wanted is not None:
        return wanted, 'ensemble.json "rounds"'
    if wrapper is not None and 0 < best <= total:
        return booster.best_iteration, "best_iteration: LGBMClassifier.predict_proba stops there"
    if wrapper is not None:
        return total, "all: LGBMClassifier.predict_proba, no best_iteration"
    return total, "all the file holds: Booster(model_file=...).predict uses every one"


def _margins(booster: Any, wrapper: Any | None, rounds: int, explicit: bool,
             scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """LightGBM's own raw scores (raw_score=True), as the service's predict summed them, times `scale`
    (binary: its `sigmoid`; a random forest: also 1 / rounds, the average predict takes after the raw sum);
    the probabilities from them in float64."""
    from .trees import margin_probabilities

    if wrapper is not None and not explicit:
        return lambda x: margin_probabilities(scale * np.asarray(wrapper.predict(x, raw_score=True), np.float64))
    predict = wrapper.predict if wrapper is not None else booster.predict
    return lambda x: margin_probabilities(
        scale * np.asarray(predict(x, raw_score=True, num_iteration=rounds), dtype=np.float64))


def margin_scale(dump: dict[str, Any], rounds: int, sigmoid: float) -> float:
    return sigmoid / rounds if dump.get("average_output") else sigmoid


def objective_of(dump: dict[str, Any], file: Any) -> tuple[str, float]:
    """(objective, sigmoid): every parameter LightGBM writes after the objective's name is one the export
    implements, or refused by name."""
    name, *params = str(dump.get("objective", "")).split(" ")
    sigmoid = 1.0
    for param in params:
        key, _, value = param.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if name == "binary" and key == "sigmoid" and math.isfinite(number) and number > 0:
            sigmoid = number
        elif name == "multiclass" and key == "num_class":  # check_model_text holds it to the header's
            continue
        elif param:
            raise UnsupportedModelError(f"{file}: objective '{name}' with parameter '{param}' is not exported (the "
                                        f"export implements binary 'sigmoid' and multiclass 'num_class').")
    return name, sigmoid


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    booster, wrapper = read_model(source)
    rounds, _ = rounds_used(source, booster, wrapper)
    dump = booster.dump_model(num_iteration=rounds)
    _, sigmoid = objective_of(dump, source.file)
    return _margins(booster, wrapper, rounds, "rounds" in source.options, margin_scale(dump, rounds, sigmoid))


def renamed(name: str) -> str:
    """LightGBM writes a feature name with its spaces as underscores (its text format splits names on spaces)."""
    return name.replace(" ", "_")


def load(source: MemberSource) -> LoadedMember:
    import lightgbm
    from onnxmltools import convert_lightgbm

    full, wrapper = read_model(source)
    rounds, why = rounds_used(source, full, wrapper)
    # The iterations predict uses, alone: what the converter and the dump read (both default to best_iteration).
    booster = full if rounds == full.current_iteration() and full.best_iteration in (0, -1, rounds) else \
        lightgbm.Booster(model_str=full.model_to_string(num_iteration=rounds))
    dump = booster.dump_model(num_iteration=rounds)
    check_expressible(dump, source.file)
    objective, sigmoid = objective_of(dump, source.file)
    n_features, n_classes = booster.num_feature(), max(2, int(dump["num_class"]))  # binary: one score, 2 columns
    onx = convert_lightgbm(booster, name=source.name, initial_types=input_types(n_features),
                           target_opset=ONNXMLTOOLS_OPSET, zipmap=False)
    if len(dump["tree_info"]) != rounds * int(dump["num_tree_per_iteration"]):
        raise UnsupportedModelError(f"{source.file}: {len(dump['tree_info'])} trees for {rounds} iterations; "
                                    f"cannot tell which trees predict uses.")
    thresholds, splits64 = exact_thresholds(onx, dump, booster.model_to_string(num_iteration=rounds), source.file)
    if dump.get("average_output"):
        average_trees(onx, rounds)
    names = dump.get("feature_names")
    default_names = [f"Column_{i}" for i in range(n_features)]
    return LoadedMember(
        source=source, n_features=n_features, n_classes=n_classes,
        hyperparameters={"objective": objective, "trees": len(dump["tree_info"]),
                         "best_iteration": full.best_iteration, "boosted_rounds": full.current_iteration(),
                         "rounds": rounds, "loaded_as": "LGBMClassifier" if wrapper is not None else "Booster",
                         **({"sigmoid": sigmoid} if objective == "binary" else {}),
                         "num_leaves_max": max(t["num_leaves"] for t in dump["tree_info"]),
                         **({"options": dict(source.options)} if source.options else {})},
        reference=_margins(full, wrapper, rounds, "rounds" in source.options, margin_scale(dump, rounds, sigmoid)),
        onnx_model=to_contract(margins_graph(onx, n_features, n_classes, sigmoid, source.name, splits64), "lightgbm"),
        feature_names=None if names == default_names else names,
        feature_names_as=renamed,
        notes=[f"{rounds} of {full.current_iteration()} boosting rounds ({why})"
               + (" (random forest: averaged)" if dump.get("average_output") else ""),
               *([f"binary sigmoid {sigmoid:g}: the probability is 1 / (1 + exp(-{sigmoid:g} * score))"]
                 if sigmoid != 1.0 else [])],
        thresholds=thresholds)


register(MemberKind(
    "lightgbm", (".pkl", ".joblib", ".txt"), load, reference,
    pickle_globals=frozenset({("lightgbm.sklearn", "LGBMClassifier"), ("lightgbm.basic", "Booster"),
                              ("sklearn.preprocessing._label", "LabelEncoder")}),
    frameworks=("lightgbm",), distributions=("lightgbm",), build_modules=("lightgbm",), service_weight=0.25,
    # ensemble.json's "rounds"; a tree ensemble with a learned default direction for NaN at every split.
    tree_options=("rounds",), only_compares=always, takes_nan=always,
    takes_float64=always))  # LightGBM reads a float64 row as doubles and splits on double thresholds
