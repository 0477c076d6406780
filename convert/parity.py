"""The parity gate: every member's ONNX and the fused ensemble against the original frameworks.

Rows: draws from the scaler's statistics; the input domain's edges (`convert.domain`), alone and all at once;
NaN in each feature that takes it; for every tree split, rows whose scaled value, in the dtype the member reads
(float32, or float64 for a member that compares in double), sits on the threshold and one ulp of that dtype
under and over it (for a float64 member behind a scaler, also the two raw values nearest each split on either
side, which the scaler may not land on it exactly); and any recorded features. Only rows inside the domain are
kept: a split at +-inf (LightGBM writes inf for a split that parts NaN from every value) has no row on it, and
a split whose row lies outside the domain is a row the runtime refuses. The report counts what was left out,
and why. References: the frameworks themselves on the float64 rows the service handed them (sklearn scaling
in float64; torch on its one cast to float32; xgboost / lightgbm / scikit-learn / catboost / the stacker).
Each ONNX graph runs at batch sizes other than the export's; every probability must be within tolerance and
every label identical, the decision policy's labels included. All failures are collected and reported together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import CONFIDENCE, ENSEMBLE_INPUT, LABEL, MEMBER_PROBABILITIES, PROBABILITIES

from .domain import Domain
from .errors import member_step
from .members import LoadedMember, input_dtype
from .members.export import CONTRACT
from .precision import Precision
from .reference import Reference
from .scaler import Scaler

BATCH_SIZES = (1, 7, 512)
SINGLE_ROW_SAMPLE = 256   # batch size 1 runs on an even sample of this many rows (one session call a row)
SCALER_ROWS = 256
MAX_NUDGES = 64           # float64 steps tried to land a scaled value exactly on a float32 target


@dataclass
class ParityRows:
    raw: np.ndarray                                  # float64 [R, F]: what the service is handed
    counts: dict[str, int] = field(default_factory=dict)


def _affine(scaler: Scaler | None, column: int) -> tuple[float, float]:
    if scaler is None:
        return 0.0, 1.0
    mean = float(scaler.mean[column]) if scaler.mean is not None else 0.0
    scale = float(scaler.scale[column]) if scaler.scale is not None else 1.0
    return mean, scale


def _raw_values_for(targets: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """float64 raw values x whose scaled value (x - mean) / scale, computed in float64 as the graph does and
    then in the targets' dtype (float32: the graph's cast; float64: as it is), is the target exactly; NaN where
    none was found."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _nudged(targets, mean, scale)


def _nudged(targets: np.ndarray, mean: float, scale: float) -> np.ndarray:
    x = targets.astype(np.float64) * scale + mean
    for _ in range(MAX_NUDGES):
        got = ((x - mean) / scale).astype(targets.dtype)
        off = got != targets
        if not off.any():
            break
        # Step one float64 ulp towards the target; scale > 0, so raw and scaled move the same way.
        x[off] = np.nextafter(x[off], np.where(got[off] < targets[off], np.inf, -np.inf))
    x[((x - mean) / scale).astype(targets.dtype) != targets] = np.nan
    return x


def _boundary_pairs(splits: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """For a member that reads float64 behind a scaler: per split t, the raw x whose scaled value is the
    largest at or under t, and the raw value one ulp over x (scaled over t): the two rows nearest the split
    the runtime can see, where no raw value scales onto t itself. NaN where not found."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = splits * scale + mean
        for _ in range(MAX_NUDGES):
            over = (x - mean) / scale > splits
            short = ~over & ((np.nextafter(x, np.inf) - mean) / scale <= splits)
            if not (over.any() or short.any()):
                break
            x[over] = np.nextafter(x[over], -np.inf)
            x[short] = np.nextafter(x[short], np.inf)
        above = np.nextafter(x, np.inf)
        found = ((x - mean) / scale <= splits) & ((above - mean) / scale > splits)
    return np.concatenate([np.where(found, x, np.nan), np.where(found, above, np.nan)])


NAN_ROWS = 8     # rows with NaN in one feature, per feature that takes it, and rows with NaN in all of them


def _nan_rows(base: np.ndarray, domain: Domain) -> np.ndarray:
    columns = np.flatnonzero(domain.nan)
    rows = [base[np.arange(NAN_ROWS * len(columns)) % len(base)].copy()]
    rows[0][np.arange(len(rows[0])), np.repeat(columns, NAN_ROWS)] = np.nan
    every = base[:NAN_ROWS].copy()
    every[:, columns] = np.nan
    return np.vstack([*rows, every]) if len(columns) else np.empty((0, len(domain.lo)))


def parity_rows(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int, domain: Domain,
                recorded: np.ndarray | None = None, seed: int = 0) -> ParityRows:
    rng = np.random.default_rng(seed)
    reference_scaler = next(iter(scalers.values()), None)
    mean, scale = (np.zeros(n_features), np.ones(n_features)) if reference_scaler is None else (
        np.asarray([_affine(reference_scaler, j) for j in range(n_features)]).T)
    base = np.clip(mean + scale * rng.standard_normal((SCALER_ROWS, n_features)), domain.lo, domain.hi)
    edges, nans = domain.edges(base, rng), _nan_rows(base, domain)
    blocks, counts = [base, edges, nans], {"scaler": SCALER_ROWS, "domain_edges": len(edges), "nan": len(nans),
                                           "threshold": 0, "threshold_unreachable": 0, "threshold_not_finite": 0,
                                           "threshold_outside_domain": 0}
    for member in members:
        scaler = scalers.get(member.source.scaler) if member.source.scaler is not None else None
        dtype = np.dtype(input_dtype(member))  # the split compares the scaled value in the member's input dtype
        for column in sorted({f for f, _ in member.thresholds}):
            values = np.array([v for f, v in member.thresholds if f == column], dtype=dtype)
            with np.errstate(over="ignore"):
                targets = np.concatenate([values, np.nextafter(values, dtype.type(-np.inf)),
                                          np.nextafter(values, dtype.type(np.inf))])
            finite = np.isfinite(targets)  # no row sits on a split at +-inf (nor one ulp past float32's largest)
            counts["threshold_not_finite"] += int((~finite).sum())
            targets = targets[finite]
            raw = _raw_values_for(targets, *_affine(scaler, column))
            reachable = ~np.isnan(raw)
            # A split beyond the domain parts no two values the runtime takes: every row it could see is
            # on one side, and the edge rows hold that side.
            ok = reachable & (raw >= domain.lo[column]) & (raw <= domain.hi[column])
            counts["threshold_outside_domain"] += int((reachable & ~ok).sum())
            rows = base[np.arange(ok.sum()) % SCALER_ROWS].copy()
            rows[:, column] = raw[ok]
            blocks.append(rows)
            counts["threshold"] += int(ok.sum())
            counts["threshold_unreachable"] += int((~reachable).sum())
            if dtype == np.float64 and scaler is not None:  # float64 steps the scaler cannot land on exactly
                pairs = _boundary_pairs(values[np.isfinite(values)], *_affine(scaler, column))
                pairs = pairs[(pairs >= domain.lo[column]) & (pairs <= domain.hi[column])]  # NaN: not found
                rows = base[np.arange(len(pairs)) % SCALER_ROWS].copy()
                rows[:, column] = pairs
                blocks.append(rows)
                counts["threshold_boundary"] = counts.get("threshold_boundary", 0) + len(pairs)
    if recorded is not None:
        blocks.append(np.asarray(recorded, dtype=np.float64))
        counts["recorded"] = len(recorded)
    raw = np.vstack(blocks)
    counts["total"] = len(raw)
    return ParityRows(raw, counts)


def run_batched(session: Any, feeds: dict[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    n = len(next(iter(feeds.values())))
    parts = [session.run(None, {k: v[i:i + batch_size] for k, v in feeds.items()}) for i in range(0, n, batch_size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def _rows_for(batch_size: int, n: int) -> np.ndarray:
    if batch_size == 1 and n > SINGLE_ROW_SAMPLE:
        return np.linspace(0, n - 1, SINGLE_ROW_SAMPLE).astype(np.int64)
    return np.arange(n)


@dataclass
class Check:
    target: str
    output: str
    batch_size: int
    rows: int
    max_abs_diff: float
    worst_row: int
    label_mismatches: int
    tolerance: float            # inf for a lowered-precision graph: its differences are reported, not gated
    min_agreement: float = 1.0  # below 1 only for a lowered-precision graph

    @property
    def label_agreement(self) -> float:
        return (self.rows - self.label_mismatches) / self.rows if self.rows else 1.0

    @property
    def passed(self) -> bool:
        # isfinite first: a NaN anywhere is an infinite difference, and inf <= inf would let it through.
        return (np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance
                and self.label_agreement >= self.min_agreement)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "output": self.output, "batch_size": self.batch_size, "rows": self.rows,
                "max_abs_diff": self.max_abs_diff, "worst_row": self.worst_row,
                "label_agreement": self.label_agreement, "label_mismatches": self.label_mismatches,
                "passed": bool(self.passed)}

    def describe(self) -> str:
        gate = (f"tolerance {self.tolerance:g}" if np.isfinite(self.tolerance)
                else f"labels must agree on {self.min_agreement:.2%}")
        return (f"{self.target} {self.output} at batch {self.batch_size}: max |diff| {self.max_abs_diff:.3g} "
                f"({gate}, worst row {self.worst_row}), {self.label_mismatches} of {self.rows} labels differ")


def compare(target: str, output: str, batch_size: int, got: np.ndarray, want: np.ndarray, index: np.ndarray,
            labels: bool = True, precision: Precision = Precision()) -> Check:
    diff = np.abs(got.astype(np.float64) - want)
    diff[~np.isfinite(diff)] = np.inf  # a NaN output must fail, and NaN compares false to everything
    flat = diff.reshape(len(diff), -1).max(axis=1) if diff.ndim > 1 else diff
    worst = int(np.argmax(flat)) if len(flat) else 0
    mismatches = int((got.argmax(axis=-1) != want.argmax(axis=-1)).sum()) if labels and got.ndim == 2 else 0
    return Check(target, output, batch_size, len(got), float(flat.max()) if len(flat) else 0.0,
                 int(index[worst]) if len(index) else 0, mismatches, *_gate(precision))


def _gate(precision: Precision) -> tuple[float, float]:
    """(tolerance, minimum label agreement): the float32 contract, or a lowered build's own agreement."""
    return (np.inf, precision.min_agreement) if precision.lowered else (CONTRACT.tolerance, 1.0)


def check_parity(reference: Reference, rows: ParityRows, member_onnx: dict[str, bytes],
                 ensemble_onnx: bytes, precision: Precision = Precision(),
                 batch_sizes: tuple[int, ...] = BATCH_SIZES,
                 raw_refs: dict[str, np.ndarray] | None = None, explain: bool = True) -> dict[str, Any]:
    """Run every check; returns the report (`passed` false and `failures` filled when anything is off).

    Members are always held to the float32 tolerance (their files are float32); only those in `member_onnx`
    are checked. The ensemble is held to its `precision`: the tolerance, or a lowered build's agreement. The
    domain's search (`convert.domain`) runs the largest batch size alone, on rows whose frameworks' answers it
    holds already (`raw_refs`, each member's probabilities before temperature), and reads only the differences,
    not why (`explain`: the lines that name a cause, some of which run the frameworks again): the gate then runs
    them all."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One thread: how onnxruntime splits a kernel across threads can move the last bit of a result, and the
    # report's figures are part of the build's bytes (parity.json, the manifest's summary).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    checks: list[Check] = []
    if raw_refs is None:
        raw_refs = reference.raw_member_probabilities(rows.raw)
    off: dict[str, np.ndarray] = {}  # member -> the rows its export answers past the tolerance
    for member in (m for m in reference.plan.members if m.name in member_onnx):  # alone, before temperature
        x64 = reference.member_input(member.scaler, rows.raw)
        for bs in batch_sizes:
            idx = _rows_for(bs, len(x64))
            with member_step(member.name, member.file, f"running its ONNX export at batch size {bs}"):
                session = ort.InferenceSession(member_onnx[member.name], options, providers=["CPUExecutionProvider"])
                x = x64 if session.get_inputs()[0].type == "tensor(double)" else x64.astype(np.float32)
                (got,) = run_batched(session, {CONTRACT.input_name: x[idx]}, bs)
            checks.append(compare(f"member {member.name}", PROBABILITIES, bs, got, raw_refs[member.name][idx], idx))
            past = ~(np.abs(got - raw_refs[member.name][idx]) <= CONTRACT.tolerance).all(axis=1)
            off[member.name] = np.union1d(off.get(member.name, np.empty(0, int)), idx[past])

    member_refs = reference.calibrated(raw_refs)
    want_probs = reference.combine(member_refs)
    want_label, want_confidence = reference.decision.choose(want_probs, reference.plan.classes)
    want_members = np.stack([member_refs[m.name] for m in reference.plan.members], axis=1)
    session = ort.InferenceSession(ensemble_onnx, options, providers=["CPUExecutionProvider"])
    target = "ensemble" if not precision.lowered else f"ensemble ({precision.weights})"
    for bs in batch_sizes:
        idx = _rows_for(bs, len(rows.raw))
        probs, label, confidence, per_member = run_batched(session, {ENSEMBLE_INPUT: rows.raw[idx]}, bs)
        checks.append(compare(target, PROBABILITIES, bs, probs, want_probs[idx], idx, precision=precision))
        checks.append(compare(target, MEMBER_PROBABILITIES, bs, per_member, want_members[idx], idx, labels=False,
                              precision=precision))
        checks.append(compare(target, CONFIDENCE, bs, confidence, want_confidence[idx], idx, labels=False,
                              precision=precision))
        wrong = np.flatnonzero(label != want_label[idx])
        checks.append(Check(target, LABEL, bs, len(idx), 0.0, int(idx[wrong[0]]) if len(wrong) else 0,
                            len(wrong), *_gate(precision)))

    failures = [c.describe() for c in checks if not c.passed]
    if failures and explain:
        failures += lost_to_temperature(reference.decision.temperature, raw_refs, member_refs)
        failures += unsteady(reference, rows.raw, raw_refs, off)
        if any(c.label_mismatches for c in checks if not c.passed):
            failures += float32_ties({**{f"member {n}": p for n, p in raw_refs.items()}, "ensemble": want_probs})
    held = np.bincount(want_label, minlength=len(reference.plan.classes))
    return {"tolerance": CONTRACT.tolerance, "batch_sizes": list(batch_sizes), "rows": rows.counts,
            "left_out": {k: {"rows": rows.counts[k], "why": why} for k, why in LEFT_OUT.items() if rows.counts.get(k)},
            "labels": dict(zip(reference.plan.classes, map(int, held), strict=True)), "precision": precision.record(),
            "checks": [c.as_dict() for c in checks], "passed": not failures, "failures": failures}


FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.2e-38: below it a float32 probability loses its digits


def lost_to_temperature(temperature: dict[str, float], raw: dict[str, np.ndarray],
                        tempered: dict[str, np.ndarray]) -> list[str]:
    """Why a tempered member fails, when that is the cause: a row so confident that |margin| (log p_max - log
    p_min, in float64) passes about 87, where the member's float32 probability of its unlikely class is below
    FLOAT32_TINY (0 from 88.7: exp overflows), so the graph's log p / t cannot recover it, yet the tempered
    probability is one the gate sees. One line per such member, naming the temperature and the margin."""
    lines = []
    for name, t in sorted(temperature.items()):
        if t == 1.0 or name not in raw:
            continue
        p, q = raw[name], tempered[name]
        with np.errstate(divide="ignore"):
            margin = np.log(p.max(axis=1)) - np.log(p.min(axis=1))
        lost = (p.min(axis=1) < FLOAT32_TINY) & (q.min(axis=1) > CONTRACT.tolerance)
        if not lost.any():
            continue
        row = int(np.flatnonzero(lost)[np.argmin(margin[lost])])
        shown = f"{margin[row]:.1f}" if np.isfinite(margin[row]) else "past 745 (float64's own range)"
        lines.append(f"member {name}: temperature {t:g} on {int(lost.sum())} gate row(s) with |margin| past float32's "
                     f"range (row {row}: |margin| {shown}, its unlikely class's probability "
                     f"{p[row].min():.3g} < {FLOAT32_TINY:.3g}, float32's smallest normal number), where log p / {t:g} "
                     f"cannot recover the tempered probability {q[row].min():.3g}; a temperature under about "
                     f"|margin| / 12 keeps it under the tolerance: lower it, or leave this member untempered")
    return lines


UNSTEADY_ROWS = 64  # of a member's rows past the tolerance, those its framework answers again one at a time


def unsteady(reference: Reference, raw: np.ndarray, raw_refs: dict[str, np.ndarray],
             off: dict[str, np.ndarray]) -> list[str]:
    """Why a member's export fails, when the cause is the model itself: on the rows its export answers past the
    tolerance, its own framework answers one row at a time otherwise than in one batch by more than the
    tolerance (a layer so ill-conditioned that float32's rounding, which moves with the batch's kernels, moves
    its probabilities: a LayerNorm over 2 values, say). No export can be proven to the tolerance against a
    reference that is not steady to it. One line per such member, naming the difference and a row."""
    lines, files = [], {m.name: m.file for m in reference.plan.members}
    for name, rows in sorted(off.items()):
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), UNSTEADY_ROWS)).astype(int)] if len(rows) else rows
        if not len(rows):
            continue
        alone = np.vstack([reference.raw_member_probabilities(raw[r:r + 1], [name])[name] for r in rows])
        diff = np.abs(alone - raw_refs[name][rows]).max(axis=1)
        if not diff.max() > CONTRACT.tolerance:
            continue
        row, moved = int(rows[np.argmax(diff)]), int((diff > CONTRACT.tolerance).sum())
        lines.append(f"member {name} ({files[name]}): its own framework answers {moved} of {len(rows)} such "
                     f"row(s) one at a time otherwise than in one batch, by up to {diff.max():.3g} "
                     f"(row {row}), past the tolerance {CONTRACT.tolerance:g}: float32's rounding moves this model's "
                     f"probabilities that far on such rows (an ill-conditioned layer, or logits so large there "
                     f"that their rounding shows: rows far out), so no export can be proven to the tolerance "
                     f"on them")
    return lines


def float32_ties(references: dict[str, np.ndarray]) -> list[str]:
    """Why labels differ while the probabilities agree, when that is the cause: gate rows whose two most probable
    classes differ in the framework's float64 but are one value in float32, the precision of every output, whose
    argmax cannot order them (a logistic regression on raw features is near 0.5 on rows around 0, say). One line
    per target holding such rows, naming the count and the first row."""
    lines = []
    for target, p in references.items():
        top = np.sort(p, axis=1)[:, -2:]
        tied = (top[:, 0] != top[:, 1]) & (top[:, 0].astype(np.float32) == top[:, 1].astype(np.float32))
        if not tied.any():
            continue
        row = int(np.flatnonzero(tied)[0])
        lines.append(f"{target}: {int(tied.sum())} gate row(s) where the framework's two most probable classes are "
                     f"one value in float32, the outputs' precision (row {row}: {top[row, 1]:.17g} and "
                     f"{top[row, 0]:.17g}, both {float(np.float32(top[row, 1])):.9g}), so the exported argmax cannot "
                     f"order them as the framework's float64 one does: a tie float32 cannot break, where the model is "
                     f"undecided; the build cannot promise the framework's label there")
    return lines


def merged(strict: dict[str, Any], lowered: dict[str, Any]) -> dict[str, Any]:
    """One report for a lowered build: the float32 export's strict checks, then the shipped graph's."""
    failures = strict["failures"] + lowered["failures"]
    return {**strict, "precision": lowered["precision"], "checks": strict["checks"] + lowered["checks"],
            "passed": not failures, "failures": failures}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's digest of a report: per target, the worst difference and the label agreement."""
    targets: dict[str, dict[str, Any]] = {}
    for c in report["checks"]:
        t = targets.setdefault(c["target"], {"max_abs_diff": 0.0, "label_agreement": 1.0})
        t["max_abs_diff"] = max(t["max_abs_diff"], c["max_abs_diff"])
        t["label_agreement"] = min(t["label_agreement"], c["label_agreement"])
    return {"passed": report["passed"], "tolerance": report["tolerance"], "rows": report["rows"]["total"],
            "precision": report.get("precision", {"weights": "fp32"}),
            "batch_sizes": report["batch_sizes"], "targets": targets}


LEFT_OUT = {"threshold_unreachable": "no float64 raw value scales exactly onto the split value",
            "threshold_not_finite": "the split value is +-inf or one step past the largest float32 (float64 for a "
                                    "member that reads float64)",
            "threshold_outside_domain": "the split's raw row lies outside the input domain (rows the runtime "
                                        "refuses; the domain's edge rows hold the side of the split they take)"}


def json_ready(value: Any) -> Any:
    """The report with each non-finite figure as text ("inf", "-inf", "nan"): a failed gate's report must be
    written whatever its differences were, and JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def table(report: dict[str, Any]) -> list[str]:
    lines = [f"parity ({report['rows']['total']} rows: {report['rows']}; tolerance {report['tolerance']:g})",
             *(f"  left out: {report['rows'][k]} threshold rows: {why}" for k, why in LEFT_OUT.items()
               if report["rows"].get(k)),
             f"  {'target':<18} {'max |diff|':>11} {'labels':>8}  batch sizes"]
    for target, t in summary(report)["targets"].items():
        lines.append(f"  {target:<18} {t['max_abs_diff']:>11.3g} {t['label_agreement']:>8.2%}  "
                     f"{', '.join(map(str, report['batch_sizes']))}")
    precision = Precision.from_record(report.get("precision"))
    if precision.lowered:
        lines.append(f"  the shipped graph has {precision.weights} weights: its labels must agree on "
                     f"{precision.min_agreement:.2%} of rows; its differences are reported, not gated")
    lines.append("  PASSED" if report["passed"] else "  FAILED:\n    " + "\n    ".join(report["failures"]))
    return lines
