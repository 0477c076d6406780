"""The artifact contract, defined once: what `convert` writes and `runtime` reads.

Schema versions, operator sets, the IR version and every tensor name live here; the build imports them
from here (the build already imports the runtime, never the other way). The manifest is a tree of typed
dataclasses: `convert/build.py` constructs a `Manifest`, `runtime/artifacts.py` parses manifest.json back
into one with `parse_manifest`, which type-checks every nested field and names the first bad one by its
path (`members.nhits.weight`). Unknown fields are kept in the raw JSON and covered by the manifest digest
(see `manifest_digest`), so a newer build's extra field is bound to the graph without this module knowing it.

Standard library only: `import runtime` stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import FieldError as FieldError  # defined in errors.py; importable from here as before
from .errors import shortened, shortened_names

SCHEMA_VERSION = 1                 # what this version writes
SCHEMA_VERSIONS = (1,)             # what this version reads
# The newest this runtime's onnxruntime floor (1.17) runs; com.microsoft holds MatMulNBits, which only an
# int8 build uses (and which needs the onnxruntime its manifest names under precision.min_onnxruntime).
OPSET = 17                         # ai.onnx
ML_OPSET = 3                       # ai.onnx.ml (TreeEnsembleClassifier)
OPSETS = {"ai.onnx": OPSET, "ai.onnx.ml": ML_OPSET, "com.microsoft": 1}
IR_VERSION = 8                     # the newest IR every onnxruntime >= 1.17 reads; opset 17 needs 8

# ensemble.onnx
ENSEMBLE_FILE = "ensemble.onnx"
ENSEMBLE_INPUT = "features"        # float64 [N, F]
PROBABILITIES = "probabilities"    # float32 [N, C]
LABEL = "label"                    # int64 [N], after the decision policy
CONFIDENCE = "confidence"          # float32 [N]
MEMBER_PROBABILITIES = "member_probabilities"  # float32 [N, M, C]
ENSEMBLE_OUTPUTS = (PROBABILITIES, LABEL, CONFIDENCE, MEMBER_PROBABILITIES)
# members/NAME.onnx
MEMBER_INPUT = "input"             # float32 [N, F], already scaled (float64 for a member that compares in double)
MEMBER_OUTPUT = PROBABILITIES      # float32 [N, C]
BATCH_AXIS = "N"

# ensemble.onnx after the members, as convert/graph.py writes it and convert/verify_graph.py reads it back
# back at load. Each member's nodes and tensors are named under "NAME/" (`scoped`), the stacker's under "stacker/".
MEMBER_FLAT = "member_flat"        # Concat(axis=1) of the members' outputs: float32 [N, M*C]
MEMBER_SHAPE = "member_shape"      # int64 [-1, M, C]: member_flat reshaped into member_probabilities
WEIGHTS = "weights"                # float32 [M*C, C], the weighted combine: member i's block is its weight times I
STACKER = "stacker"                # the stacking combine's prefix: probabilities = Identity(stacker/probabilities)
AXIS1 = "axis1"                    # int64 [1] holding 1: the decision policy's Unsqueeze/Squeeze axes
# A member's temperature t: NAME/calibrated = Softmax(axis=1)(Div(NAME/log_p = Log(NAME/probabilities),
# NAME/temperature)), t a float32 scalar; a member without one (t = 1) feeds its probabilities as they are.
TEMPERATURE, LOG_P, COOLED, CALIBRATED = "temperature", "log_p", "cooled", "calibrated"
# What convert writes as a temperature (ensemble.json is held to it, --calibrate fits within 0.05 to 20);
# beyond it log p / t overflows float32 or erases the member.
TEMPERATURE_LIMITS = (0.01, 100.0)
# The minimum-confidence policy's constants (decision.min_confidence and decision.fallback, see `policy_values`).
POLICY_MIN_CONFIDENCE = "policy/min_confidence"  # float32 [C]: each class's minimum, 0 for the fallback
POLICY_FALLBACK = "policy/fallback"              # int64 scalar: the fallback's class index
POLICY_FALLBACK_MIN = "policy/fallback_min"      # float32 scalar: the fallback's own minimum
POLICY_NOT_FALLBACK = "policy/not_fallback"      # float32 [C]: -2 on the fallback's column, 0 elsewhere

# The features each member reads: per distinct scaler file PREFIX/float32 = Cast(to float32)(Div(Sub(features,
# PREFIX/mean), PREFIX/scale)) in float64 (Sub or Div left out when the scaler has no mean or no scale); for the
# members whose `scaler` is null RAW/float32 = Cast(features). A member that reads float64 (a LightGBM, a
# HistGradientBoosting, a LogisticRegression) reads PREFIX/float64 = Identity of the same float64 tensor, never
# cast. Each is written only when a member reads it. PREFIX is `scaler_prefixes`'s.
SCALER, RAW = "scaler", "raw"
SCALED = "float32"                 # the scaler's output, an Identity of which is the member's `NAME/input`
SCALED64 = "float64"               # the same in float64, for the members that read float64
MEMBER_DTYPES = {"float32": SCALED, "float64": SCALED64}  # manifest members.NAME.input_dtype -> the tensor it reads
SCALER_MEAN, SCALER_SCALE = "mean", "scale"  # float64 [F] initializers
SCALER_SUB, SCALER_DIV = "sub", "div"        # the Sub's and the Div's outputs

NodeSpec = tuple[str, tuple[str, ...], str, dict[str, Any]]  # op (default domain), inputs, output, attributes


def scoped(prefix: str, name: str) -> str:
    """A member's (or the stacker's) tensor in ensemble.onnx: convert embeds each graph under its name."""
    return f"{prefix}/{name}"


def scaler_prefixes(scalers: list[Any]) -> list[str]:
    """Each member's scaler prefix, given each member's scaler (any hashable key; None for raw features) in
    `ensemble.members` order: "scaler0", "scaler1", ... numbered by first appearance, the raw features taking a
    number too though named "raw" (convert/graph.py numbers them so; the load requires each member to read its
    own)."""
    numbered: dict[Any, str] = {}
    for key in scalers:
        if key not in numbered:
            numbered[key] = f"{SCALER}{len(numbered)}" if key is not None else RAW
    return [numbered[key] for key in scalers]


def decision_nodes(policy: bool) -> list[NodeSpec]:
    """The nodes that compute `label` and `confidence` from `probabilities`: argmax and max, or with a minimum
    confidence (`policy`) the rule manifest.json's `decision` states (see docs/artifacts.md). convert builds
    exactly these; the load compares the graph's with them."""
    if not policy:
        return [("ArgMax", (PROBABILITIES,), LABEL, {"axis": 1, "keepdims": 0}),
                ("ReduceMax", (PROBABILITIES,), CONFIDENCE, {"axes": (1,), "keepdims": 0})]

    def probability_of(label: str, out: str) -> list[NodeSpec]:
        return [("Unsqueeze", (label, AXIS1), f"{out}_2d", {}),
                ("GatherElements", (PROBABILITIES, f"{out}_2d"), f"{out}_p2d", {"axis": 1}),
                ("Squeeze", (f"{out}_p2d", AXIS1), out, {})]

    return [
        ("ArgMax", (PROBABILITIES,), "policy/top", {"axis": 1, "keepdims": 0}),
        *probability_of("policy/top", "policy/top_p"),
        # 1. the fallback on top but under its own minimum: the most probable other class instead
        ("Add", (PROBABILITIES, POLICY_NOT_FALLBACK), "policy/others", {}),
        ("ArgMax", ("policy/others",), "policy/other", {"axis": 1, "keepdims": 0}),
        ("Equal", ("policy/top", POLICY_FALLBACK), "policy/top_is_fallback", {}),
        ("Less", ("policy/top_p", POLICY_FALLBACK_MIN), "policy/fallback_unsure", {}),
        ("And", ("policy/top_is_fallback", "policy/fallback_unsure"), "policy/leave_fallback", {}),
        ("Where", ("policy/leave_fallback", "policy/other", "policy/top"), "policy/candidate", {}),
        # 2. an action under its minimum: the fallback
        *probability_of("policy/candidate", "policy/candidate_p"),
        ("Gather", (POLICY_MIN_CONFIDENCE, "policy/candidate"), "policy/minimum", {"axis": 0}),
        ("Less", ("policy/candidate_p", "policy/minimum"), "policy/unsure", {}),
        ("Where", ("policy/unsure", POLICY_FALLBACK, "policy/candidate"), LABEL, {}),
        *probability_of(LABEL, CONFIDENCE),
    ]


def policy_values(classes: list[str], min_confidence: dict[str, float],
                  fallback: str) -> dict[str, tuple[str, float | int | list[float]]]:
    """The policy's constants (name -> (numpy dtype, value)) for these classes: what convert stores and the
    load compares. Probabilities are <= 1: less 2 on the fallback's column, ArgMax finds the most probable
    other class."""
    index = classes.index(fallback)
    return {POLICY_MIN_CONFIDENCE: ("float32", [0.0 if c == fallback else min_confidence.get(c, 0.0) for c in classes]),
            POLICY_FALLBACK: ("int64", index),
            POLICY_FALLBACK_MIN: ("float32", min_confidence.get(fallback, 0.0)),
            POLICY_NOT_FALLBACK: ("float32", [-2.0 * (i == index) for i in range(len(classes))])}

COMBINE_METHODS = ("weighted", "stacking")  # combine.method: the weighted sum, or a stacker over the members

MANIFEST_FILE = "manifest.json"
# A signed build's signature, the one file a folder may hold that its manifest does not list (it cannot list its
# own signature): model.sig, an OpenSSF model-signing bundle (the name that standard's tool writes and ignores),
# or manifest.sig, the format of the releases before it (loaded for one more release, with a warning).
BUNDLE_FILE = "model.sig"
SIGNATURE_FILE = "manifest.sig"
# A models folder (what `convert` reads): an ensemble.json, or files named `<kind>_vYYYYMMDD_HHMMSS_vN.<ext>`.
MODELS_SPEC_FILE = "ensemble.json"
MODEL_STAMP = re.compile(r"^(?P<kind>[a-z0-9]+)_v(?P<date>\d{8})_(?P<time>\d{6})_v(?P<n>\d+)(?P<ext>\.\w+)$")
# ensemble.onnx metadata_props: the manifest (without `files`) the graph was built for, and its digest.
META_MANIFEST = "ensemble_onnx.manifest"
META_DIGEST = "ensemble_onnx.manifest_digest"


@dataclass(frozen=True)
class FileRecord:
    file: str
    sha256: str


@dataclass(frozen=True)
class Combine:
    method: str                               # one of COMBINE_METHODS
    source: FileRecord | None = None          # the stacker's file, for "stacking"


@dataclass(frozen=True)
class DecisionRecord:
    temperature: dict[str, float] = field(default_factory=dict)     # member name -> t
    min_confidence: dict[str, float] = field(default_factory=dict)  # class name -> minimum probability
    fallback: str | None = None                                     # the class an unsure row becomes
    calibration: dict[str, Any] | None = None


@dataclass(frozen=True)
class PrecisionRecord:
    weights: str = "fp32"
    scheme: str | None = None
    min_agreement: float | None = None
    min_onnxruntime: str | None = None
    quantized_nodes: list[str] | None = None
    build_host: dict[str, Any] | None = None   # the CPU that built and gated it: int8 pays only with VNNI/AMX


@dataclass(frozen=True)
class MemberRecord:
    kind: str
    weight: float
    hyperparameters: dict[str, Any]
    source: FileRecord
    onnx: FileRecord
    metadata: FileRecord | None = None
    scaler: FileRecord | None = None
    # A `torch` member: the training code the build imported (path in the models folder, sha256), sorted by
    # path; absent for other kinds and in folders built before it was recorded.
    code: list[FileRecord] | None = None
    # What members/NAME.onnx takes and ensemble.onnx feeds it (`MEMBER_DTYPES`): its scaler's float32 output, or
    # its float64 one for a member whose framework compares the float64 row in double. Written only for float64
    # (absent, as in folders built before it existed: float32).
    input_dtype: str = "float32"


@dataclass(frozen=True)
class EnsembleRecord:
    file: str
    input: str
    outputs: list[str]
    members: list[str]                        # member order in member_probabilities


@dataclass(frozen=True)
class DomainRecord:
    """The inputs the parity gate proved the build on, per feature in `feature_names` order: the finite range
    [lo, hi] (edges included), and whether NaN, a missing value, is taken (every member defines what missing
    means). `nan_refused_by`: the members that define no missing value, named when a NaN is refused."""

    lo: list[float]
    hi: list[float]
    nan: list[bool]
    nan_refused_by: list[str]


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    feature_names: list[str]
    classes: list[str]
    combine: Combine
    members: dict[str, MemberRecord]
    ensemble: EnsembleRecord
    opsets: dict[str, int]
    files: dict[str, str]                     # relative path -> sha256 of every other file
    decision: DecisionRecord | None = None    # absent in folders built before it existed
    precision: PrecisionRecord | None = None  # absent = fp32
    libraries: dict[str, str] | None = None
    parity: dict[str, Any] | None = None
    domain: DomainRecord | None = None        # absent in folders built before it existed: no range is checked

    def to_json(self) -> dict[str, Any]:
        """The JSON object manifest.json holds: optional precision fields left out when unset."""
        out = dataclasses.asdict(self)
        if out["precision"] is not None:
            out["precision"] = {k: v for k, v in out["precision"].items() if v is not None}
        if out["domain"] is None:  # an older build's manifest has no such key, and its digest none either
            del out["domain"]
        for member in out["members"].values():  # keys written only where they say something: code for a torch
            if member["code"] is None:              # member, input_dtype where it is not the default (float32)
                del member["code"]
            if member["input_dtype"] == "float32":
                del member["input_dtype"]
        return out


def _type_name(tp: Any) -> str:
    # float never gets here (_check words its own message); whatever does passed isinstance, so it is a class.
    return str({str: "a string", int: "an integer", bool: "true or false"}.get(tp, tp.__name__))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluates the annotations: once per class, not once per load


def _check(value: Any, tp: Any, path: str) -> Any:
    """`value` as type `tp` (dataclasses built from their objects), or FieldError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _check(value, inner, path)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise FieldError(path, f"must be an object, got {type(value).__name__}")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            where = f"{path}.{f.name}" if path else f.name
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise FieldError(where, "is missing")
                continue
            kwargs[f.name] = _check(value[f.name], hints[f.name], where)
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise FieldError(path, f"must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"must be an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: _check(v, item, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(path, f"must be a number, got {shortened(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer past float's range
            raise FieldError(path, f"must be a finite number, got an integer of {len(str(value))} digits") from None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise FieldError(path, f"must be {_type_name(tp)}, got {shortened(value)}")
    return value


def parse_manifest(obj: Any) -> Manifest:
    """A typed Manifest from manifest.json's object, or FieldError naming the first bad field."""
    if not isinstance(obj, dict):
        raise FieldError("(top level)", f"must be an object, got {type(obj).__name__}")
    if "schema_version" in obj and obj["schema_version"] not in SCHEMA_VERSIONS:
        raise FieldError("schema_version", f"is {shortened(obj['schema_version'])}, not one this runtime reads "
                                           f"({SCHEMA_VERSIONS}); upgrade ensemble-onnx or rebuild with this version")
    manifest: Manifest = _check(obj, Manifest, "")
    _check_consistent(manifest)
    return manifest


def float32(value: float) -> float:
    """The float32 a value is stored as in the graph (standard library: `import runtime` stays light); inf past
    float32's range."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:  # beyond float32's largest finite value (struct does not round these to inf)
        return math.copysign(math.inf, value)


def _is_text(name: str) -> bool:
    """Whether `name` can be written as UTF-8 (no lone surrogate)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_consistent(m: Manifest) -> None:
    """What types cannot say: names that must refer to each other, and values only in the range convert writes
    (a manifest re-bound into the graph passes the digest whatever it holds)."""
    for what, names in (("feature_names", m.feature_names), ("classes", m.classes)):
        if not names or len(set(names)) != len(names):
            raise FieldError(what, "must be a non-empty list of distinct names")
    if sorted(m.ensemble.members) != sorted(m.members) or len(set(m.ensemble.members)) != len(m.members):
        raise FieldError("ensemble.members", f"must name each of members {shortened_names(sorted(m.members), 10)} once")
    # A lone surrogate (a \ud800 escape in JSON) parses, but no output writer (CSV, JSON lines, Parquet, the
    # HTML report) can encode it: refused here rather than as a UnicodeEncodeError mid-run.
    for what, names in (("feature_names", m.feature_names), ("classes", m.classes),
                        ("ensemble.members", m.ensemble.members)):
        for name in names:
            if not _is_text(name):
                raise FieldError(what, f"holds {shortened(name)}, which is not valid Unicode text (a lone "
                                       f"surrogate cannot be written as UTF-8)")
    if m.decision is not None:
        for name in m.decision.min_confidence:
            if name not in m.classes:
                raise FieldError(f"decision.min_confidence.{name}", f"names no class of {m.classes}")
        if m.decision.fallback is not None and m.decision.fallback not in m.classes:
            raise FieldError("decision.fallback", f"is {shortened(m.decision.fallback)}, not a class of {m.classes}")
        for name, t in m.decision.temperature.items():
            if name not in m.members:
                raise FieldError(f"decision.temperature.{name}", "names no member")
            # The graph divides log p by t: 0 would make every probability NaN, a negative one invert the
            # member's ranking. NaN and Infinity cannot come from manifest.json (no digest takes them), but
            # a Manifest built in code must not pass either.
            # The range convert writes (ensemble.json is held to it): every float there is a normal float32,
            # so 1e-50 (0 in the graph's float32) is refused here rather than failing every row.
            low, high = TEMPERATURE_LIMITS
            if not low <= t <= high:  # False for NaN too
                raise FieldError(f"decision.temperature.{name}", f"must be a number from {low} to {high}, "
                                                                 f"got {t!r}")
        for name, minimum in m.decision.min_confidence.items():
            if not 0.0 <= minimum <= 1.0:  # False for NaN too
                raise FieldError(f"decision.min_confidence.{name}", f"must be a probability from 0 to 1, "
                                                                    f"got {minimum!r}")
    # Only what the converter writes: a stacker records its file, the weighted sum has none.
    if m.combine.method not in COMBINE_METHODS:
        allowed = " or ".join(map(repr, COMBINE_METHODS))
        raise FieldError("combine.method", f"is {shortened(m.combine.method)}; only {allowed} load")
    if (m.combine.source is None) != (m.combine.method == "weighted"):
        raise FieldError("combine.source", "is missing: a 'stacking' combine names its stacker's file"
                         if m.combine.source is None else "must be null for 'weighted' (only a stacker has a file)")
    # The graph holds each weight in float32: judged there, 1e-50 is 0 and 1e39 infinite.
    for name, member in m.members.items():
        if not (math.isfinite(member.weight) and member.weight >= 0):
            raise FieldError(f"members.{name}.weight", f"must be a finite number from 0 up, got {member.weight!r}")
        stored = float32(member.weight)
        if not math.isfinite(stored) or (member.weight > 0) != (stored > 0):
            raise FieldError(f"members.{name}.weight", f"is {member.weight!r}, which the graph's float32 holds as "
                                                       f"{stored!r}; a weight is 0 or from about 1.4e-45 to 3.4e38")
    if m.combine.method == "weighted" and not any(float32(member.weight) for member in m.members.values()):
        raise FieldError("members", "weigh 0 each: a weighted combine of them would be 0 for every class")
    if m.domain is not None:
        _check_domain(m.domain, m)
    for name, member in m.members.items():
        if member.input_dtype not in MEMBER_DTYPES:  # only what convert writes
            raise FieldError(f"members.{name}.input_dtype", f"is {shortened(member.input_dtype)}, not one of "
                                                            f"{sorted(MEMBER_DTYPES)}")
        if member.code is not None:
            _check_code(member.code, f"members.{name}.code")


SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


def is_code_path(path: str) -> bool:
    """A code file's path as the manifest holds it: relative, "/"-separated, no empty, "." or ".." part, no
    backslash or NUL, valid Unicode text. convert refuses a file it could not record so."""
    return (bool(path) and not path.startswith("/") and "\\" not in path and "\0" not in path
            and all(part not in ("", ".", "..") for part in path.split("/")) and _is_text(path))


def _check_code(files: list[FileRecord], where: str) -> None:
    """What convert writes: at least one file, each a relative path inside the models folder with a sha256,
    sorted by path, none twice."""
    if not files:
        raise FieldError(where, "must list the training code's files (at least the class's module)")
    for i, record in enumerate(files):
        if not is_code_path(record.file):
            raise FieldError(f"{where}[{i}].file", f"must be a relative path inside the models folder, got "
                                                   f"{shortened(record.file)}")
        if not SHA256_HEX.match(record.sha256):
            raise FieldError(f"{where}[{i}].sha256", f"must be 64 lowercase hex digits, got {shortened(record.sha256)}")
    paths = [r.file for r in files]
    if paths != sorted(set(paths)):
        raise FieldError(where, "must be sorted by file, each file once")


def _check_domain(d: DomainRecord, m: Manifest) -> None:
    """One finite [lo, hi] and one NaN flag per feature; refusing members that exist."""
    width = len(m.feature_names)
    for what, values in (("lo", d.lo), ("hi", d.hi), ("nan", d.nan)):
        if len(values) != width:
            raise FieldError(f"domain.{what}", f"must hold one value per feature ({width}), got {len(values)}")
    for j, (lo, hi) in enumerate(zip(d.lo, d.hi, strict=True)):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise FieldError(f"domain.lo[{j}]", f"and domain.hi[{j}] (feature {shortened(m.feature_names[j])}) must "
                                                f"be finite with lo <= hi, got [{lo!r}, {hi!r}]")
    for name in d.nan_refused_by:
        if name not in m.members:
            raise FieldError("domain.nan_refused_by", f"names {shortened(name)}, no member")
    if not all(d.nan) and not d.nan_refused_by:
        raise FieldError("domain.nan_refused_by", "is empty, yet a feature refuses NaN: it must name the members "
                                                  "that define no missing value")


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that digests are taken of: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode()


def bound_part(obj: dict[str, Any]) -> dict[str, Any]:
    """The manifest without `files`: what ensemble.onnx carries (it cannot carry its own sha256)."""
    return {k: v for k, v in obj.items() if k != "files"}


def manifest_digest(obj: dict[str, Any]) -> str:
    """sha256 of the canonical manifest without `files`; the graph's metadata holds it."""
    return hashlib.sha256(canonical(bound_part(obj))).hexdigest()


def build_id(obj: dict[str, Any]) -> str:
    """sha256 of the canonical manifest, `files` included: it names every byte the folder serves."""
    return hashlib.sha256(canonical(obj)).hexdigest()


def first_difference(want: Any, got: Any, path: str = "") -> str | None:
    """The path of the first field where two JSON values differ (`members.nhits.weight`), or None."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            where = f"{path}.{key}" if path else key
            if key not in want or key not in got:
                return where
            found = first_difference(want[key], got[key], where)
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return path or "(top level)"
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    # 1 and 1.0 (or 1 and true) compare equal in Python but not in canonical form: the type decides too.
    return None if type(want) is type(got) and want == got else (path or "(top level)")
