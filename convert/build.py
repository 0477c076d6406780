"""The convert pipeline, start to end: plan -> members -> [calibration] -> ensemble graph -> parity gate ->
artifacts/.

Nothing is written to the output folder unless every step, the parity gate included, succeeded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime import contract
from runtime.contract import (
    BUNDLE_FILE,
    ENSEMBLE_FILE,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUTS,
    MEMBER_PROBABILITIES,
    PROBABILITIES,
)

from . import manifest as mf
from .decision import Decision, expected_calibration_error, fit_temperatures, negative_log_likelihood
from .discover import Plan, check_text, check_unique_names, make_plan
from .domain import Domain, Probabilities, input_domain
from .errors import MetadataError, ParityError, SigningError, member_step
from .graph import build_ensemble_graph
from .members import LoadedMember, get_kind, input_dtype
from .members.torch_common import one_thread
from .parity import BATCH_SIZES, ParityRows, check_parity, json_ready, merged, parity_rows, summary, table
from .precision import Precision, lower
from .reference import Reference
from .scaler import Scaler, load_scaler
from .stacker import Stacker, load_stacker
from .statistics import STATISTICS_FILE, statistics_bytes
from .verify_graph import check_combiner

log = logging.getLogger(__name__)
Progress = Callable[[str], None]  # told each step as it starts; the CLI draws it, library use logs it


@dataclass
class BuildResult:
    plan: Plan
    manifest: dict[str, Any]
    report: dict[str, Any]
    build_id: str = ""      # contract.build_id(manifest): what a service pins


def resolve_feature_names(plan: Plan, members: list[LoadedMember], scalers: dict[Path, Scaler]) -> list[str]:
    """Every source that names the features must agree, order included; one of them must exist."""
    # (where, names, how that source rewrote names: LightGBM writes spaces as underscores)
    sources: list[tuple[str, list[str], Callable[[str], str] | None]] = []
    if plan.feature_names is not None:
        sources.append(("ensemble.json", plan.feature_names, None))
    sources += [(str(m.source.metadata or m.source.file), m.feature_names, m.feature_names_as)
                for m in members if m.feature_names]
    sources += [(str(s.file), s.feature_names, None) for s in scalers.values() if s.feature_names]
    if not sources:
        raise MetadataError(f"{plan.models_dir}: no file names the features; add \"feature_names\": [...] to a "
                            f"member's _meta.json or to ensemble.json, in training column order.")
    for where, names, _ in sources:
        check_text(list(names), f"{where}: feature_names")
        check_unique_names(list(names), f"{where}: feature_names")
    # The names as given: from a source that kept them, if any.
    first_where, first, _ = next((s for s in sources if s[2] is None), sources[0])
    for where, names, rewrite in sources:
        expected = [rewrite(n) for n in first] if rewrite is not None else list(first)
        if list(names) != expected:
            pos = next((i for i, (a, b) in enumerate(zip(expected, names, strict=False)) if a != b),
                       min(len(expected), len(names)))
            raise MetadataError(f"feature names disagree: {first_where} and {where} differ at position {pos} "
                                f"({first[pos] if pos < len(first) else 'end'!r} vs "
                                f"{names[pos] if pos < len(names) else 'end'!r}); {len(first)} vs {len(names)} names"
                                + (" (LightGBM writes spaces in names as underscores)" if rewrite is not None
                                   else "") + ".")
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


def read_features_file(path: Path, feature_names: list[str], text: str | None = None) -> np.ndarray:
    """Recorded rows (CSV with a header, or JSON lines), validated and aligned as `predict` does; `text`
    when the file was already read."""
    from runtime.errors import InputError
    from runtime.records import read_records, records_to_matrix

    try:
        return records_to_matrix(read_records(read_data_text(path) if text is None else text), feature_names)
    except InputError as exc:
        raise MetadataError(f"{'stdin' if str(path) == '-' else path}: {exc}") from exc


def read_data_text(path: Path) -> str:
    """Recorded rows (--parity-data, --calibrate, verify --data): a regular UTF-8 file within the data limit, or
    stdin for "-" (within the input limit, as predict reads it)."""
    from runtime.errors import InputError
    from runtime.records import decode_input, read_input

    from .loaders import read_checked

    try:
        if str(path) == "-":
            return read_input("-")
        return decode_input(read_checked(path, "data", "recorded rows", MetadataError), str(path))
    except InputError as exc:
        raise MetadataError(str(exc)) from exc


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
    scalers = {}
    for m in plan.members:
        if m.scaler is not None and m.scaler not in scalers:
            with member_step(m.name, m.scaler, "reading its scaler"):
                scalers[m.scaler] = load_scaler(m.scaler)
    members = []
    for source in plan.members:
        progress(f"rebuilding and exporting {source.name} ({source.kind}) from {source.file.name}")
        with member_step(source.name, source.file, "reading and exporting it"):
            member = get_kind(source.kind).load(source)
        for note in member.notes:
            log.info("  %s: %s", source.name, note)
        members.append(member)
    feature_names = resolve_feature_names(plan, members, scalers)
    check_widths(members, scalers, len(feature_names), len(plan.classes))
    stacker = None
    if plan.combine["method"] == "stacking":
        with member_step("stacker", plan.combine["file"], "reading and exporting it"):
            stacker = load_stacker(plan.combine["file"], len(members) * len(plan.classes), len(plan.classes))
    reference = Reference(plan, {m.source.name: m.reference for m in members}, scalers,
                          stacker.model if stacker else None)
    return Loaded(plan, members, scalers, stacker, feature_names, reference)


def run_parity(loaded: Loaded, member_bytes: dict[str, bytes], ensemble_bytes: bytes, recorded: np.ndarray | None,
               progress: Progress = log.info, precision: Precision = Precision(),
               domain: Domain | None = None) -> dict[str, Any]:
    """The gate on rows covering `domain` (by default the one `input_domain` gives these members and rows)."""
    if domain is None:
        domain = domain_of(loaded, recorded, member_bytes, ensemble_bytes, precision)
    rows = parity_rows(loaded.members, loaded.scalers, len(loaded.feature_names), domain, recorded)
    gate = "parity gate" if not precision.lowered else f"agreement gate ({precision.weights} graph)"
    progress(f"{gate}: {len(rows.raw)} rows at batch sizes {', '.join(map(str, BATCH_SIZES))}")
    report = check_parity(loaded.reference, rows, member_bytes, ensemble_bytes, precision)
    report["domain"] = {"sds": domain.sds, "stopped": None if domain.stopped is None else
                        {"sds": domain.stopped[0], "max_abs_diff": domain.stopped[1]}}
    for line in table(report):
        log.info(line)
    return report


def domain_of(loaded: Loaded, recorded: np.ndarray | None, member_bytes: dict[str, bytes] | None = None,
              ensemble_bytes: bytes | None = None, precision: Precision = Precision(),
              widened_by: str = "the recorded parity rows widen the range") -> Domain:
    """The input domain the gate is to prove (`convert.domain`), its rungs tried on the frameworks themselves and,
    given the exported bytes, on those: the domain stops under the first rung where the gate's own checks find
    the export's probabilities off the frameworks'."""
    differs, locate = None, None
    if member_bytes is not None and ensemble_bytes is not None:
        locate = exported_probabilities(loaded.reference, member_bytes)

        def differs(rows: np.ndarray, answered: dict[str, np.ndarray]) -> float | None:
            report = check_parity(loaded.reference, ParityRows(rows), member_bytes, ensemble_bytes, precision,
                                  BATCH_SIZES[-1:], answered, explain=False)
            # Judged on the probabilities: a label or a confidence the policy moves follows them, or is wrong
            # on the first rung too (a policy the graph does not apply), which the gate then fails.
            off = [float(c["max_abs_diff"]) for c in report["checks"]
                   if not c["passed"] and c["output"] in (PROBABILITIES, MEMBER_PROBABILITIES)]
            return max(off) if off else None
    with np.errstate(all="ignore"):  # a rung where a member overflows is what the search looks for
        domain = input_domain(loaded.members, loaded.scalers, len(loaded.feature_names),
                              loaded.reference.raw_member_probabilities, recorded, differs=differs, locate=locate)
    if domain.sds is not None:
        log.info("input domain: the members that compute answer finitely%s to %g standard deviations",
                 "" if differs is None else ", and the export as they do,", domain.sds)
    if domain.widened:
        log.warning("input domain: %s past the %g standard deviations searched; the gate runs rows "
                    "through it and on the members' class boundaries there, and fails where the export differs",
                    widened_by, domain.sds)
    if domain.stopped is not None:
        rung, worst = domain.stopped
        log.info("input domain: not %g standard deviations, where the export's probabilities differ from the "
                 "frameworks' by up to %.3g (float32 rounding of large values, or a computation tracing froze: "
                 "the plan's notes say which); rows past the domain are refused", rung, worst)
    return domain


def exported_probabilities(reference: Reference, member_bytes: dict[str, bytes]) -> Probabilities:
    """Raw rows -> each (named) member's probabilities by its ONNX export, fed as the gate feeds it (its scaler's
    float64 rows, cast to float32 unless it reads float64): where the domain's search looks for class boundaries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # as the gate's: the same rows on any host
    sessions = {name: ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
                for name, data in member_bytes.items()}

    def probabilities(raw: np.ndarray, names: Collection[str] | None = None, /) -> dict[str, np.ndarray]:
        out = {}
        for m in (m for m in reference.plan.members if m.name in sessions and (names is None or m.name in names)):
            spec, x = sessions[m.name].get_inputs()[0], reference.member_input(m.scaler, raw)
            feed = x if spec.type == "tensor(double)" else x.astype(np.float32)
            with member_step(m.name, m.file, "running its ONNX export on the domain's rows"):
                out[m.name] = np.asarray(sessions[m.name].run(None, {spec.name: feed})[0], dtype=np.float64)
        return out
    return probabilities


def _require(report: dict[str, Any], out: Path) -> None:
    if not report["passed"]:
        failed = out.parent / f"{out.name}.parity-failed.json"
        failed.write_bytes(mf.dumps(json_ready(report)))
        raise ParityError(f"parity gate failed; {out} left untouched; full report in {failed}:\n  "
                          + "\n  ".join(report["failures"]), report)


def calibrate(loaded: Loaded, labelled: Path, labelled_text: str | None = None) -> Decision:
    """Fit the members' temperatures on labelled rows (negative log-likelihood of the ensemble); the report
    goes into the manifest: per member t and NLL before/after, the ensemble's NLL and calibration error
    before/after."""
    from runtime.errors import InputError
    from runtime.records import read_records, records_to_matrix

    classes = loaded.plan.classes
    labelled_text = read_data_text(labelled) if labelled_text is None else labelled_text
    try:
        records = read_records(labelled_text)
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
    after = Decision(fitted, loaded.plan.decision.min_confidence, fallback=loaded.plan.decision.fallback)
    ens_before = before.combine(before.calibrated(member_probs))
    ens_after = before.combine({n: after.calibrated(n, p) for n, p in member_probs.items()})
    report: dict[str, Any] = {
        "file": labelled.name, "sha256": mf.sha256(labelled_text.encode()), "rows": len(labels),
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
    return Decision(fitted, loaded.plan.decision.min_confidence, report, loaded.plan.decision.fallback)


def _record(path: Path) -> contract.FileRecord:
    return contract.FileRecord(**mf.file_record(path))


def bind(ensemble: Any, manifest: contract.Manifest) -> bytes:
    """ensemble.onnx's bytes carrying the manifest (less `files`) it is built for, and that object's digest:
    the runtime refuses a manifest.json that disagrees with it in any field."""
    from onnx import helper

    bound = contract.bound_part(manifest.to_json())
    helper.set_model_props(ensemble, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                      contract.META_DIGEST: contract.manifest_digest(bound)})
    data: bytes = ensemble.SerializeToString()
    return data


def _signer(sign_key: Path | None) -> Callable[[dict[str, bytes], str, str], bytes] | None:
    """(files, folder name, build id) -> model.sig's bytes, with the key checked before the (long) build starts."""
    if sign_key is None:
        return None
    from runtime.signing import SignatureError, sign_folder, signing_key

    try:
        signing_key(sign_key)
    except SignatureError as exc:
        raise SigningError(f"--sign-key: {exc}") from None
    return lambda files, name, build: sign_folder(files, name, build, sign_key)


@one_thread()  # the same inputs give byte-identical files whatever the thread count
def build(models_dir: Path, out: Path, only: list[str] | None = None, parity_data: Path | None = None,
          calibrate_on: Path | None = None, progress: Progress = log.info,
          precision: Precision = Precision(), sign_key: Path | None = None,
          reference_data: Path | None = None, force: bool = False) -> BuildResult:
    mf.check_output(out, models_dir, force)  # before any work (and the lock): a refused output costs nothing
    with mf.output_lock(out):  # one convert per output at a time; a killed one's staging cleaned
        return _build(models_dir, out, only, parity_data, calibrate_on, progress, precision, sign_key,
                      reference_data, force)


def _build(models_dir: Path, out: Path, only: list[str] | None, parity_data: Path | None,
           calibrate_on: Path | None, progress: Progress, precision: Precision, sign_key: Path | None,
           reference_data: Path | None, force: bool) -> BuildResult:
    signer = _signer(sign_key)
    plan = make_plan(models_dir, only)
    # Read before any model is loaded: a FIFO, a folder, an oversized or non-UTF-8 file costs nothing.
    parity_text = read_data_text(parity_data) if parity_data is not None else None
    calibrate_text = read_data_text(calibrate_on) if calibrate_on is not None else None
    reference_file = reference_data or calibrate_on or parity_data  # the rows statistics.json bins
    reference_text = (read_data_text(reference_data) if reference_data is not None
                      else calibrate_text if calibrate_on is not None else parity_text)
    for line in plan.describe():
        log.info(line)
    loaded = load_plan(plan, progress)
    if calibrate_on is not None:
        progress(f"calibrating temperatures on {calibrate_on.name}")
        plan.decision = calibrate(loaded, calibrate_on, calibrate_text)
    progress("fusing the ensemble graph")
    ensemble = build_ensemble_graph(loaded.members, loaded.scalers, len(loaded.feature_names), plan.classes,
                                    plan.decision, loaded.stacker.onnx_model if loaded.stacker else None)
    member_bytes = {m.source.name: m.onnx_model.SerializeToString() for m in loaded.members}
    ensemble_bytes = ensemble.SerializeToString()
    recorded = read_features_file(parity_data, loaded.feature_names, parity_text) if parity_data else None
    domain = domain_of(loaded, recorded, member_bytes, ensemble_bytes)  # on the float32 export, whatever ships
    report = run_parity(loaded, member_bytes, ensemble_bytes, recorded, progress, domain=domain)
    _require(report, out)  # the float32 export is exact first, whatever precision ships
    quantized: list[str] = []
    if precision.lowered:
        progress(f"lowering the large Linear weights to {precision.weights}")
        ensemble, quantized = lower(ensemble, precision)
        ensemble_bytes = ensemble.SerializeToString()
        report = merged(report, run_parity(loaded, {}, ensemble_bytes, recorded, progress, precision, domain))
        _require(report, out)

    files = {f"members/{name}.onnx": data for name, data in member_bytes.items()}
    files["parity.json"] = mf.dumps(json_ready(report))
    files["README.md"] = mf.ARTIFACTS_README.read_bytes()
    files[STATISTICS_FILE] = statistics_bytes(loaded.feature_names, [m.source.scaler for m in loaded.members],
                                              loaded.scalers, reference_file, reference_text)
    stacker = loaded.stacker
    typed = contract.Manifest(
        schema_version=contract.SCHEMA_VERSION,
        feature_names=loaded.feature_names,
        classes=list(plan.classes),
        combine=contract.Combine("weighted") if stacker is None else
        contract.Combine("stacking", _record(stacker.file)),
        decision=contract.DecisionRecord(**plan.decision.record()),
        precision=contract.PrecisionRecord(**precision.record(quantized)),
        members={m.source.name: contract.MemberRecord(
            kind=m.source.kind,
            weight=m.source.weight,
            hyperparameters=m.hyperparameters,
            source=_record(m.source.file),
            metadata=_record(m.source.metadata) if m.source.metadata else None,
            scaler=_record(m.source.scaler) if m.source.scaler else None,
            input_dtype=input_dtype(m),
            onnx=contract.FileRecord(f"members/{m.source.name}.onnx", mf.sha256(member_bytes[m.source.name])),
            code=None if m.code is None else [contract.FileRecord(**c) for c in m.code],
        ) for m in loaded.members},
        ensemble=contract.EnsembleRecord(ENSEMBLE_FILE, ENSEMBLE_INPUT, list(ENSEMBLE_OUTPUTS),
                                         [m.source.name for m in loaded.members]),
        opsets={imp.domain or "ai.onnx": imp.version for imp in ensemble.opset_import},  # what it needs
        libraries=mf.library_versions(),
        parity=summary(report),
        files={},
        domain=domain.record(),
    )
    files[ENSEMBLE_FILE] = bind(ensemble, typed)
    # verify's deep check, once, on the bytes about to be written: a graph whose combiner is not what the
    # manifest says replaces no earlier build (the load binds the two but no longer reads the combiner).
    check_combiner(typed, files[ENSEMBLE_FILE], out / ENSEMBLE_FILE, out / contract.MANIFEST_FILE)
    manifest = replace(typed, files={rel: mf.sha256(data) for rel, data in sorted(files.items())}).to_json()
    contract.parse_manifest(manifest)  # the builder holds itself to the loader's contract
    files["manifest.json"] = mf.manifest_bytes(manifest)  # refused here when over the runtime's JSON limit
    if signer is not None:  # over every file written, manifest.json included: the OpenSSF model-signing format
        files[BUNDLE_FILE] = signer(files, Path(os.path.abspath(out)).name, contract.build_id(manifest))
    progress(f"writing {out}")
    mf.write_atomically(out, files, models_dir, force)
    log.info("wrote %s (%d files)", out, len(files))
    return BuildResult(plan, manifest, report, contract.build_id(manifest))
