"""What the tree kinds share: onnxmltools conversion brought to the export contract, and class checks.

onnxmltools emits opset <= 15 graphs with a `label` output beside `probabilities`; the contract wants one
opset policy and one output. Its TreeEnsembleClassifier stores thresholds as float32, which is exact for
XGBoost (trained on float32) and is corrected per split for LightGBM (double thresholds), in lightgbm.py.
"""

from __future__ import annotations

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
