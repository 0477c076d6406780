"""XGBoost: an XGBClassifier / XGBRFClassifier pickle (allowlisted) or a .json / .ubj model file, exported from
the model's own JSON into one ONNX TreeEnsembleRegressor (the margins) and a softmax or a two-column sigmoid.

The export reads every tree off `save_raw("json")`, which is what XGBoost itself predicts with: each tree's
class comes from `tree_info` (a random forest, `num_parallel_tree` > 1, grows several trees per class and
round, which a tree-index-modulo-classes layout would misassign), a dart booster's trees are scaled by their
`weight_drop`, the base score is the model's own (a probability for binary:logistic, a margin otherwise).
XGBoost splits on `x < threshold` with float32 thresholds, so BRANCH_LT on float32 inputs is exact.

The service is assumed to have loaded the file with the API that saved it (docs/models-folder.md): a pickle,
or a file whose `scikit_learn` attribute says the wrapper saved it, through XGBClassifier, whose predict stops
at `best_iteration`; a file Booster.save_model wrote through Booster, whose predict uses every round. The
member options `rounds` and `missing` (ensemble.json) say what the file cannot: the reference is xgboost's
own predict called that way, and the export keeps those rounds and reads the sentinel as NaN.
What ONNX cannot express is refused by name: gblinear, multi-output trees, categorical splits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..loaders import load_pickle
from . import LoadedMember, MemberKind, MemberSource, always, register
from .export import CONTRACT, to_contract

SUPPORTED_OBJECTIVES = ("multi:softprob", "multi:softmax", "binary:logistic")


@dataclass(frozen=True)
class Read:
    """The model as the service is assumed to have loaded it: an XGBClassifier (a pickle, or a .json / .ubj
    the scikit-learn wrapper saved: its `scikit_learn` attribute says so) or a native Booster (a file
    Booster.save_model wrote)."""

    booster: Any
    wrapper: Any | None  # the XGBClassifier, or None for a native Booster


def read_model(source: MemberSource) -> Read:
    import xgboost

    if source.file.suffix in (".json", ".ubj"):
        if source.file.suffix == ".json":
            check_json_trees(source.file)  # libxgboost trusts the file: a bad tree id corrupts its heap
        booster = xgboost.Booster()
        try:
            booster.load_model(source.file)
        except xgboost.core.XGBoostError as exc:
            raise ModelFileError(f"{source.file}: not a readable XGBoost model ({str(exc).splitlines()[0]}).") from exc
        if booster.attr("scikit_learn") is None:
            return Read(booster, None)
        model = xgboost.XGBClassifier()
        try:
            model.load_model(source.file)
        except TypeError as exc:  # xgboost refuses to load a regressor's file into a classifier
            raise UnsupportedModelError(f"{source.file}: not a classifier ({exc}); the ensemble needs class "
                                        f"probabilities.") from exc
        return Read(model.get_booster(), model)
    model = load_pickle(source.file, "xgboost")
    if not isinstance(model, xgboost.XGBClassifier):
        raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected an XGBClassifier.")
    return Read(model.get_booster(), model)


def _int(value: Any) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        return None


def check_json_trees(file: Any) -> None:
    """The tree structure of an XGBoost JSON model, checked before libxgboost reads it: it indexes its
    arrays with the file's tree ids and child ids unchecked (a negative `tree_info` aborts the process with
    heap corruption; a child pointing back up loops forever)."""
    from ..loaders import read_checked

    try:  # the C parser: model files run to many megabytes; the model-file size limit applies
        raw = json.loads(read_checked(file, "model", "XGBoost JSON model"))
    except (ValueError, RecursionError):
        return  # not JSON at all: xgboost's own reader refuses it with its message
    try:
        learner = raw["learner"]
        param = learner["learner_model_param"]
        booster = learner["gradient_booster"]
        model = booster["gbtree"]["model"] if booster.get("name") == "dart" else booster.get("model")
    except (KeyError, TypeError):
        raise ModelFileError(f"{file}: not an XGBoost JSON model (no learner.gradient_booster).") from None
    if not isinstance(model, dict) or "trees" not in model:
        return  # gblinear and others: refused by name once loaded
    if any(str((t.get("tree_param") or {}).get("size_leaf_vector", "1")) not in ("0", "1")
           for t in (model["trees"] if isinstance(model["trees"], list) else []) if isinstance(t, dict)):
        return  # vector leaves (multi_output_tree), laid out otherwise: refused by name once loaded
    groups = max(1, _int(param.get("num_class")) or 0, _int(param.get("num_target")) or 0)
    n_features = _int(param.get("num_feature"))
    trees, info = model.get("trees"), model.get("tree_info")
    if not isinstance(trees, list) or not isinstance(info, list) or len(info) != len(trees):
        raise ModelFileError(f"{file}: gradient_booster: 'trees' and 'tree_info' must be lists of one length.")
    for t, group in enumerate(info):
        if _int(group) is None or not 0 <= int(group) < groups:
            raise ModelFileError(f"{file}: tree_info[{t}] is {str(group)[:40]}; it must be a class index from 0 to "
                                 f"{groups - 1}.")
    for t, tree in enumerate(trees):
        try:
            left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
            n = len(left)
            ok = isinstance(left, list) and len(right) == n and len(split) == n and n > 0
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ModelFileError(f"{file}: tree {t}: left_children, right_children and split_indices must be lists "
                                 f"of one length.")
        for node, (lc, rc, f) in enumerate(zip(left, right, split, strict=True)):
            lc, rc, f = _int(lc), _int(rc), _int(f)
            leaf = lc == -1 and rc == -1
            # XGBoost numbers a node's children after the node itself: anything else is a cycle or out of range.
            if not leaf and not (lc is not None and rc is not None and node < lc < n and node < rc < n
                                 and f is not None and 0 <= f and (n_features is None or f < n_features)):
                raise ModelFileError(f"{file}: tree {t}, node {node}: children ({left[node]}, {right[node]}) or "
                                     f"split feature {split[node]} out of range; the file is corrupt.")


def _check_expressible(config: dict[str, Any], file: Any) -> str:
    """The objective, once every option ONNX cannot express has been refused by name."""
    learner = config["learner"]
    booster = learner["gradient_booster"]["name"]
    if booster == "gblinear":
        raise UnsupportedModelError(f"{file}: booster 'gblinear' (a linear model, no trees) is not exported; "
                                    f"retrain with booster='gbtree' or 'dart'.")
    if learner.get("learner_train_param", {}).get("multi_strategy") == "multi_output_tree":
        raise UnsupportedModelError(f"{file}: multi_strategy 'multi_output_tree' (vector leaves) has no ONNX tree "
                                    f"equivalent here; retrain with multi_strategy='one_output_per_tree'.")
    objective = learner["objective"]["name"]
    if objective not in SUPPORTED_OBJECTIVES:
        raise UnsupportedModelError(f"{file}: objective '{objective}' gives no class probabilities the ensemble "
                                    f"can use ({', '.join(SUPPORTED_OBJECTIVES)}).")
    return objective


def _tree_model(raw: dict[str, Any]) -> dict[str, Any]:
    booster = raw["learner"]["gradient_booster"]
    return booster["gbtree"]["model"] if booster["name"] == "dart" else booster["model"]


def _trees(raw: dict[str, Any], rounds: int) -> tuple[list[dict[str, Any]], list[int], list[float]]:
    """(trees, class of each tree, weight of each tree) for the first `rounds` boosting rounds."""
    booster, model = raw["learner"]["gradient_booster"], _tree_model(raw)
    count = int(model["iteration_indptr"][rounds])
    weights = booster.get("weight_drop", [1.0] * len(model["trees"]))
    return model["trees"][:count], [int(c) for c in model["tree_info"][:count]], [float(w) for w in weights[:count]]


def split_thresholds(trees: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Every (feature index, float32 threshold) the trees split on."""
    return sorted({(int(f), float(np.float32(c)))
                   for tree in trees
                   for f, c, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"],
                                         strict=True)
                   if left != -1})


def _base_margins(raw: dict[str, Any], objective: str, n_groups: int) -> list[float]:
    text = raw["learner"]["learner_model_param"]["base_score"]
    values = [float(v) for v in (json.loads(text) if text.startswith("[") else [text])]
    if objective == "binary:logistic":  # stored as a probability; XGBoost adds its logit to the margin
        values = [math.log(v / (1.0 - v)) for v in values]
    return values * n_groups if len(values) == 1 else values


def tree_ensemble(trees: list[dict[str, Any]], groups: list[int], weights: list[float], n_groups: int,
                  base: list[float], file: Any) -> Any:
    """The ai.onnx.ml TreeEnsembleRegressor that sums each group's (class's) tree outputs into its margin."""
    from onnx import helper

    a: dict[str, Any] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids",
        "nodes_falsenodeids", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t, (tree, group, weight) in enumerate(zip(trees, groups, weights, strict=True)):
        if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1:  # a saved file forgets multi_strategy
            raise UnsupportedModelError(f"{file}: tree {t} has vector leaves (multi_strategy='multi_output_tree'); "
                                        f"the export handles one output per tree. Retrain with "
                                        f"multi_strategy='one_output_per_tree'.")
        if any(int(s) != 0 for s in tree.get("split_type", [])):
            raise UnsupportedModelError(f"{file}: tree {t} has categorical splits (enable_categorical=True); the "
                                        f"ONNX tree operator has no category sets. Retrain on encoded features.")
        left, right = tree["left_children"], tree["right_children"]
        for n, (lc, rc) in enumerate(zip(left, right, strict=True)):
            leaf = lc == -1
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(n)
            a["nodes_featureids"].append(0 if leaf else int(tree["split_indices"][n]))
            a["nodes_values"].append(0.0 if leaf else float(np.float32(tree["split_conditions"][n])))
            a["nodes_modes"].append("LEAF" if leaf else "BRANCH_LT")
            a["nodes_truenodeids"].append(0 if leaf else int(lc))
            a["nodes_falsenodeids"].append(0 if leaf else int(rc))
            a["nodes_missing_value_tracks_true"].append(0 if leaf else int(tree["default_left"][n]))
            if leaf:  # dart: XGBoost multiplies in float32, as here
                a["target_treeids"].append(t)
                a["target_nodeids"].append(n)
                a["target_ids"].append(group)
                a["target_weights"].append(float(np.float32(tree["split_conditions"][n]) * np.float32(weight)))
    return helper.make_node("TreeEnsembleRegressor", [CONTRACT.input_name], ["margins"], domain="ai.onnx.ml",
                            name="trees", n_targets=n_groups, aggregate_function="SUM", post_transform="NONE",
                            base_values=[float(v) for v in base], **a)


def export(trees: list[dict[str, Any]], groups: list[int], weights: list[float], objective: str,
           n_classes: int, base: list[float], n_features: int, name: str, file: Any,
           missing: float | None = None) -> Any:
    """float32 [N, F] -> probabilities [N, n_classes]: softmax of the margins, or binary_head's [1 - p, p].
    With a `missing` sentinel, inputs equal to it (in float32, as XGBoost compares) become NaN first."""
    from onnx import helper, numpy_helper

    from .trees import probabilities_graph

    n_groups = 1 if objective == "binary:logistic" else n_classes
    nodes, inits = [], []
    if missing is not None:
        inits += [numpy_helper.from_array(np.array(missing, dtype=np.float32), "missing"),
                  numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan")]
        nodes += [helper.make_node("Equal", [CONTRACT.input_name, "missing"], ["is_missing"], name="IsMissing"),
                  helper.make_node("Where", ["is_missing", "nan", CONTRACT.input_name], ["present"], name="Missing")]
    trees_node = tree_ensemble(trees, groups, weights, n_groups, base, file)
    if missing is not None:
        trees_node.input[0] = "present"
    nodes.append(trees_node)
    graph = probabilities_graph(name, nodes, inits, n_groups, n_features, n_classes)
    return to_contract(helper.make_model(graph, opset_imports=[helper.make_opsetid("", CONTRACT.opset)]), "xgboost")


@dataclass(frozen=True)
class Calling:
    """How the service's predict ran the model: the rounds it used, and the value it read as missing."""

    rounds: int
    rounds_from: str           # why that many, for the plan
    missing: float | None      # None: NaN only
    missing_from: str


def calling(source: MemberSource, read: Read) -> Calling:
    from .trees import rounds_option

    booster = read.booster
    total = booster.num_boosted_rounds()
    best_attr = booster.attr("best_iteration")
    best = _int(best_attr) if best_attr is not None else None
    if best_attr is not None and (best is None or not 0 <= best < total):  # corrupt, whichever API reads it
        raise ModelFileError(f"{source.file}: best_iteration {str(best_attr)[:40]} is outside the {total} boosting "
                             f"rounds the model holds.")
    wanted = rounds_option(source, total)
    if wanted is not None:
        rounds, why = wanted, 'ensemble.json "rounds"'
    elif read.wrapper is not None and best is not None:
        rounds, why = best + 1, "best_iteration: XGBClassifier.predict_proba stops there"
    elif read.wrapper is not None:
        rounds, why = total, "all: XGBClassifier.predict_proba, no best_iteration"
    else:
        rounds = total
        why = ("all: a native Booster file; Booster.predict uses every round" +
               (f"; its best_iteration {best} is not applied: set \"rounds\": {best + 1} in ensemble.json if the "
                f"service called predict with iteration_range=(0, {best + 1})" if best is not None else ""))
    option = source.options.get("missing")
    held = getattr(read.wrapper, "missing", math.nan) if read.wrapper is not None else math.nan
    held = math.nan if held is None else held
    try:
        held = float(held)
    except (TypeError, ValueError, OverflowError):
        raise ModelFileError(f"{source.file}: the XGBClassifier's missing is {str(held)[:40]}, not a number "
                             f"a float32 sentinel can hold.") from None
    pickled = read.wrapper is not None and source.file.suffix not in (".json", ".ubj")
    if pickled and math.isnan(held) and option is not None:  # a pickle keeps `missing`; save_model's files do not
        raise UnsupportedModelError(f"{source.file}: ensemble.json sets \"missing\": {option} for member "
                                    f"'{source.name}', but the pickled XGBClassifier has missing=nan: it was fit, "
                                    f"and its predict_proba reads, {option} as a value. Remove \"missing\", or "
                                    f"refit with XGBClassifier(missing={option}).")
    if not math.isnan(held) and option is not None and np.float32(option) != np.float32(held):
        raise UnsupportedModelError(f"{source.file}: ensemble.json sets \"missing\": {option} for member "
                                    f"'{source.name}', but the XGBClassifier was saved with missing={held}.")
    if option is not None:
        missing, missing_from = float(option), 'ensemble.json "missing"'
    elif not math.isnan(held):
        with np.errstate(over="ignore"):
            in_float32 = float(np.float32(held))
        if not math.isfinite(in_float32):
            raise UnsupportedModelError(f"{source.file}: missing={held} is not a finite float32 sentinel the "
                                        f"export can compare with.")
        missing, missing_from = held, "the XGBClassifier's missing"
    else:
        missing, missing_from = None, ""
    return Calling(rounds, why, missing, missing_from)


def _margins(read: Read, call: Calling, explicit_rounds: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The framework's own margins, as the service's predict computed them; probabilities from them in
    float64 (`margin_probabilities`), so a temperature keeps a confident member's small probability."""
    import xgboost

    from .trees import margin_probabilities

    missing = math.nan if call.missing is None else call.missing
    if read.wrapper is not None:
        model = read.wrapper
        model.set_params(missing=missing)
        if explicit_rounds:
            return lambda x32: margin_probabilities(model.predict(x32, output_margin=True,
                                                                  iteration_range=(0, call.rounds)))
        return lambda x32: margin_probabilities(model.predict(x32, output_margin=True))  # its own best_iteration
    booster = read.booster
    return lambda x32: margin_probabilities(booster.predict(xgboost.DMatrix(x32, missing=missing), output_margin=True,
                                                            iteration_range=(0, call.rounds)))


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    read = read_model(source)
    return _margins(read, calling(source, read), "rounds" in source.options)


def load(source: MemberSource) -> LoadedMember:
    from .trees import check_classes

    read = read_model(source)
    booster = read.booster
    config = json.loads(booster.save_config())
    objective = _check_expressible(config, source.file)
    n_classes = max(2, int(config["learner"]["learner_model_param"]["num_class"]))
    check_classes(getattr(read.wrapper, "classes_", None), n_classes, source.file)
    raw = json.loads(booster.save_raw("json"))
    call = calling(source, read)
    total = booster.num_boosted_rounds()
    trees, groups, weights = _trees(raw, call.rounds)
    n_groups = 1 if objective == "binary:logistic" else n_classes
    base = _base_margins(raw, objective, n_groups)
    if not all(math.isfinite(b) for b in base) or len(base) != n_groups:
        raise ModelFileError(f"{source.file}: base_score {raw['learner']['learner_model_param']['base_score']!r} "
                             f"gives no finite margin for each of the {n_groups} output(s).")
    n_features = booster.num_features()
    if any(f >= n_features for f, _ in split_thresholds(trees)):
        raise ModelFileError(f"{source.file}: a tree splits on a feature index beyond the model's "
                             f"{n_features} features; the file is corrupt.")
    onx = export(trees, groups, weights, objective, n_classes, base, n_features, source.name, source.file,
                 call.missing)
    booster_name = raw["learner"]["gradient_booster"]["name"]
    parallel = int(_tree_model(raw)["gbtree_model_param"]["num_parallel_tree"])
    best = booster.attr("best_iteration")
    thresholds = split_thresholds(trees)
    if call.missing is not None:  # parity rows holding the sentinel, and one float32 ulp either side, per feature
        thresholds = sorted({*thresholds, *((f, float(np.float32(call.missing))) for f in range(n_features))})
    return LoadedMember(
        source=source, n_features=n_features, n_classes=n_classes,
        hyperparameters={"objective": objective, "booster": booster_name, "trees": len(trees),
                         "num_parallel_tree": parallel, "best_iteration": _int(best) if best is not None else None,
                         "boosted_rounds": total, "rounds": call.rounds,
                         "loaded_as": "XGBClassifier" if read.wrapper is not None else "Booster",
                         "missing": call.missing, **({"options": dict(source.options)} if source.options else {})},
        reference=_margins(read, call, "rounds" in source.options), onnx_model=onx,
        feature_names=list(booster.feature_names) if booster.feature_names else None,
        notes=[f"{call.rounds} of {total} boosting rounds ({call.rounds_from})",
               *([f"missing={call.missing:g} read as absent ({call.missing_from}), as NaN is"
                  + (f"; compared with the values scaled by {source.scaler.name}, as the model read them"
                     if source.scaler is not None else "")]
                 if call.missing is not None else []),
               *(["dart: each tree scaled by its weight_drop"] if booster_name == "dart" else []),
               *([f"random forest: {parallel} trees per class and round"] if parallel > 1 else [])],
        thresholds=thresholds)


register(MemberKind(
    "xgboost", (".pkl", ".joblib", ".json", ".ubj"), load, reference,
    pickle_globals=frozenset({("xgboost.sklearn", "XGBClassifier"), ("xgboost.sklearn", "XGBRFClassifier"),
                              ("xgboost.core", "Booster")}),
    frameworks=("xgboost",), distributions=("xgboost",), build_modules=("xgboost",), service_weight=0.25,
    # ensemble.json's "rounds" and "missing"; a tree ensemble with a learned default direction for NaN at every split.
    tree_options=("rounds", "missing"), only_compares=always, takes_nan=always))
