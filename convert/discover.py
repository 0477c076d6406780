"""A models folder (or its ensemble.json) -> a Plan: which file, metadata, scaler and weight per member.

Without ensemble.json: the newest file per kind by its `vYYYYMMDD_HHMMSS_vN` stamp, `<stem>_meta.json`
beside it, the newest scaler shared by all, and the service's weights. ensemble.json says everything
discovery cannot: other files, weights, a scaler per member or none, the class names (any K >= 2, by class
index; discovery assumes SELL, HOLD, BUY), a stacking combiner and the decision policy.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batch.columns import output_column_clashes
from runtime.contract import MODEL_STAMP, STACKER
from runtime.errors import shortened, shortened_names

from .decision import Decision, parse_decision
from .errors import MetadataError, ModelFileError, PlanError
from .loaders import check_regular, load_json
from .members import MemberSource, get_kind, known_kinds, service_weights
from .members.trees import OPTIONS, parse_options, recorded_options

SERVICE_WEIGHTS = service_weights()  # each kind declares its own default weight (`service_weight`), if any
CLASSES = ["SELL", "HOLD", "BUY"]
SCALER_SUFFIXES = (".pkl", ".joblib", ".json")
MEMBER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\Z")
STAMPED = MODEL_STAMP


@dataclass
class Plan:
    models_dir: Path
    members: list[MemberSource]
    classes: list[str]
    combine: dict[str, Any]                       # {"method": "weighted"} or {"method": "stacking", "file": Path}
    feature_names: list[str] | None = None        # from ensemble.json; otherwise read from the model files
    notes: list[str] = field(default_factory=list)
    decision: Decision = field(default_factory=Decision)

    def describe(self) -> list[str]:
        lines = [f"plan for {self.models_dir} ({self.combine['method']} combine, classes {', '.join(self.classes)}):"]
        for m in self.members:
            meta = m.metadata.name if m.metadata else "no metadata"
            scaler = m.scaler.name if m.scaler else "raw features"
            # How the service called a tree (ensemble.json's tree options); a torch kind's own entry fields
            # (module, init, code) are printed with its hyperparameters.
            options = "".join(f"; {k} {v:g}" for k, v in sorted(m.options.items()) if k in OPTIONS)
            lines.append(f"  {m.name:<10} {m.kind:<9} weight {m.weight:.4g}  {m.file.name}  "
                         f"[{meta}; {scaler}{options}]")
        if self.combine["method"] == "stacking":
            lines.append(f"  stacker    {self.combine['file'].name}")
        return lines + [f"  note: {n}" for n in self.notes]


def plan_from_manifest(manifest: dict[str, Any], models: Path) -> Plan:
    """The plan a (verified) manifest was built from, its files named under `models`: what `verify`,
    `bench` and the backfill benchmark rebuild the frameworks' predictions from."""
    def path(record: dict[str, str] | None) -> Path | None:
        return models / record["file"] if record else None

    def options(name: str, m: dict[str, Any]) -> dict[str, Any]:  # a kind's own entry fields, from its record
        kind = get_kind(m["kind"])
        if not kind.entry_keys or kind.parse_entry is None:
            return {}
        entry = {k: v for k, v in m["hyperparameters"].items() if k in kind.entry_keys}
        return {**kind.parse_entry(entry, models, f"manifest.json: members.{name}.hyperparameters"),
                "n_features": len(manifest["feature_names"])}

    members = [MemberSource(name, m["kind"], models / m["source"]["file"], path(m.get("metadata")),
                            path(m.get("scaler")), m["weight"],
                            {**recorded_options(m["hyperparameters"]), **options(name, m)})
               for name, m in manifest["members"].items()]
    members = [next(m for m in members if m.name == name) for name in manifest["ensemble"]["members"]]
    combine = manifest["combine"]
    policy = manifest.get("decision") or {}
    return Plan(models, members, list(manifest["classes"]),
                {"method": "stacking", "file": path(combine["source"])} if combine["method"] == "stacking"
                else {"method": "weighted"},
                list(manifest["feature_names"]), ["from manifest.json"],
                Decision(policy.get("temperature", {}), policy.get("min_confidence", {}), policy.get("calibration"),
                         policy.get("fallback", "HOLD")))


def _stamped_files(models_dir: Path) -> dict[str, list[tuple[tuple[str, str, int], Path]]]:
    found: dict[str, list[tuple[tuple[str, str, int], Path]]] = {}
    for path in sorted(models_dir.iterdir()):
        m = STAMPED.match(path.name)
        if m and not path.stem.endswith("_meta"):
            found.setdefault(m["kind"], []).append(((m["date"], m["time"], int(m["n"])), path))
    return found


def _newest(candidates: list[tuple[tuple[str, str, int], Path]], suffixes: tuple[str, ...], kind: str,
            models_dir: Path) -> Path:
    usable = [(stamp, p) for stamp, p in candidates if p.suffix in suffixes]
    if not usable:
        raise PlanError(f"{models_dir}: no {kind} file ({kind}_vYYYYMMDD_HHMMSS_vN with one of "
                        f"{', '.join(suffixes)}); add one, or leave the kind out with --only.")
    newest = max(stamp for stamp, _ in usable)
    tied = [p for stamp, p in usable if stamp == newest]
    if len(tied) > 1:
        raise PlanError(f"{models_dir}: {', '.join(p.name for p in tied)} share the newest {kind} stamp; remove "
                        f"one, or name the file in ensemble.json.")
    return tied[0]


def _normalized(members: list[MemberSource], notes: list[str]) -> list[MemberSource]:
    total = sum(m.weight for m in members)
    if not math.isfinite(total):  # 1e308 + 1e308: every weight would become 0 and every prediction SELL
        raise MetadataError(f"member weights {[m.weight for m in members]} sum to {total}; give weights whose "
                            f"sum is a finite number (only their ratios matter).")
    # The graph holds the weights in float32: a ratio that is 0 there drops the member while the manifest
    # reports a weight (5e-324 beside 1 is not 0 in float64).
    degenerate = [m.name for m in members if float(np.float32(m.weight / total)) == 0.0]
    if degenerate:
        raise MetadataError(f"member(s) {degenerate} get weight 0 once the weights are normalized and stored in "
                            f"float32 (their weight is below 1e-45 of the total); raise it or leave the member out.")
    if abs(total - 1.0) > 1e-12:
        notes.append(f"weights sum to {total:.6g}; normalized to sum to 1")
        members = [replace(m, weight=m.weight / total) for m in members]
    return members


def discover(models_dir: Path, only: list[str] | None = None) -> Plan:
    """The plan for a folder without ensemble.json."""
    found = _stamped_files(models_dir)
    kinds = only or list(SERVICE_WEIGHTS)
    for kind in kinds:
        if get_kind(kind).entry_keys:  # get_kind names the known kinds when asked for an unknown one
            raise PlanError(f"{models_dir}: kind '{kind}' is declared in ensemble.json only, with the fields "
                            f"{list(get_kind(kind).entry_keys)}; discovery never imports code.")
    scaler = _newest(found.get("scaler", []), SCALER_SUFFIXES, "scaler", models_dir)
    members = []
    for kind in kinds:
        file = _newest(found.get(kind, []), get_kind(kind).suffixes, kind, models_dir)
        meta = file.with_name(f"{file.stem}_meta.json")
        members.append(MemberSource(kind, kind, file, meta if meta.exists() or meta.is_symlink() else None, scaler,
                                    SERVICE_WEIGHTS.get(kind, 1.0)))
    notes = [f"newest stamp per kind; scaler {scaler.name} shared by all members; the service's weights"]
    return Plan(models_dir, _normalized(members, notes), list(CLASSES), {"method": "weighted"}, notes=notes)


def _check_keys(obj: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MetadataError(f"{where} must be an object.")
    unknown, missing = sorted(set(obj) - allowed), sorted(required - set(obj))
    if unknown:
        raise MetadataError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}.")
    if missing:
        raise MetadataError(f"{where}: missing field(s) {missing}.")
    return obj


def _existing(models_dir: Path, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise MetadataError(f"{where} must be a file name.")
    # The manifest records a source by its name alone and `verify` looks for it in the models folder: a path
    # elsewhere ('../x', '/abs/x', 'sub/x') would build a folder that can never be verified.
    if name != Path(name).name or name in (".", "..") or "\0" in name:
        raise MetadataError(f"{where}: {name[:120]!r} must be the name of a file in {models_dir}, not a path; "
                            f"copy or link the file into the models folder.")
    path = models_dir / name
    if not path.exists():
        raise PlanError(f"{where}: file '{name}' not found in {models_dir}.")
    return path  # a folder, FIFO or oversized file is refused by check_plan_files, naming what it is


def from_ensemble_json(models_dir: Path, spec_file: Path) -> Plan:
    spec = _check_keys(load_json(spec_file, "ensemble.json"),
                       {"feature_names", "classes", "members", "combine", "decision"}, {"members"}, str(spec_file))
    classes = spec.get("classes", CLASSES)
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise MetadataError(f"{spec_file}: field 'classes' must list at least two distinct class names, by class "
                            f"index (column i of every member is class i), got {classes!r}.")
    check_text(classes, f"{spec_file}: field 'classes'")
    names = spec.get("feature_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MetadataError(f"{spec_file}: field 'feature_names' must be a list of strings.")
    if names is not None:
        check_text(names, f"{spec_file}: field 'feature_names'")
        check_unique_names(names, f"{spec_file}: field 'feature_names'")
    if not isinstance(spec["members"], dict) or not spec["members"]:
        raise MetadataError(f"{spec_file}: field 'members' must name at least one member.")
    members = []
    for name, entry in spec["members"].items():
        if not MEMBER_NAME.match(name):  # it becomes members/<name>.onnx: '../x' would write outside the folder
            raise MetadataError(f"{spec_file}: members: member name {name[:80]!r} must be letters, digits, '_', "
                                f"'-' or '.' (at most 64, not starting with '.'); it names the file "
                                f"members/<name>.onnx.")
        where = f"{spec_file}: members.{name}"
        if isinstance(entry, dict) and "kind" in entry and entry["kind"] not in known_kinds():
            raise MetadataError(f"{where}.kind: unknown kind '{entry['kind']}'; known kinds: "
                                f"{', '.join(known_kinds())}.")
        extra = get_kind(entry["kind"]).entry_keys if isinstance(entry, dict) and "kind" in entry else ()
        _check_keys(entry, {"kind", "file", "metadata", "scaler", "weight", *OPTIONS, *extra}, {"kind", "file"}, where)
        kind = get_kind(entry["kind"])
        options = kind.parse_entry(entry, models_dir, where) if kind.parse_entry else {}
        if names is not None and kind.entry_keys:  # the input width, for a kind whose file cannot tell it
            options["n_features"] = len(names)
        file = _existing(models_dir, entry["file"], f"{where}.file")
        if "metadata" in entry:
            meta = None if entry["metadata"] is None else _existing(models_dir, entry["metadata"], f"{where}.metadata")
        else:
            default = file.with_name(f"{file.stem}_meta.json")
            meta = default if default.exists() else None
        if "scaler" not in entry:
            raise MetadataError(f"{where}: field 'scaler' is required (a file name, or null for raw features).")
        scaler = None if entry["scaler"] is None else _existing(models_dir, entry["scaler"], f"{where}.scaler")
        weight = entry.get("weight", SERVICE_WEIGHTS.get(entry["kind"], 1.0))
        try:
            number = float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool) else math.nan
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number) or number <= 0:
            raise MetadataError(f"{where}.weight must be a finite positive number, got {repr(weight)[:40]}.")
        options.update(parse_options(entry["kind"], {k: v for k, v in entry.items() if k in OPTIONS}, scaler, where))
        members.append(MemberSource(name, entry["kind"], file, meta, scaler, number, options))
    combine = _check_keys(spec.get("combine", {"method": "weighted"}), {"method", "file"}, {"method"},
                          f"{spec_file}: combine")
    notes = [f"from {spec_file.name}"]
    if combine["method"] == "stacking":
        combine = {"method": "stacking",
                   "file": _existing(models_dir, combine.get("file"), f"{spec_file}: combine.file")}
        notes.append("stacking: member weights are not used; the stacker combines the member probabilities")
        # ensemble.onnx names each member's tensors under "NAME/" and the stacker's under "stacker/": a member of
        # that name would define its tensors twice. The other prefixes convert adds ("raw/", "scalerK/",
        # "policy/") name tensors (float32, mean, min_confidence, ...) that the exporters' member graphs do not;
        # were one ever to, build_ensemble_graph refuses the repeated tensor by name.
        if STACKER in spec["members"]:
            raise PlanError(f"{spec_file}: members.{STACKER}: the member name '{STACKER}' is the prefix the "
                            f"stacking combine's graph is embedded under in ensemble.onnx; rename the member "
                            f"(the key in 'members', and in 'decision' if it names it).")
    elif combine != {"method": "weighted"}:
        raise MetadataError(f"{spec_file}: combine must be {{\"method\": \"weighted\"}} or "
                            f"{{\"method\": \"stacking\", \"file\": ...}}, got {combine}.")
    members = _normalized(members, notes)
    decision = parse_decision(spec.get("decision", {}), [m.name for m in members], list(classes), str(spec_file))
    if decision.active:
        notes.append(f"decision policy: temperature {decision.temperature or 'none'}, "
                     f"min_confidence {decision.min_confidence or 'none'}")
    return Plan(models_dir, members, list(classes), combine, names, notes, decision)


def check_text(names: list[str], where: str) -> None:
    """A lone surrogate (a \\ud800 escape in JSON) parses, but no output writer (CSV, JSON lines, Parquet, the
    HTML report) can encode it: a build holding one would load, then crash mid-run."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise MetadataError(f"{where}: {shortened(name)} is not valid Unicode text (a lone surrogate, as from "
                                f"a \\ud800 escape, cannot be written as UTF-8); rename it.") from None


def check_unique_names(names: list[str], where: str) -> None:
    """A feature named twice would feed one input column into two (the other feature never read)."""
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)  # linear: 100,000 names fit 1 MiB
    if repeated:
        raise MetadataError(f"{where} names {repeated} more than once; every feature must appear exactly once.")
    # "é" typed as one character (NFC) or as e + accent (NFD) looks the same to a person and differs to a dict:
    # two such features would take rows keyed by whichever spelling the caller's data has.
    forms: dict[str, str] = {}
    for name in names:
        first = forms.setdefault(unicodedata.normalize("NFC", name), name)
        if first != name:
            raise MetadataError(f"{where} names {shortened(first)} and {shortened(name)}, the same text in two "
                                f"Unicode forms (NFC and NFD); name each feature once, in one form.")


def check_plan_files(plan: Plan) -> None:
    """Every file the build will read is a regular file within its size limit, before any is opened."""
    for m in plan.members:
        check_regular(m.file, "model", f"{m.kind} model file of member '{m.name}'")
        if m.metadata is not None:
            check_regular(m.metadata, "json", f"metadata of member '{m.name}'", MetadataError)
        if m.scaler is not None:
            json_scaler = m.scaler.suffix == ".json"
            check_regular(m.scaler, "json" if json_scaler else "model", "scaler",
                          MetadataError if json_scaler else ModelFileError)
    if plan.combine["method"] == "stacking":
        check_regular(plan.combine["file"], "model", "stacker")


def make_plan(models_dir: Path, only: list[str] | None = None) -> Plan:
    if not models_dir.is_dir():
        raise PlanError(f"{models_dir}: not a folder. Pass the models folder the training scripts write.")
    spec_file = models_dir / "ensemble.json"
    if spec_file.exists() or spec_file.is_symlink():
        if only:
            raise PlanError(f"{spec_file} names the members; --only applies to discovery only.")
        plan = from_ensemble_json(models_dir, spec_file)
    else:
        plan = discover(models_dir, only)
    # Checked here, not at load only: a build is never written that the runtime would refuse.
    if clash := output_column_clashes(plan.classes, [m.name for m in plan.members]):
        raise PlanError(f"{spec_file if spec_file.exists() else models_dir}: classes {shortened_names(plan.classes)} "
                        f"with members {shortened_names([m.name for m in plan.members])} name the output column(s) "
                        f"{shortened_names(clash)} more than once (predict --format csv writes 'symbol', 'action', "
                        f"'confidence', CLASS and MEMBER_CLASS; score writes 'action', 'confidence', p_CLASS and "
                        f"p_MEMBER_CLASS); rename a class or a member.")
    check_plan_files(plan)
    return plan
