"""What the tree kinds share: onnxmltools conversion brought to the export contract, class checks, the member
options ensemble.json may give a tree member ("rounds", "missing"), and probabilities from margins (binary:
each class's probability computed on its own, in the graph and in the float64 reference).

onnxmltools emits opset <= 15 graphs with a `label` output beside `probabilities`; the contract wants one
opset policy and one output. Its TreeEnsembleClassifier stores thresholds as float32, which is exact for
XGBoost (trained on float32, compares in float32). LightGBM and HistGradientBoosting compare the service's
float64 rows with double thresholds: their graphs read float64 and hold each split's exact double in
`nodes_values_as_tensor` (ai.onnx.ml 3; `margins_graph` with `splits64`), docs/numerics.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError
from .export import CONTRACT

ONNXMLTOOLS_OPSET = 15  # the highest ai.onnx opset onnxmltools' tree converters accept


def input_types(n_features: int) -> list[tuple[str, Any]]:
    from onnxmltools.convert.common.data_types import FloatTensorType
    return [(CONTRACT.input_name, FloatTensorType([None, n_features]))]


def tree_node(model: Any) -> Any:
    nodes = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    if len(nodes) != 1:
        raise UnsupportedModelError(f"expected one TreeEnsembleClassifier in the converted graph, found {len(nodes)}")
    return nodes[0]


def check_classes(classes: Any, n_classes: int, file: Any) -> None:
    """Probability columns must be in class-index order 0..n-1 (the order of ensemble.json's `classes`)."""
    if classes is None:
        return
    if [int(c) if np.issubdtype(type(c), np.integer) else c for c in list(classes)] != list(range(n_classes)):
        raise UnsupportedModelError(f"{file}: trained on classes {list(classes)}; the ensemble needs integer "
                                    f"labels 0..{n_classes - 1} so that column i is class i. Retrain with encoded "
                                    "labels.")


def floor_float32(t: float) -> float:
    """The largest float32 not above t: for float32 x, `x <= t` iff `x <= floor_float32(t)`."""
    with np.errstate(over="ignore"):  # LightGBM's 1e300 (a split that parts NaN from every value) -> inf
        v = np.float32(t)
    return float(np.nextafter(v, np.float32(-np.inf)) if float(v) > t else v)


# ------------------------------------------------------------------------------------ member options
# What ensemble.json may add to a tree member's entry, because the model file cannot say how the service
# called it: "rounds" (the boosting rounds its predict used: XGBoost iteration_range=(0, n), LightGBM
# num_iteration=n) and, for XGBoost, "missing" (the DMatrix / XGBClassifier sentinel read as absent). Which
# of them a kind takes is on its registry entry (`MemberKind.tree_options`).
OPTIONS = ("rounds", "missing")


def parse_options(kind: str, given: dict[str, Any], scaler: Any, where: str) -> dict[str, Any]:
    """The options of one ensemble.json member entry, checked before any model is read."""
    from ..errors import MetadataError
    from . import all_kinds, get_kind

    options: dict[str, Any] = {}
    for key, value in given.items():
        if key not in get_kind(kind).tree_options:
            takers = [k.name for k in all_kinds() if key in k.tree_options]
            raise MetadataError(f"{where}.{key}: only a {' or '.join(takers)} member takes '{key}'; "
                                f"this member's kind is '{kind}'.")
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if key == "rounds":
            if not isinstance(number, int) or not 1 <= number <= 10**7:
                raise MetadataError(f"{where}.rounds must be a whole number of boosting rounds from 1, got "
                                    f"{str(value)[:40]}.")
            options[key] = number
        else:
            try:
                sentinel = float(number) if number is not None else math.nan
            except OverflowError:
                sentinel = math.nan
            with np.errstate(over="ignore"):
                in_float32 = float(np.float32(sentinel))
            if not math.isfinite(sentinel) or not math.isfinite(in_float32):
                raise MetadataError(f"{where}.missing must be a finite number (the value the model was trained to "
                                    f"read as missing, e.g. -999), got {str(value)[:40]}.")
            if scaler is not None:  # the service scales first: the model never sees the raw sentinel
                raise MetadataError(f"{where}.missing: a sentinel is compared with the values the model reads, but "
                                    f"this member reads them through the scaler {scaler.name}, which moves the "
                                    f"sentinel; a member with 'missing' must take raw features (\"scaler\": null).")
            options[key] = sentinel
    return options


def recorded_options(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The options a manifest recorded for a member (what `verify` and `bench` rebuild its reference with)."""
    options = hyperparameters.get("options")
    return dict(options) if isinstance(options, dict) else {}


def rounds_option(source: Any, rounds: int) -> int | None:
    """The member's "rounds" option, refused when the model holds fewer rounds."""
    wanted = source.options.get("rounds")
    if wanted is not None and wanted > rounds:
        raise UnsupportedModelError(f"{source.file}: ensemble.json sets \"rounds\": {wanted} for member "
                                    f"'{source.name}', but the model holds {rounds} boosting rounds.")
    return wanted


# ------------------------------------------------------------------------- probabilities from margins

def margin_probabilities(margins: np.ndarray) -> np.ndarray:
    """float64 class probabilities from the framework's own margins [N, 1] (binary: [1 - p, p], each side
    computed directly so a confident row keeps its small probability) or [N, K] (softmax)."""
    from scipy.special import expit, softmax

    m = np.asarray(margins, dtype=np.float64)
    m = m.reshape(len(m), -1)
    if m.shape[1] == 1:
        return np.column_stack([expit(-m[:, 0]), expit(m[:, 0])])
    return np.asarray(softmax(m, axis=1), dtype=np.float64)


def binary_head(margin: str, output: str, scale: float = 1.0) -> tuple[list[Any], list[Any]]:
    """ONNX nodes: margin [N, 1] -> output [N, 2] = [1 / (1 + exp(s m)), 1 / (1 + exp(-s m))], s = `scale`.

    Each column is computed on its own, not as 1 - p: a confident member's small probability keeps its
    float32 precision down to 1e-38, so a temperature (Log, then Div) recovers its margin (`1 - p` in float32
    is 0 from p > 1 - 6e-8). onnxruntime's Sigmoid is not used: it flattens below about -17 (0 from -20)."""
    from onnx import helper, numpy_helper

    def name(x: str) -> str:
        return f"{output}_{x}"

    inits = [numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), name("one"))]
    nodes = []
    current = margin
    if scale != 1.0:
        inits.append(numpy_helper.from_array(np.full((1, 1), scale, dtype=np.float32), name("scale")))
        nodes.append(helper.make_node("Mul", [margin, name("scale")], [name("logit")], name=name("Scale")))
        current = name("logit")
    nodes += [helper.make_node("Neg", [current], [name("neg")], name=name("Neg")),
              helper.make_node("Exp", [current], [name("exp0")], name=name("Exp0")),
              helper.make_node("Exp", [name("neg")], [name("exp1")], name=name("Exp1")),
              helper.make_node("Add", [name("one"), name("exp0")], [name("den0")], name=name("Add0")),
              helper.make_node("Add", [name("one"), name("exp1")], [name("den1")], name=name("Add1")),
              helper.make_node("Reciprocal", [name("den0")], [name("p0")], name=name("P0")),
              helper.make_node("Reciprocal", [name("den1")], [name("p1")], name=name("P1")),
              helper.make_node("Concat", [name("p0"), name("p1")], [output], axis=1, name=name("Probabilities"))]
    return nodes, inits


def margins_graph(onx: Any, n_features: int, n_classes: int, scale: float, name: str,
                  splits64: list[float] | None = None) -> Any:
    """A converter's TreeEnsembleClassifier (LightGBM's, HistGradientBoosting's) as a TreeEnsembleRegressor of
    the raw scores, then the probabilities: softmax for K > 2 classes, `binary_head` (margin times `scale`)
    for two. The trees and their base values are kept as converted. With `splits64` (one double per node of
    `nodes_values`, the exact split values) the graph reads float64 and every split compares in double
    (`nodes_values_as_tensor`: onnxruntime then compares float64 inputs with float64 thresholds)."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in tree_node(onx).attribute}
    n_groups = 1 if n_classes == 2 else n_classes
    base = list(attrs.get("base_values") or [])
    if attrs.get("post_transform") not in (b"LOGISTIC", b"SOFTMAX") or len(base) not in (0, n_groups):
        raise UnsupportedModelError(f"{name}: the converted trees carry {len(base)} base values and a "
                                    f"{attrs.get('post_transform')!r} transform; expected a logistic or softmax "
                                    f"over {n_groups} score(s).")
    if any(not 0 <= c < n_groups for c in attrs["class_ids"]):
        raise UnsupportedModelError(f"{name}: a converted tree scores a class beyond {n_groups - 1}.")
    kept: dict[str, Any] = {k: v for k, v in attrs.items() if k.startswith("nodes_")}
    if splits64 is not None:
        if len(splits64) != len(kept["nodes_values"]):
            raise UnsupportedModelError(f"{name}: {len(splits64)} double split values for "
                                        f"{len(kept['nodes_values'])} converted nodes.")
        del kept["nodes_values"]
        kept["nodes_values_as_tensor"] = numpy_helper.from_array(np.asarray(splits64, dtype=np.float64),
                                                                 "nodes_values_as_tensor")
    if base:
        kept["base_values"] = base
    trees = helper.make_node(
        "TreeEnsembleRegressor", [CONTRACT.input_name], ["margins"], domain="ai.onnx.ml", name="trees",
        n_targets=n_groups, aggregate_function="SUM", post_transform="NONE",
        target_ids=attrs["class_ids"], target_nodeids=attrs["class_nodeids"], target_treeids=attrs["class_treeids"],
        target_weights=attrs["class_weights"], **kept)
    graph = probabilities_graph(name, [trees], [], n_groups, n_features, n_classes, scale,
                                float64=splits64 is not None)
    # ai.onnx.ml 3: the first with the double `nodes_values_as_tensor` (to_contract raises every import to 3).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", CONTRACT.opset),
                                                   helper.make_opsetid("ai.onnx.ml", 1 if splits64 is None else 3)])


def probabilities_graph(name: str, nodes: list[Any], inits: list[Any], n_groups: int, n_features: int, n_classes: int,
                        scale: float = 1.0, float64: bool = False) -> Any:
    """A tree member's graph: `nodes` (and their `inits`) computing the raw scores `margins` from the contract's
    input (float32, or float64 for a member that compares in double), then the probabilities: `binary_head`
    (margin times `scale`) for one score, a softmax over several."""
    from onnx import TensorProto, helper

    if n_groups == 1:
        head, head_inits = binary_head("margins", CONTRACT.output_name, scale)
    else:
        head, head_inits = [helper.make_node("Softmax", ["margins"], [CONTRACT.output_name], axis=1,
                                             name="Probabilities")], []
    dtype = TensorProto.DOUBLE if float64 else TensorProto.FLOAT
    return helper.make_graph(
        nodes + head, name, [helper.make_tensor_value_info(CONTRACT.input_name, dtype, [None, n_features])],
        [helper.make_tensor_value_info(CONTRACT.output_name, TensorProto.FLOAT, [None, n_classes])], inits + head_inits)
