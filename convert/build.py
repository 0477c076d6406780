"""The convert pipeline, start to end: plan -> members -> [calibration] -> ensemble graph -> parity gate ->
artifacts/.

Nothing is written to the output folder unless every step, the parity gate included, succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as mf
from .decision import Decision, expected_calibration_error, fit_temperatures, negative_log_likelihood
from .discover import Plan, make_plan
from .errors import MetadataError, ParityError
from .graph import ENSEMBLE_INPUT, ENSEMBLE_OUTPUTS, build_ensemble_graph
from .members import CONTRACT, LoadedMember, get_kind
from .members.torch_common import one_thread
from .parity import BATCH_SIZES, check_parity, merged, parity_rows, summary, table
from .precision import Precision, lower
from .reference import Reference
from .scaler import Scaler, load_scaler
from .stacker import Stacker, load_stacker

log = logging.getLogger(__name__)
Progress = Callable[[str], None]  # told each step as it starts; the CLI draws it, library use logs it


@dataclass
class BuildResult:
    plan: Plan
    manifest: dict[str, Any]
    report: dict[str, Any]


def resolve_feature_names(plan: Plan, members: list[LoadedMember], scalers: dict[Path, Scaler]) -> list[str]:
    """Every source that names the features must agree, order included; one of them must exist."""
    sources: list[tuple[str, list[str]]] = []
    if plan.feature_names is not None:
        sources.append(("ensemble.json", plan.feature_names))
    sources += [(str(m.source.metadata or m.source.file), m.feature_names) for m in members if m.feature_names]
    sources += [(str(s.file), s.feature_names) for s in scalers.values() if s.feature_names]
    if not sources:
        raise MetadataError(f"{plan.models_dir}: no file names the features; add \"feature_names\": [...] to a "
                            f"member's _meta.json or to ensemble.json, in training column order.")
    first_where, first = sources[0]
    for where, names in sources[1:]:
        if list(names) != list(first):
            pos = next((i for i, (a, b) in enumerate(zip(first, names)) if a != b), min(len(first), len(names)))
            raise MetadataError(f"feature names disagree: {first_where} and {where} differ at position {pos} "
                                f"({first[pos] if pos < len(first) else 'end'!r} vs "
                                f"{names[pos] if pos < len(names) else 'end'!r}); {len(first)} vs {len(names)} names.")
    return list(first)


def check_widths(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int, n_classes: int) -> None:
    for m in members:
        if m.n_features != n_features:
            raise MetadataError(f"{m.source.file}: trained on {m.n_features} features; the ensemble has "
                                f"{n_features} feature names. Every member must take the same features.")
        if m.n_classes != n_classes:
            raise MetadataError(f"{m.source.file}: predicts {m.n_classes} classes; the ensemble has {n_classes}.")
    for s in scalers.values():
        if s.n_features != n_features:
            raise MetadataError(f"{s.file}: scales {s.n_features} features; the ensemble has {n_features}.")


def read_features_file(path: Path, feature_names: list[str]) -> np.ndarray:
    """Recorded rows (CSV with a header, or JSON lines), validated and aligned as `predict` does."""
    from runtime.features import InputError, read_records, records_to_matrix

    try:
        return records_to_matrix(read_records(path.read_text()), feature_names)
    except InputError as exc:
        raise MetadataError(f"{path}: {exc}") from exc


@dataclass
class Loaded:
    """Every member rebuilt and exported, with the framework reference the parity gate holds it to."""

    plan: Plan
    members: list[LoadedMember]
    scalers: dict[Path, Scaler]
    stacker: Stacker | None
    feature_names: list[str]
    reference: Reference


def load_plan(plan: Plan, progress: Progress = log.info) -> Loaded:
    scalers = {m.scaler: load_scaler(m.scaler) for m in plan.members if m.scaler is not None}
    members = []
    for source in plan.members:
        progress(f"rebuilding and exporting {source.name} ({source.kind}) from {source.file.name}")
        member = get_kind(source.kind).load(source)
        for note in member.notes:
            log.info("  %s: %s", source.name, note)
        members.append(member)
    feature_names = resolve_feature_names(plan, members, scalers)
    check_widths(members, scalers, len(feature_names), len(plan.classes))
    stacker = None
    if plan.combine["method"] == "stacking":
        stacker = load_stacker(plan.combine["file"], len(members) * len(plan.classes), len(plan.classes))
    reference = Reference(plan, {m.source.name: m.reference for m in members}, scalers,
                          stacker.model if stacker else None)
    return Loaded(plan, members, scalers, stacker, feature_names, reference)


def run_parity(loaded: Loaded, member_bytes: dict[str, bytes], ensemble_bytes: bytes, recorded: np.ndarray | None,
               progress: Progress = log.info, precision: Precision = Precision()) -> dict[str, Any]:
    rows = parity_rows(loaded.members, loaded.scalers, len(loaded.feature_names), recorded)
    gate = "parity gate" if not precision.lowered else f"agreement gate ({precision.weights} graph)"
    progress(f"{gate}: {len(rows.raw)} rows at batch sizes {', '.join(map(str, BATCH_SIZES))}")
    report = check_parity(loaded.reference, rows, member_bytes, ensemble_bytes, precision)
    for line in table(report):
        log.info(line)
    return report


def _require(report: dict[str, Any], out: Path) -> None:
    if not report["passed"]:
        failed = out.parent / f"{out.name}.parity-failed.json"
        failed.write_bytes(mf.dumps(report))
        raise ParityError(f"parity gate failed; {out} left untouched; full report in {failed}:\n  "
                          + "\n  ".join(report["failures"]), report)


def calibrate(loaded: Loaded, labelled: Path) -> Decision:
    """Fit the members' temperatures on labelled rows (negative log-likelihood of the ensemble); the report
    goes into the manifest: per member t and NLL before/after, the ensemble's NLL and calibration error
    before/after."""
    from runtime.features import InputError, read_records, records_to_matrix

    classes = loaded.plan.classes
    try:
        records = read_records(labelled.read_text())
        raw = records_to_matrix(records, loaded.feature_names, passthrough=("symbol", "label"))
    except InputError as exc:
        raise MetadataError(f"{labelled}: {exc}") from exc
    bad = [n for n, r in records if r.get("label") not in classes]
    if bad:
        raise MetadataError(f"{labelled}: line(s) {bad[:5]} have no 'label' column naming one of {classes}; "
                            f"--calibrate needs labelled rows.")
    labels = np.array([classes.index(r["label"]) for _, r in records])
    member_probs = loaded.reference.raw_member_probabilities(raw)
    before = loaded.reference
    fitted = fit_temperatures(member_probs, before.combine, labels)
    after = Decision(fitted, loaded.plan.decision.min_confidence)
    ens_before = before.combine(before.calibrated(member_probs))
    ens_after = before.combine({n: after.calibrated(n, p) for n, p in member_probs.items()})
    report = {
        "file": labelled.name, "sha256": mf.sha256(labelled.read_bytes()), "rows": len(labels),
        "members": {n: {"temperature": fitted[n],
                        "nll_before": negative_log_likelihood(before.decision.calibrated(n, p), labels),
                        "nll_after": negative_log_likelihood(after.calibrated(n, p), labels)}
                    for n, p in member_probs.items()},
        "ensemble_nll_before": negative_log_likelihood(ens_before, labels),
        "ensemble_nll_after": negative_log_likelihood(ens_after, labels),
        "ensemble_ece_before": expected_calibration_error(ens_before, labels),
        "ensemble_ece_after": expected_calibration_error(ens_after, labels),
    }
    log.info("calibration on %d rows of %s: ensemble calibration error (ECE) %.4f -> %.4f, NLL %.4f -> %.4f",
             len(labels), labelled.name, report["ensemble_ece_before"], report["ensemble_ece_after"],
             report["ensemble_nll_before"], report["ensemble_nll_after"])
    for n, m in report["members"].items():
        log.info("  %-10s temperature %.3g, NLL %.4f -> %.4f", n, m["temperature"], m["nll_before"], m["nll_after"])
    if report["ensemble_ece_after"] > report["ensemble_ece_before"]:
        log.warning("calibration: the fitted temperatures lower the ensemble's NLL but raise its top-label "
                    "calibration error; check with more labelled rows, or set temperatures in ensemble.json.")
    return Decision(fitted, loaded.plan.decision.min_confidence, report)


@one_thread()  # the same inputs give byte-identical files whatever the thread count
def build(models_dir: Path, out: Path, only: list[str] | None = None, parity_data: Path | None = None,
          calibrate_on: Path | None = None, progress: Progress = log.info,
          precision: Precision = Precision()) -> BuildResult:
    plan = make_plan(models_dir, only)
    for line in plan.describe():
        log.info(line)
    loaded = load_plan(plan, progress)
    if calibrate_on is not None:
        progress(f"calibrating temperatures on {calibrate_on.name}")
        plan.decision = calibrate(loaded, calibrate_on)
    progress("fusing the ensemble graph")
    ensemble = build_ensemble_graph(loaded.members, loaded.scalers, len(loaded.feature_names), plan.classes,
                                    plan.decision, loaded.stacker.onnx_model if loaded.stacker else None)
    member_bytes = {m.source.name: m.onnx_model.SerializeToString() for m in loaded.members}
    ensemble_bytes = ensemble.SerializeToString()
    recorded = read_features_file(parity_data, loaded.feature_names) if parity_data else None
    report = run_parity(loaded, member_bytes, ensemble_bytes, recorded, progress)
    _require(report, out)  # the float32 export is exact first, whatever precision ships
    quantized: list[str] = []
    if precision.lowered:
        progress(f"lowering the large Linear weights to {precision.weights}")
        ensemble, quantized = lower(ensemble, precision)
        ensemble_bytes = ensemble.SerializeToString()
        report = merged(report, run_parity(loaded, {}, ensemble_bytes, recorded, progress, precision))
        _require(report, out)

    files = {f"members/{name}.onnx": data for name, data in member_bytes.items()}
    files["ensemble.onnx"] = ensemble_bytes
    files["parity.json"] = mf.dumps(report)
    files["README.md"] = mf.ARTIFACTS_README.read_bytes()
    stacker = loaded.stacker
    manifest = {
        "schema_version": mf.SCHEMA_VERSION,
        "feature_names": loaded.feature_names,
        "classes": plan.classes,
        "combine": {"method": "weighted"} if stacker is None else
                   {"method": "stacking", "source": mf.file_record(stacker.file)},
        "decision": plan.decision.record(),
        "precision": precision.record(quantized),
        "members": {m.source.name: {
            "kind": m.source.kind,
            "weight": m.source.weight,
            "hyperparameters": m.hyperparameters,
            "source": mf.file_record(m.source.file),
            "metadata": mf.file_record(m.source.metadata) if m.source.metadata else None,
            "scaler": mf.file_record(m.source.scaler) if m.source.scaler else None,
            "onnx": {"file": f"members/{m.source.name}.onnx", "sha256": mf.sha256(member_bytes[m.source.name])},
        } for m in loaded.members},
        "ensemble": {"file": "ensemble.onnx", "input": ENSEMBLE_INPUT, "outputs": list(ENSEMBLE_OUTPUTS),
                     "members": [m.source.name for m in loaded.members]},
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in ensemble.opset_import},  # what it needs
        "libraries": mf.library_versions(),
        "parity": summary(report),
        "files": {rel: mf.sha256(data) for rel, data in sorted(files.items())},
    }
    files["manifest.json"] = mf.dumps(manifest)
    progress(f"writing {out}")
    mf.write_atomically(out, files)
    log.info("wrote %s (%d files)", out, len(files))
    return BuildResult(plan, manifest, report)
