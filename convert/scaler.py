"""The StandardScaler the members were trained behind: a pickle/joblib (allowlisted) or {"mean", "scale"} JSON.

`transform` is the parity reference (sklearn's own `transform` when there is a fitted object); `mean` and
`scale` are what the ensemble graph subtracts and divides by, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MetadataError, ModelFileError
from .loaders import load_json, load_pickle


@dataclass
class Scaler:
    file: Path
    mean: np.ndarray | None    # None: with_mean=False
    scale: np.ndarray | None   # None: with_std=False
    feature_names: list[str] | None
    fitted: Any = None         # the sklearn object, when the file held one

    @property
    def n_features(self) -> int:
        # load_scaler refuses a scaler with neither mean nor scale, so one of them is always there.
        return len(self.mean if self.mean is not None else self.scale)  # type: ignore[arg-type]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """float64 in, float64 out, exactly as the service scaled."""
        if self.fitted is not None:
            return self.fitted.transform(x)
        out = np.array(x, dtype=np.float64)
        if self.mean is not None:
            out -= self.mean
        if self.scale is not None:
            out /= self.scale
        return out


def _vector(values: Any, file: Path, field: str) -> np.ndarray:
    try:
        vec = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"{file}: field '{field}' must be a list of numbers.") from exc
    if vec.ndim != 1 or not np.all(np.isfinite(vec)):
        raise MetadataError(f"{file}: field '{field}' must be a flat list of finite numbers.")
    return vec


def load_scaler(file: Path) -> Scaler:
    if file.suffix == ".json":
        data = load_json(file, "scaler")
        for key in ("mean", "scale"):
            if key not in data:
                raise MetadataError(f"{file}: scaler JSON lacks field '{key}' (expected {{\"mean\": [...], \"scale\": "
                                    f"[...]}}).")
        mean, scale = _vector(data["mean"], file, "mean"), _vector(data["scale"], file, "scale")
        if mean.shape != scale.shape or np.any(scale <= 0):
            raise MetadataError(f"{file}: 'mean' and 'scale' must have equal length and every scale must be > 0.")
        names = data.get("feature_names")
        return Scaler(file, mean, scale, list(names) if names is not None else None)

    from sklearn.preprocessing import StandardScaler

    obj = load_pickle(file, "scaler")
    if not isinstance(obj, StandardScaler) or not hasattr(obj, "n_features_in_"):
        raise ModelFileError(f"{file}: holds a {type(obj).__name__}, expected a fitted StandardScaler.")
    if not obj.with_mean and not obj.with_std:
        # It subtracts nothing and divides by nothing; the ensemble's load check wants a scaled member's input to
        # pass through a Sub or a Div, so say what the user means instead of building a do-nothing chain.
        raise ModelFileError(f"{file}: a StandardScaler with with_mean=False and with_std=False changes nothing; "
                             f"give this member \"scaler\": null (no scaler) instead.")
    names = getattr(obj, "feature_names_in_", None)
    return Scaler(file, obj.mean_ if obj.with_mean else None, obj.scale_ if obj.with_std else None,
                  [str(n) for n in names] if names is not None else None, fitted=obj)
