"""The stacking combiner: a scikit-learn classifier over the concatenated member probabilities
(members in file order, classes in class order), loaded through the pickle allowlist, converted by skl2onnx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFileError, UnsupportedModelError
from .loaders import load_pickle
from .members.export import CONTRACT, to_contract


@dataclass
class Stacker:
    file: Path
    model: Any
    onnx_model: Any  # input float32 [N, n_inputs] -> "probabilities" float32 [N, n_classes]


def load_stacker(file: Path, n_inputs: int, n_classes: int) -> Stacker:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import ClassifierMixin

    model = load_pickle(file, "stacker")
    if not isinstance(model, ClassifierMixin) or not hasattr(model, "predict_proba"):
        raise ModelFileError(f"{file}: holds a {type(model).__name__}, expected a fitted scikit-learn classifier.")
    if getattr(model, "n_features_in_", None) != n_inputs:
        raise UnsupportedModelError(f"{file}: the stacker takes {getattr(model, 'n_features_in_', '?')} inputs; "
                                    f"the members give {n_inputs} probabilities (members x classes).")
    if list(model.classes_) != list(range(n_classes)):
        raise UnsupportedModelError(f"{file}: stacker classes are {list(model.classes_)}, expected 0..{n_classes - 1}.")
    onx = to_onnx(model, initial_types=[(CONTRACT.input_name, FloatTensorType([None, n_inputs]))],
                  target_opset={"": CONTRACT.opset, "ai.onnx.ml": CONTRACT.ml_opset},
                  options={id(model): {"zipmap": False}}, naming="stacker_")
    return Stacker(file, model, to_contract(onx, str(file)))
