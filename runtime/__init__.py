"""The serving side: load verified artifacts and score the whole ensemble with onnxruntime and numpy alone.

    import runtime
    ens = runtime.load("artifacts/")          # verifies manifest and sha256 of every file it uses
    ens.predict({"rsi_14": 61.2, ...})         # -> [Prediction(action, confidence, probabilities, members)]

Nothing here returns a prediction the ensemble graph did not compute: bad artifacts raise ArtifactError at
load, bad features raise InputError, and onnxruntime failures propagate. One loaded Ensemble may be shared by
any number of threads (InferenceSession.run is thread-safe and the Ensemble holds no mutable state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .artifacts import ArtifactError, read_verified
from .features import InputError, as_matrix, rows_to_matrix

__all__ = ["load", "Ensemble", "Prediction", "ArtifactError", "InputError"]


@dataclass(frozen=True)
class Prediction:
    action: str                                   # the chosen class name: SELL, HOLD or BUY (after the decision policy)
    confidence: float                             # the ensemble probability of that class
    probabilities: dict[str, float]               # class name -> ensemble probability
    members: dict[str, dict[str, float]]          # member name -> class name -> probability


class Ensemble:
    """A loaded, verified ensemble. Build it with `runtime.load`."""

    def __init__(self, path: str, manifest: dict[str, Any], files: dict[str, bytes],
                 options: ort.SessionOptions | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.feature_names: tuple[str, ...] = tuple(manifest["feature_names"])
        self.classes: tuple[str, ...] = tuple(manifest["classes"])
        self.member_order: tuple[str, ...] = tuple(manifest["ensemble"]["members"])
        self.members: dict[str, float] = {n: manifest["members"][n]["weight"] for n in self.member_order}
        graph_file = manifest["ensemble"]["file"]
        try:
            self._session = ort.InferenceSession(files[graph_file], options or ort.SessionOptions(),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or unsupported graphs
            raise ArtifactError(f"{os.path.join(path, graph_file)}: onnxruntime cannot load it ({exc}).") from exc
        inputs = self._session.get_inputs()
        outputs = [o.name for o in self._session.get_outputs()]
        if ([i.name for i in inputs] != [manifest["ensemble"]["input"]] or inputs[0].shape[1] != len(self.feature_names)
                or outputs != manifest["ensemble"]["outputs"]):
            raise ArtifactError(f"{os.path.join(path, graph_file)}: inputs/outputs do not match manifest.json.")
        self._input = inputs[0].name

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x) == 0:
            raise InputError("no rows to score.")
        out = dict(zip(self.manifest["ensemble"]["outputs"], self._session.run(None, {self._input: x})))
        # Finite inputs far outside the training range can overflow float32 inside a member (PatchTST's
        # LayerNorm squares them): a NaN there is not a prediction, so the rows are refused by name.
        if not np.isfinite(out["member_probabilities"]).all():
            bad = ~np.isfinite(out["member_probabilities"]).all(axis=2)
            row, member = np.argwhere(bad)[0]
            raise InputError(f"row {row}: member '{self.member_order[member]}' produced non-finite probabilities "
                             f"({int(bad.any(axis=1).sum())} row(s) affected); the features are far outside the "
                             f"range the models were trained on.")
        return out

    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, F) numbers in feature order -> (n, n_classes) ensemble probabilities."""
        return self._run(as_matrix(x, self.feature_names))["probabilities"]

    def member_probabilities(self, x: Any) -> dict[str, np.ndarray]:
        """(n, F) numbers in feature order -> member name -> (n, n_classes)."""
        per_member = self._run(as_matrix(x, self.feature_names))["member_probabilities"]
        return {name: per_member[:, i] for i, name in enumerate(self.member_order)}

    def predict(self, rows: Any) -> list[Prediction]:
        """A mapping, a list of mappings, a DataFrame or a 2-D array -> one Prediction per row."""
        out = self._run(rows_to_matrix(rows, self.feature_names, passthrough=("symbol",)))
        return [Prediction(
            action=self.classes[int(label)], confidence=float(conf),
            probabilities=dict(zip(self.classes, map(float, probs))),
            members={name: dict(zip(self.classes, map(float, member[i]))) for i, name in enumerate(self.member_order)})
            for label, conf, probs, member in zip(out["label"], out["confidence"], out["probabilities"],
                                                  out["member_probabilities"])]

    def describe(self) -> dict[str, Any]:
        """What is loaded, for start-up logs and health endpoints."""
        m = self.manifest
        return {"path": self.path, "schema_version": m["schema_version"], "classes": list(self.classes),
                "feature_names": list(self.feature_names), "combine": m["combine"]["method"],
                "members": {n: {"kind": m["members"][n]["kind"], "weight": m["members"][n]["weight"],
                                "source_sha256": m["members"][n]["source"]["sha256"]} for n in self.member_order},
                "decision": m.get("decision"), "precision": m.get("precision") or {"weights": "fp32"},
                "files": m["files"], "parity": m.get("parity"),
                "build_libraries": m.get("libraries"),
                "onnxruntime": ort.__version__, "host": self._host()}

    def _host(self) -> dict[str, Any]:
        """This serving host's CPU; for an int8 build, whether it has the instructions 8-bit needs to pay."""
        from .host import cpu, int8_note

        host = cpu()
        if (self.manifest.get("precision") or {}).get("weights", "fp32") != "fp32":
            host["int8_note"] = int8_note(host)
        return host


def load(path: str | os.PathLike[str], options: ort.SessionOptions | None = None) -> Ensemble:
    """Verify and load an artifacts folder; ArtifactError if anything in it cannot be trusted."""
    manifest, files = read_verified(path)
    return Ensemble(os.fspath(path), manifest, files, options)
