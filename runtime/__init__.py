"""The serving side: load verified artifacts and score the whole ensemble with onnxruntime and numpy alone.

    import runtime
    ens = runtime.load("artifacts/")          # verifies manifest and sha256 of every file it uses
    ens = runtime.load("artifacts/", expect_build_id="3f1c...")  # and that it is the build a release promoted
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

from .artifacts import REBUILD, Verified, read_folder
from .contract import (
    CONFIDENCE,
    ENSEMBLE_OUTPUTS,
    LABEL,
    MANIFEST_FILE,
    MEMBER_PROBABILITIES,
    META_DIGEST,
    PROBABILITIES,
)
from .drift import STATISTICS_FILE, drift_report, parse_statistics
from .errors import ArtifactError, EnsembleOnnxError, InputError, shortened
from .features import InputDomain, as_matrix, rows_to_matrix

# Rows per onnxruntime call: the graph's intermediates take about 11 KB a row (PatchTST's 2048-wide layer;
# measured 530 MB peak for one call of 40,000 rows), so a caller's million-row array would need ~11 GB at once.
RUN_CHUNK = 4096

__all__ = ["load", "Ensemble", "Prediction", "EnsembleOnnxError", "ArtifactError", "InputError"]


@dataclass(frozen=True)
class Prediction:
    action: str                                   # the chosen class name, one of `classes` (after the decision policy)
    confidence: float                             # the ensemble probability of that class
    probabilities: dict[str, float]               # class name -> ensemble probability
    members: dict[str, dict[str, float]]          # member name -> class name -> probability


class Ensemble:
    """A loaded, verified ensemble. Build it with `runtime.load`."""

    def __init__(self, path: str, verified: Verified, options: ort.SessionOptions | None = None) -> None:
        self.path = path
        self.manifest = verified.manifest
        self.build_id = verified.build_id
        typed = verified.typed
        self.feature_names: tuple[str, ...] = tuple(typed.feature_names)
        self.classes: tuple[str, ...] = tuple(typed.classes)
        self.member_order: tuple[str, ...] = tuple(typed.ensemble.members)
        self.members: dict[str, float] = {n: typed.members[n].weight for n in self.member_order}
        graph_file = typed.ensemble.file
        graph_path = os.path.join(path, graph_file)
        try:
            self._session = ort.InferenceSession(verified.files[graph_file], options or ort.SessionOptions(),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or unsupported graphs
            raise ArtifactError(f"{graph_path}: onnxruntime cannot load it ({exc}).") from exc
        # The digest was checked on the bytes; this confirms onnxruntime read the same metadata from them.
        if self._session.get_modelmeta().custom_metadata_map.get(META_DIGEST) != verified.manifest_digest:
            raise ArtifactError(f"{graph_path}: onnxruntime reads another build contract than the file holds.")
        inputs = self._session.get_inputs()
        outputs = [o.name for o in self._session.get_outputs()]
        # _run reads the outputs by position: a name listed twice would shift every one after it.
        for kind, names, want in (("input", [i.name for i in inputs], [typed.ensemble.input]),
                                  ("output", outputs, list(ENSEMBLE_OUTPUTS))):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ArtifactError(f"{graph_path}: lists the {kind}(s) {shortened(twice, quoted=False)} more than "
                                    f"once; its {kind}s must be {want} as {MANIFEST_FILE} says.")
        shapes = {o.name: o.shape[1:] for o in self._session.get_outputs()}
        # The widths too: a graph of 3 classes under a manifest of 4 would otherwise be served 3 columns.
        if ([i.name for i in inputs] != [typed.ensemble.input] or inputs[0].shape[1] != len(self.feature_names)
                or outputs != typed.ensemble.outputs or outputs != list(ENSEMBLE_OUTPUTS)
                or shapes[PROBABILITIES] != [len(self.classes)]
                or shapes[MEMBER_PROBABILITIES] != [len(self.member_order), len(self.classes)]):
            raise ArtifactError(f"{graph_path}: inputs/outputs do not match manifest.json.")
        # That the weights, temperatures and policy describe() reports are the ones the graph computes with is
        # `ensemble-onnx verify`'s deep check (convert/verify_graph.py), run by convert on what it writes: the
        # load binds this manifest to this graph (the digest), and a signature says who made the pair.
        self._input = inputs[0].name
        self._graph_path = graph_path
        # What each output must hold after a row's dimension: onnxruntime only warns when a graph computes
        # another shape than it declares, and the load reads only the declared ones.
        widths = {PROBABILITIES: (len(self.classes),), LABEL: (), CONFIDENCE: (),
                  MEMBER_PROBABILITIES: (len(self.member_order), len(self.classes))}
        self._widths = {name: widths[name] for name in ENSEMBLE_OUTPUTS}  # in the order _run reads them
        # The rows the gate proved parity on: a row outside is refused, never handed to a member that may
        # overflow on it. A build from before the domain existed checks only that every value is finite.
        self._domain = None if typed.domain is None else InputDomain(
            typed.domain.lo, typed.domain.hi, typed.domain.nan, typed.domain.nan_refused_by, self.feature_names)
        # NaN gets past as_matrix only to the domain check, which takes it or refuses it naming the members.
        self._missing = self._domain is not None
        # Verified training statistics (absent in builds made before they existed: drift() then says so).
        raw_statistics = verified.files.get(STATISTICS_FILE)
        self._statistics = (None if raw_statistics is None
                            else parse_statistics(raw_statistics, self.feature_names, path))

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x) == 0:
            raise InputError("no rows to score.")
        if self._domain is not None:
            self._domain.check(x)
        k, m = len(self.classes), len(self.member_order)
        parts = []
        for i in range(0, len(x), RUN_CHUNK):
            part = self._session.run(None, {self._input: x[i:i + RUN_CHUNK]})  # in ENSEMBLE_OUTPUTS order (load)
            n = min(RUN_CHUNK, len(x) - i)  # a forged graph's other shapes are never served, nor concatenated
            if part[0].shape != (n, k) or part[1].shape != (n,) or part[2].shape != (n,) or part[3].shape != (n, m, k):
                raise self._shape_refusal(part, n)
            parts.append(part)
        out = {name: parts[0][j] if len(parts) == 1 else np.concatenate([p[j] for p in parts])
               for j, name in enumerate(ENSEMBLE_OUTPUTS)}
        # Finite inputs far outside the training range can overflow float32 inside a member (PatchTST's
        # LayerNorm squares them): a NaN there is not a prediction, so the rows are refused by name. Only a
        # refused call pays for naming the row's largest feature.
        if not np.isfinite(out[MEMBER_PROBABILITIES]).all():
            bad = ~np.isfinite(out[MEMBER_PROBABILITIES]).all(axis=2)
            row, member = (int(i) for i in np.argwhere(bad)[0])
            largest = int(np.argmax(np.abs(x[row])))
            error = InputError(f"row {row}: member '{self.member_order[member]}' produced non-finite probabilities "
                               f"({int(bad.any(axis=1).sum())} row(s) affected): the row's features are too large "
                               f"for its float32 arithmetic (largest: '{self.feature_names[largest]}' = "
                               f"{x[row, largest]:.6g}), far outside the range the models were trained on.")
            error.row = row
            raise error
        return out

    def _shape_refusal(self, part: list[np.ndarray], n: int) -> ArtifactError:
        name, width, got = next((name, width, part[j].shape) for j, (name, width) in enumerate(self._widths.items())
                                if part[j].shape != (n, *width))
        return ArtifactError(f"{self._graph_path}: computed '{name}' of shape {list(got)} for {n} row(s), not the "
                             f"{[n, *width]} it declares; {REBUILD}.")

    def run(self, x: Any) -> dict[str, np.ndarray]:
        """(n, F) numbers in feature order -> every output of the ensemble graph by name: `probabilities`
        (n, C), `label` (n,) class indices after the decision policy, `confidence` (n,) and
        `member_probabilities` (n, M, C), in `runtime.contract.ENSEMBLE_OUTPUTS` order. The checks of
        `predict_proba` apply (InputError for a bad shape, a non-number, a value outside the proven domain,
        no rows, or a member that overflows on a row, with `.row` set to that row)."""
        return self._run(as_matrix(x, self.feature_names, self._missing))

    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, F) numbers in feature order -> (n, n_classes) ensemble probabilities."""
        return self._run(as_matrix(x, self.feature_names, self._missing))[PROBABILITIES]

    def member_probabilities(self, x: Any) -> dict[str, np.ndarray]:
        """(n, F) numbers in feature order -> member name -> (n, n_classes)."""
        per_member = self._run(as_matrix(x, self.feature_names, self._missing))[MEMBER_PROBABILITIES]
        return {name: per_member[:, i] for i, name in enumerate(self.member_order)}

    def predict(self, rows: Any) -> list[Prediction]:
        """A mapping, a list of mappings, a DataFrame or a 2-D array -> one Prediction per row."""
        out = self._run(rows_to_matrix(rows, self.feature_names, ("symbol",), self._missing))
        return [Prediction(
            action=self.classes[int(label)], confidence=float(conf),
            probabilities=dict(zip(self.classes, map(float, probs), strict=True)),
            members={name: dict(zip(self.classes, map(float, member[i]),
                                    strict=True)) for i, name in enumerate(self.member_order)})
            for label, conf, probs, member in zip(out[LABEL], out[CONFIDENCE], out[PROBABILITIES],
                                                  out[MEMBER_PROBABILITIES], strict=True)]

    def drift(self, rows: Any) -> dict[str, Any]:
        """Rows as `predict` takes them -> per feature PSI against the training bins (or a z-score summary when
        the build knows only the scaler's mean and scale), the share out of the training range, and an overall
        status `ok` / `warn` / `drift`; thresholds in `runtime.drift`. NaN is taken where `predict` takes it,
        counted per feature (`missing`) and left out of that feature's figures. ArtifactError for a build
        without training statistics."""
        # Without statistics, parse_statistics(None) raises the ArtifactError that says how to rebuild.
        stats = self._statistics or parse_statistics(None, self.feature_names, self.path)
        x = rows_to_matrix(rows, self.feature_names, ("symbol",), self._missing)
        if self._domain is not None:  # NaN as predict takes it; a value past the range is what drift measures
            self._domain.check_missing(x)
        return drift_report(x, stats, self.feature_names)

    def outside_training_range(self, rows: Any) -> list[list[str]]:
        """Rows as `predict_proba` takes them (an [n, F] array) -> per row, the features whose value lies under
        the training minimum or over the training maximum (statistics.json). A flag for the caller, never a
        refusal: such a row is scored where the build's domain holds it. [] per row for a build without a
        training range."""
        x = as_matrix(rows, self.feature_names, self._missing)
        if self._statistics is None:
            return [[] for _ in range(len(x))]
        low, high = self._statistics.low, self._statistics.high
        outside = ~np.isnan(low) & ~np.isnan(high) & ((x < low) | (x > high))  # NaN compares False: not flagged
        return [[self.feature_names[j] for j in np.flatnonzero(row)] for row in outside]

    def describe(self) -> dict[str, Any]:
        """What is loaded, for start-up logs and health endpoints."""
        m = self.manifest
        return {"path": self.path, "build_id": self.build_id, "schema_version": m["schema_version"],
                "classes": list(self.classes),
                "feature_names": list(self.feature_names), "combine": m["combine"]["method"],
                "members": {n: {"kind": m["members"][n]["kind"], "weight": m["members"][n]["weight"],
                                "source_sha256": m["members"][n]["source"]["sha256"],
                                **({"code": m["members"][n]["code"]} if "code" in m["members"][n] else {})}
                            for n in self.member_order},
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


def load(path: str | os.PathLike[str], options: ort.SessionOptions | None = None, *,
         expect_build_id: str | None = None, public_key: str | os.PathLike[str] | bytes | None = None) -> Ensemble:
    """Verify and load an artifacts folder; ArtifactError if anything in it cannot be trusted.

    expect_build_id: refuse any build but this one (`describe()["build_id"]`, printed by convert).
    public_key: an Ed25519 public key (PEM path or bytes); refuse a folder it did not sign (needs the
    `[signing]` extra)."""
    verified = read_folder(path, expect_build_id, public_key)
    return Ensemble(os.fspath(path), verified, options)
