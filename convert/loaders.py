"""Safe reading of every model file the build touches. Nothing here can run code from a file.

- torch weights: `torch.load(weights_only=True)` only, and the result must be a flat name -> tensor mapping.
- pickles and joblib files: one restricted unpickler, whose `find_class` admits exactly the globals the
  role needs (a scaler, an XGBClassifier, an LGBMClassifier, a stacker). Anything else is refused when the
  pickle asks for it, before any of it executes.
- JSON: size-capped, must be an object.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import MetadataError, ModelFileError, UnsafeFileError

MAX_JSON_BYTES = 1 << 20  # metadata is a few hundred bytes; a megabyte is already absurd

# Globals every numpy-carrying pickle needs (both numpy 1.x and 2.x spellings) and joblib's array wrapper.
_COMMON = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "bytearray"),
})

ALLOWED_GLOBALS: dict[str, frozenset[tuple[str, str]]] = {
    "scaler": _COMMON | {("sklearn.preprocessing._data", "StandardScaler")},
    "xgboost": _COMMON | {("xgboost.sklearn", "XGBClassifier"), ("xgboost.sklearn", "XGBRFClassifier"),
                          ("xgboost.core", "Booster")},
    "lightgbm": _COMMON | {("lightgbm.sklearn", "LGBMClassifier"), ("lightgbm.basic", "Booster"),
                           ("sklearn.preprocessing._label", "LabelEncoder")},
    # The fifth kind: the classifiers skl2onnx converts, and what their fitted state pickles.
    "sklearn": _COMMON | {
        ("sklearn.ensemble._forest", "RandomForestClassifier"), ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
        ("sklearn.tree._classes", "DecisionTreeClassifier"), ("sklearn.tree._classes", "ExtraTreeClassifier"),
        ("sklearn.tree._tree", "Tree"), ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"),
        ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
        ("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper"),
        ("sklearn._loss.loss", "HalfBinomialLoss"), ("sklearn._loss.loss", "HalfMultinomialLoss"),
        ("sklearn._loss.link", "LogitLink"), ("sklearn._loss.link", "MultinomialLogit"),
        ("sklearn._loss.link", "Interval"), ("sklearn._loss._loss", "CyHalfBinomialLoss"),
        ("sklearn._loss._loss", "CyHalfMultinomialLoss"), ("sklearn._loss._loss", "__pyx_unpickle_CyHalfBinomialLoss"),
        ("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss"),
        ("sklearn.preprocessing._label", "LabelEncoder"),
        # HistGradientBoosting keeps a numpy Generator: these rebuild a bit generator from its saved state.
        ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pcg64", "PCG64"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("numpy.random.bit_generator", "SeedSequence"),
    },
    "stacker": _COMMON | {("sklearn.linear_model._logistic", "LogisticRegression"),
                          ("sklearn.preprocessing._label", "LabelEncoder")},
}


def _restricted_unpickler_class(role: str, path: Path) -> type:
    """A joblib-capable unpickler (it also reads plain pickles) that admits only the role's globals."""
    from joblib.numpy_pickle import NumpyUnpickler

    allowed = ALLOWED_GLOBALS[role]

    class RestrictedUnpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise UnsafeFileError(
                    f"{path}: refused to unpickle global '{module}.{name}': it is not on the allowlist for a "
                    f"{role} file, and unpickling it could run code. Re-save the model with its native format "
                    f"(XGBoost .json/.ubj, LightGBM .txt, scaler .json) or retrain with a supported class.")
            return super().find_class(module, name)

    return RestrictedUnpickler


def load_pickle(path: Path, role: str) -> Any:
    """Unpickle a .pkl or .joblib file admitting only the globals `role` needs."""
    # joblib's own reader detects compression and memory-maps nothing (mmap_mode=None); joblib >= 1.6 routes
    # the nested pickle of object arrays through our find_class too.
    from joblib.numpy_pickle import _validate_fileobject_and_memmap

    unpickler_class = _restricted_unpickler_class(role, path)
    try:
        with open(path, "rb") as raw, _validate_fileobject_and_memmap(raw, str(path), None) as (fobj, _):
            if isinstance(fobj, str):  # joblib < 0.10 layout, read through unrestricted legacy code
                raise UnsafeFileError(f"{path}: pre-0.10 joblib layout is not supported; re-save the model.")
            return unpickler_class(str(path), fobj, True).load()
    except (UnsafeFileError, FileNotFoundError):
        raise
    except Exception as exc:  # truncated or corrupt streams raise a zoo of types
        raise ModelFileError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc}); the file is truncated "
                             f"or is not a {role} pickle.") from exc


def load_state_dict(path: Path) -> dict[str, Any]:
    """A bare `state_dict` saved with `torch.save(model.state_dict())`, read with `weights_only=True`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"{path}: refused by torch.load(weights_only=True): it holds more than tensors "
                              f"({str(exc).splitlines()[0]}). Save `model.state_dict()`, not the model.") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc}); it may be "
                             f"truncated. Re-export it with torch.save(model.state_dict(), path).") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise UnsafeFileError(f"{path}: expected a plain state_dict (tensor name -> tensor), found {keys}. "
                              f"If this is a training checkpoint, save checkpoint['model_state_dict'] alone.")
    return dict(state)


def load_json(path: Path, what: str = "metadata") -> dict[str, Any]:
    """A small JSON object; refuses oversized, malformed or non-object files with the file named."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise MetadataError(f"{path}: {what} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{path}: {what} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: {what} must be a JSON object, found {type(data).__name__}.")
    return data
