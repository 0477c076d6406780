"""The convert pipeline, start to end: plan -> members -> ensemble graph -> parity gate -> artifacts/.

Nothing is written to the output folder unless every step, the parity gate included, succeeded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as mf
from .discover import Plan, make_plan
from .errors import MetadataError, ParityError
from .graph import ENSEMBLE_INPUT, ENSEMBLE_OUTPUTS, build_ensemble_graph
from .members import CONTRACT, LoadedMember, get_kind
from .parity import check_parity, parity_rows, summary, table
from .scaler import Scaler, load_scaler
from .stacker import Stacker, load_stacker

log = logging.getLogger(__name__)


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


def build(models_dir: Path, out: Path, only: list[str] | None = None, parity_data: Path | None = None) -> BuildResult:
    plan = make_plan(models_dir, only)
    for line in plan.describe():
        log.info(line)
    scalers = {m.scaler: load_scaler(m.scaler) for m in plan.members if m.scaler is not None}
    members = []
    for source in plan.members:
        log.info("rebuilding and exporting %s (%s) from %s", source.name, source.kind, source.file.name)
        member = get_kind(source.kind).load(source)
        for note in member.notes:
            log.info("  %s: %s", source.name, note)
        members.append(member)
    feature_names = resolve_feature_names(plan, members, scalers)
    n_classes = len(plan.classes)
    check_widths(members, scalers, len(feature_names), n_classes)

    stacker: Stacker | None = None
    if plan.combine["method"] == "stacking":
        stacker = load_stacker(plan.combine["file"], len(members) * n_classes, n_classes)
    ensemble = build_ensemble_graph(members, scalers, len(feature_names), n_classes,
                                    stacker.onnx_model if stacker else None)

    def combine_reference(refs: list[np.ndarray]) -> np.ndarray:
        if stacker is not None:
            return stacker.reference(np.concatenate(refs, axis=1))
        return sum(m.source.weight * r for m, r in zip(members, refs))

    member_bytes = {m.source.name: m.onnx_model.SerializeToString() for m in members}
    ensemble_bytes = ensemble.SerializeToString()
    recorded = read_features_file(parity_data, feature_names) if parity_data else None
    rows = parity_rows(members, scalers, len(feature_names), recorded)
    log.info("parity gate: %d rows at batch sizes 1, 7, 512", len(rows.raw))
    report = check_parity(members, scalers, rows, member_bytes, ensemble_bytes, combine_reference)
    for line in table(report):
        log.info(line)
    if not report["passed"]:
        failed = out.parent / f"{out.name}.parity-failed.json"
        failed.write_bytes(mf.dumps(report))
        raise ParityError(f"parity gate failed; {out} left untouched; full report in {failed}:\n  "
                          + "\n  ".join(report["failures"]), report)

    files = {f"members/{name}.onnx": data for name, data in member_bytes.items()}
    files["ensemble.onnx"] = ensemble_bytes
    files["parity.json"] = mf.dumps(report)
    files["README.md"] = mf.ARTIFACTS_README.read_bytes()
    manifest = {
        "schema_version": mf.SCHEMA_VERSION,
        "feature_names": feature_names,
        "classes": plan.classes,
        "combine": {"method": "weighted"} if stacker is None else
                   {"method": "stacking", "source": mf.file_record(stacker.file)},
        "members": {m.source.name: {
            "kind": m.source.kind,
            "weight": m.source.weight,
            "hyperparameters": m.hyperparameters,
            "source": mf.file_record(m.source.file),
            "metadata": mf.file_record(m.source.metadata) if m.source.metadata else None,
            "scaler": mf.file_record(m.source.scaler) if m.source.scaler else None,
            "onnx": {"file": f"members/{m.source.name}.onnx", "sha256": mf.sha256(member_bytes[m.source.name])},
        } for m in members},
        "ensemble": {"file": "ensemble.onnx", "input": ENSEMBLE_INPUT, "outputs": list(ENSEMBLE_OUTPUTS),
                     "members": [m.source.name for m in members]},
        "opsets": CONTRACT.opsets,
        "libraries": mf.library_versions(),
        "parity": summary(report),
        "files": {rel: mf.sha256(data) for rel, data in sorted(files.items())},
    }
    files["manifest.json"] = mf.dumps(manifest)
    mf.write_atomically(out, files)
    log.info("wrote %s (%d files)", out, len(files))
    return BuildResult(plan, manifest, report)
