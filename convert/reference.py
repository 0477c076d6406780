"""The ensemble as the service computed it: each member through its own framework, one call per member.

torch for N-HiTS and PatchTST (rebuilt from their state_dicts), scikit-learn for the scaler and a stacker,
xgboost and lightgbm for the trees, combined in numpy, then the decision policy. Each tree member is called
as the service called its file (the loader that saved it, ensemble.json's "rounds" and "missing": see
docs/models-folder.md), and binary members give probabilities from their own margins in float64, so a
temperature keeps a confident member's small probability. Every member's framework is handed the float64
rows the service handed it (scaled in float64); those that compute in float32 cast them as they did. The
parity gate holds the
ONNX graphs to this; `bench` times it as the baseline; `verify` rebuilds it from the model files.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, cast

import numpy as np

from .decision import Decision
from .discover import Plan
from .errors import member_step
from .loaders import load_pickle
from .members import get_kind
from .scaler import Scaler, load_scaler

Predictor = Callable[[np.ndarray], np.ndarray]  # float64 [N, F] scaled -> float64 [N, C]


class Reference:
    def __init__(self, plan: Plan, predictors: dict[str, Predictor], scalers: dict[Path, Scaler],
                 stacker: Any | None) -> None:
        self.plan, self.predictors, self.scalers, self.stacker = plan, predictors, scalers, stacker

    @property
    def decision(self) -> Decision:
        return self.plan.decision  # one place holds the policy: calibration replaces it there

    @classmethod
    def from_plan(cls, plan: Plan) -> Reference:
        """Loads each member with its own framework only: no export, as the service did."""
        scalers = {m.scaler: load_scaler(m.scaler) for m in plan.members if m.scaler is not None}
        stacker = load_pickle(plan.combine["file"], "stacker") if plan.combine["method"] == "stacking" else None
        predictors = {}
        for m in plan.members:
            with member_step(m.name, m.file, "reading it"):
                predictors[m.name] = get_kind(m.kind).reference(m)
        return cls(plan, predictors, scalers, stacker)

    def member_input(self, scaler: Path | None, raw: np.ndarray) -> np.ndarray:
        """What the service handed the member's framework: the float64 rows, through the scaler's float64
        transform where it has one. A framework that computes in float32 casts them itself (torch's predictor
        here, as the service did; XGBoost, CatBoost and scikit-learn's forests inside their predict)."""
        if scaler is None:
            return np.asarray(raw, dtype=np.float64)
        # scikit-learn's finiteness check sums the rows first: rows near float64's largest (a float64 tree's
        # domain) overflow that sum, harmlessly (it then checks each value), with a RuntimeWarning on stderr.
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(self.scalers[scaler].transform(raw), dtype=np.float64)

    def raw_member_probabilities(self, raw: np.ndarray, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Each member's (or each named member's) own probabilities on the raw rows."""
        inputs: dict[Path | None, np.ndarray] = {}
        out = {}
        for m in (m for m in self.plan.members if names is None or m.name in names):
            if m.scaler not in inputs:  # scaled once per scaler, as the service did
                with member_step(m.name, m.scaler, "scaling the parity rows with scikit-learn"):
                    inputs[m.scaler] = self.member_input(m.scaler, raw)
            with member_step(m.name, m.file, "predicting the parity rows with its own framework"):
                out[m.name] = self.predictors[m.name](inputs[m.scaler])
        return out

    def calibrated(self, raw_member_probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.decision.calibrated(name, p) for name, p in raw_member_probs.items()}

    def combine(self, member_probs: dict[str, np.ndarray]) -> np.ndarray:
        probs = [member_probs[m.name] for m in self.plan.members]
        if self.stacker is not None:
            with member_step("stacker", self.plan.combine["file"], "predicting with scikit-learn"):
                return np.asarray(self.stacker.predict_proba(np.concatenate(probs, axis=1)), dtype=np.float64)
        return cast(np.ndarray, sum(m.weight * p for m, p in zip(self.plan.members, probs, strict=True)))

    def predict_proba(self, raw: np.ndarray) -> np.ndarray:
        return self.combine(self.calibrated(self.raw_member_probabilities(raw)))
