"""XGBoost: an XGBClassifier pickle (allowlisted) or a native .json / .ubj, converted with onnxmltools.

XGBoost trains and predicts on float32 and splits on `x < threshold` with float32 thresholds, so the
converted TreeEnsembleClassifier is exact. A model trained with early stopping predicts with the trees up
to `best_iteration`; the export slices the booster the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..loaders import load_pickle
from . import LoadedMember, MemberSource, to_contract
from .trees import check_classes, input_types

SUPPORTED_OBJECTIVES = ("multi:softprob", "multi:softmax")


def read_model(source: MemberSource) -> Any:
    import xgboost

    if source.file.suffix in (".json", ".ubj"):
        model = xgboost.XGBClassifier()
        try:
            model.load_model(source.file)
        except xgboost.core.XGBoostError as exc:
            raise ModelFileError(f"{source.file}: not a readable XGBoost model ({str(exc).splitlines()[0]}).") from exc
        except TypeError as exc:  # xgboost refuses to load a regressor's file into a classifier
            raise UnsupportedModelError(f"{source.file}: not a classifier ({exc}); the ensemble needs class "
                                        f"probabilities.") from exc
        return model
    model = load_pickle(source.file, "xgboost")
    if not isinstance(model, xgboost.XGBClassifier):
        raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected an XGBClassifier.")
    return model


def split_thresholds(booster: Any) -> list[tuple[int, float]]:
    """Every (feature index, float32 threshold) the trees split on, from the model's own JSON."""
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    return sorted({(int(f), float(np.float32(c)))
                   for tree in trees
                   for f, c, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"])
                   if left != -1})


def _proba(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x32: model.predict_proba(x32).astype(np.float64)  # stops at best_iteration by itself


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return _proba(read_model(source))


def load(source: MemberSource) -> LoadedMember:
    from onnxmltools import convert_xgboost

    from .trees import ONNXMLTOOLS_OPSET

    model = read_model(source)
    booster = model.get_booster()
    config = json.loads(booster.save_config())
    objective = config["learner"]["objective"]["name"]
    if objective not in SUPPORTED_OBJECTIVES:
        raise UnsupportedModelError(f"{source.file}: objective '{objective}' is not a multi-class softmax; the "
                                    f"ensemble needs class probabilities ({' or '.join(SUPPORTED_OBJECTIVES)}).")
    n_classes = int(config["learner"]["learner_model_param"]["num_class"])
    check_classes(getattr(model, "classes_", None), n_classes, source.file)
    rounds = booster.num_boosted_rounds()
    best = int(booster.attr("best_iteration")) + 1 if booster.attr("best_iteration") is not None else rounds
    export = booster[:best] if best < rounds else booster.copy()
    feature_names = list(export.feature_names) if export.feature_names else None
    export.feature_names = None  # the converter reads split features as 'f<index>'
    onx = convert_xgboost(export, name=source.name, initial_types=input_types(booster.num_features()),
                          target_opset=ONNXMLTOOLS_OPSET)
    return LoadedMember(
        source=source, n_features=booster.num_features(), n_classes=n_classes,
        hyperparameters={"objective": objective, "trees": best * n_classes, "best_iteration": best - 1,
                         "boosted_rounds": rounds},
        reference=_proba(model),
        onnx_model=to_contract(onx, "xgboost"), feature_names=feature_names,
        notes=[f"{best} of {rounds} boosting rounds (best_iteration)" if best < rounds else f"{rounds} boosting rounds"],
        thresholds=split_thresholds(export))
