"""CatBoost: a `CatBoostClassifier` saved with `save_model` (`.cbm`) or pickled (allowlisted), exported by
CatBoost's own ONNX exporter (`save_model(format="onnx")`): one TreeEnsembleClassifier, brought to the contract.

CatBoost's trees are oblivious: every split is `x > border` with a float32 border, which ONNX's BRANCH_GT on
float32 inputs reproduces exactly; the exporter writes the leaf values, the class order and the softmax or
logistic itself. Its ZipMap (a list of dicts) is dropped for the probability tensor under it. What the
exporter cannot write, or writes as something other than class probabilities, is refused by name before it
runs: categorical, text and embedding features, and every loss but Logloss and MultiClass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..loaders import load_pickle, read_checked
from . import LoadedMember, MemberKind, MemberSource, always, register
from .export import CONTRACT, to_contract
from .trees import check_classes, tree_node

SUPPORTED_LOSSES = ("Logloss", "MultiClass")  # probabilities that sum to 1 (MultiClassOneVsAll's do not)
# The nan_modes that say what a missing value means (NaN below, or above, every border). The export scores NaN
# as CatBoost does in both: the gate's NaN rows prove it on every build
# (tests/convert/members/test_catboost.py). A model trained with "Forbidden" defines nothing for NaN, so its
# builds refuse NaN, naming the member.
NAN_MODES = ("Min", "Max")


def takes_nan(member: LoadedMember) -> bool:
    return member.hyperparameters.get("nan_mode") in NAN_MODES


PROBE_TIMEOUT_S = 120
# libcatboost trusts the model bytes: a few flipped bytes of a .cbm (or of the .cbm inside a pickle) can kill
# the process with SIGSEGV. So the file is first read, predicted on and exported in a child process; only a
# crash or a hang is reported from there, every refusal is made in this process, by name. The child leaves by
# os._exit: what the interpreter's teardown does after a refused file is not the file's reading.
_PROBE = ("import os, sys, tempfile, pathlib, numpy\nfrom convert.members.catboost import read_unprobed\ntry:\n"
          "    m = read_unprobed(pathlib.Path(sys.argv[1]))\n"
          "    m.predict_proba(numpy.zeros((4, len(m.feature_names_)), numpy.float32))\n"
          "    with tempfile.TemporaryDirectory() as d:\n"
          "        m.save_model(os.path.join(d, 'm.onnx'), format='onnx')\n"
          "except Exception:\n    os._exit(3)\nos._exit(0)\n")


def probe_model_file(file: Any) -> None:
    import signal
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(file)], capture_output=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFileError(f"{file}: CatBoost did not finish reading it in {PROBE_TIMEOUT_S} s; the file is "
                             f"malformed. Re-save the model with save_model.") from None
    if done.returncode < 0:
        how = (signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals()
               else f"signal {-done.returncode}")
        raise ModelFileError(f"{file}: CatBoost crashed reading it (killed by {how}); the file is malformed or "
                             f"truncated. Re-save the model with save_model.")


def read_unprobed(file: Any) -> Any:
    """`load_model` on the checked bytes, or the allowlisted pickle; untrusted bytes may crash CatBoost."""
    import catboost

    if file.suffix != ".cbm":
        return load_pickle(file, "catboost")
    blob = read_checked(file, "model", "CatBoost model")  # regular file, size limit
    model = catboost.CatBoostClassifier()
    try:
        model.load_model(blob=blob)
    except Exception as exc:  # CatBoostError, and the JSON or UTF-8 errors of its Python side on bad bytes
        said = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(f"{file}: not a readable CatBoost model ({type(exc).__name__}: {said}).") from exc
    return model


def read_model(source: MemberSource) -> Any:
    """The classifier as CatBoost reads the file (after a probe in a child process), checked for export."""
    import catboost

    probe_model_file(source.file)
    model = read_unprobed(source.file)
    if source.file.suffix != ".cbm":
        if not isinstance(model, catboost.CatBoostClassifier):
            raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected a CatBoostClassifier.")
    if not model.is_fitted():
        raise ModelFileError(f"{source.file}: the CatBoostClassifier was saved before it was fitted.")
    check_expressible(model, source.file)
    return model


def check_expressible(model: Any, file: Any) -> None:
    """Refuse, naming the option, what CatBoost's ONNX export refuses or would turn into something else."""
    for what, indices in (("categorical", model.get_cat_feature_indices()),
                          ("text", model.get_text_feature_indices()),
                          ("embedding", model.get_embedding_feature_indices())):
        if len(indices):
            raise UnsupportedModelError(f"{file}: {what} features (columns {list(indices)[:10]}) cannot be exported "
                                        f"to ONNX by CatBoost; retrain with numeric features only.")
    loss = str(model.get_all_params().get("loss_function", "")).split(":")[0]
    if loss not in SUPPORTED_LOSSES:
        raise UnsupportedModelError(f"{file}: loss_function '{loss}' gives no class probabilities the ensemble can "
                                    f"use ({' or '.join(SUPPORTED_LOSSES)}).")


def reference_of(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """CatBoost's own predict_proba: the parity reference."""
    return lambda x: np.asarray(model.predict_proba(np.asarray(x, dtype=np.float32)), dtype=np.float64)


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return reference_of(read_model(source))


def export(model: Any, n_features: int, n_classes: int, file: Any) -> Any:
    """CatBoost's ONNX graph with the contract's names: the classifier's probability tensor as the output."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper

    with tempfile.TemporaryDirectory(prefix="ensemble-onnx-catboost-") as tmp:
        path = Path(tmp) / "model.onnx"
        model.save_model(str(path), format="onnx")
        onx = onnx.load(str(path))
    graph = onx.graph
    node = tree_node(onx)
    if len(graph.input) != 1 or len(node.output) != 2:
        raise UnsupportedModelError(f"{file}: CatBoost's ONNX export has {len(graph.input)} inputs and a tree "
                                    f"node with {len(node.output)} outputs; expected one input and (label, "
                                    f"probabilities).")
    # The TreeEnsembleClassifier alone: its ZipMap (dicts per row) and the label output are dropped.
    tree = onnx.NodeProto()
    tree.CopyFrom(node)
    tree.input[0] = CONTRACT.input_name
    tree.output[1] = CONTRACT.output_name
    del graph.node[:]
    graph.node.append(tree)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(CONTRACT.input_name, TensorProto.FLOAT,
                                                     [CONTRACT.batch_axis, n_features]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(CONTRACT.output_name, TensorProto.FLOAT,
                                                      [CONTRACT.batch_axis, n_classes]))
    return to_contract(onx, f"{file}")


def thresholds_of(onx: Any) -> list[tuple[int, float]]:
    node = tree_node(onx)
    attrs = {a.name: a for a in node.attribute}
    return [(int(f), float(v)) for f, v, mode in zip(attrs["nodes_featureids"].ints, attrs["nodes_values"].floats,
                                                      attrs["nodes_modes"].strings, strict=True) if mode != b"LEAF"]


def load(source: MemberSource) -> LoadedMember:
    model = read_model(source)
    names = [str(n) for n in model.feature_names_]
    n_features, n_classes = len(names), len(model.classes_)
    check_classes(model.classes_, n_classes, source.file)
    onx = export(model, n_features, n_classes, source.file)
    params = model.get_all_params()
    return LoadedMember(
        source=source, n_features=n_features, n_classes=n_classes,
        hyperparameters={"loss_function": str(params.get("loss_function")), "trees": int(model.tree_count_),
                         "depth": params.get("depth"), "learning_rate": params.get("learning_rate"),
                         "nan_mode": str(params.get("nan_mode"))},
        reference=reference_of(model), onnx_model=onx,
        # CatBoost names unnamed columns "0", "1", ...: those say nothing about the features.
        feature_names=None if names == [str(i) for i in range(n_features)] else names,
        notes=[f"read from {source.file.name}; exported by CatBoost's own ONNX exporter"],
        thresholds=thresholds_of(onx))


register(MemberKind(
    "catboost", (".cbm", ".pkl", ".joblib"), load, reference,
    # A pickle holds the classifier and, in its state, the model's own .cbm bytes and its parameters.
    pickle_globals=frozenset({("catboost.core", "CatBoostClassifier")}),
    frameworks=("catboost", "_catboost"), distributions=("catboost",), build_modules=("catboost",),
    only_compares=always, takes_nan=takes_nan))  # oblivious trees: every split compares with a border
