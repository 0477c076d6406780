"""Drift of live features against what a build was trained on (its verified `statistics.json`), numpy only.

Per feature, for one batch of rows:

- `psi`: the population stability index of the batch against the training quantile bins,
  PSI = sum over bins of (live share - training share) * ln(live share / training share), an empty bin's
  share floored at PSI_FLOOR. The thresholds are the convention of credit-scoring practice: under 0.1 no
  significant shift, 0.1 to 0.25 a moderate shift worth a look, 0.25 and over a significant shift
  (N. Siddiqi, *Credit Risk Scorecards*, Wiley 2006; B. Yurdakul, "Statistical Properties of the Population
  Stability Index", Western Michigan University, 2018). A sample drawn from the training distribution
  itself has a PSI of about (bins - 1) * (1/n + 1/N) (`psi_noise`): score batches of several hundred rows.
- `out_of_range`: the share of values under the training minimum or over the training maximum.
- `mean_shift` (the batch mean minus the training mean, in training standard deviations), `spread_ratio`
  (the batch's standard deviation over the training one) and `z` (the mean shift in standard errors of the
  batch mean), from the scaler's mean and scale. When a build recorded no bins (no reference rows were
  given to `convert`), these decide the status.

Status per feature, the worst of its rules; the batch's status is its worst feature's:

| rule | warn | drift |
| --- | --- | --- |
| PSI (when bins are known) | >= 0.1 | >= 0.25 |
| share out of the training range (when known) | >= 0.05 | - |
| mean shift, only without bins (and |z| >= 3, so noise in a small batch does not fire) | >= 0.25 sd | >= 0.5 sd |
| spread ratio, only without bins | outside [0.8, 1.25] | outside [0.67, 1.5] |
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .artifacts import ArtifactError

STATISTICS_FILE = "statistics.json"
STATISTICS_VERSION = 1
BINS = 10                  # deciles of the reference rows
PSI_FLOOR = 1e-4           # the share an empty bin counts as: ln(0) would make any new value infinite drift
PSI_WARN, PSI_DRIFT = 0.1, 0.25
OUT_OF_RANGE_WARN = 0.05
SHIFT_WARN, SHIFT_DRIFT = 0.25, 0.5
SPREAD_WARN, SPREAD_DRIFT = 1.25, 1.5
Z_SIGNIFICANT = 3.0
STATUSES = ("ok", "warn", "drift")
THRESHOLDS = {"psi_warn": PSI_WARN, "psi_drift": PSI_DRIFT, "out_of_range_warn": OUT_OF_RANGE_WARN,
              "mean_shift_warn": SHIFT_WARN, "mean_shift_drift": SHIFT_DRIFT, "spread_warn": SPREAD_WARN,
              "spread_drift": SPREAD_DRIFT, "z_significant": Z_SIGNIFICANT}


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin i holds edges[i-1] <= v < edges[i]; the outer bins are open (-inf, edges[0]) and [edges[-1], inf),
    so a value outside the training range still lands in a bin. convert and the runtime both bin with this."""
    return np.searchsorted(edges, values, side="right")


def quantile_bins(column: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """The inner decile edges of one reference column (ties merged) and the rows in each bin."""
    edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, bins + 1)))[1:-1]
    counts = np.bincount(bin_index(column, edges), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two count (or share) vectors over the same bins."""
    e = np.maximum(expected / expected.sum(), PSI_FLOOR)
    a = np.maximum(actual / actual.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def parse_statistics(raw: bytes | None, feature_names: tuple[str, ...], where: str) -> dict[str, Any]:
    """The verified bytes of statistics.json -> its dict; ArtifactError naming the field when it is unusable."""
    if raw is None:
        raise ArtifactError(f"{where}: the build has no {STATISTICS_FILE} (built before training statistics "
                          f"were recorded); rebuild with `ensemble-onnx convert --reference-data ROWS`.")
    try:
        stats = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: not valid JSON ({exc}).") from None
    if not isinstance(stats, dict) or stats.get("statistics_version") != STATISTICS_VERSION:
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: field 'statistics_version' is not {STATISTICS_VERSION}.")
    features = stats.get("features")
    if not isinstance(features, dict) or set(features) != set(feature_names):
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: field 'features' does not name the build's features.")
    return stats


def _status(*levels: int) -> int:
    return max(levels, default=0)


def feature_drift(column: np.ndarray, stats: dict[str, Any]) -> dict[str, Any]:
    """One feature's figures and status (see the module docstring)."""
    n = len(column)
    out: dict[str, Any] = {}
    level = 0
    bins = stats.get("bins")
    if bins is not None:
        edges, counts = np.asarray(bins["edges"], dtype=np.float64), np.asarray(bins["counts"], dtype=np.float64)
        live = np.bincount(bin_index(column, edges), minlength=len(counts))
        out["psi"] = psi(counts, live.astype(np.float64))
        out["psi_noise"] = (len(counts) - 1) * (1.0 / n + 1.0 / counts.sum())
        level = _status(level, 2 if out["psi"] >= PSI_DRIFT else 1 if out["psi"] >= PSI_WARN else 0)
    if stats.get("min") is not None and stats.get("max") is not None:
        out["out_of_range"] = float(np.mean((column < stats["min"]) | (column > stats["max"])))
        level = _status(level, 1 if out["out_of_range"] >= OUT_OF_RANGE_WARN else 0)
    if stats.get("mean") is not None and stats.get("scale"):
        shift = (float(column.mean()) - stats["mean"]) / stats["scale"]
        spread = float(column.std()) / stats["scale"]
        out.update(mean_shift=shift, spread_ratio=spread, z=shift * math.sqrt(n))
        if bins is None:
            big = abs(shift) if abs(out["z"]) >= Z_SIGNIFICANT else 0.0
            wide = max(spread, 1.0 / spread) if spread > 0 else math.inf
            level = _status(level, 2 if big >= SHIFT_DRIFT else 1 if big >= SHIFT_WARN else 0,
                            2 if wide > SPREAD_DRIFT else 1 if wide > SPREAD_WARN else 0)
    out["status"] = STATUSES[level] if out else "unknown"
    return out


def drift_report(x: np.ndarray, stats: dict[str, Any], feature_names: tuple[str, ...]) -> dict[str, Any]:
    """[n, F] validated features in training order -> per feature figures, the drifted/warned names and the
    batch status."""
    features = {name: feature_drift(x[:, j], stats["features"][name]) for j, name in enumerate(feature_names)}
    level = max((STATUSES.index(f["status"]) for f in features.values() if f["status"] in STATUSES), default=0)
    return {"rows": len(x), "status": STATUSES[level],
            "drift": [n for n, f in features.items() if f["status"] == "drift"],
            "warn": [n for n, f in features.items() if f["status"] == "warn"],
            "features": features, "thresholds": THRESHOLDS,
            "reference": stats.get("reference")}


def table(report: dict[str, Any]) -> list[str]:
    """The report as aligned text lines, for a terminal."""
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.lstrip("+").split(".")[0]))

    lines = [f"drift on {report['rows']} rows: {report['status'].upper()}"
             + (f" (drift: {', '.join(report['drift'])})" if report["drift"] else "")
             + (f" (warn: {', '.join(report['warn'])})" if report["warn"] else ""),
             f"{'feature':<16} {'status':<7} {'psi':>8} {'out':>7} {'shift sd':>9} {'spread':>7}"]
    for name, f in report["features"].items():
        lines.append(f"{name:<16} {f['status']:<7} {num(f.get('psi'), '8.4f')} {num(f.get('out_of_range'), '7.2%')} "
                     f"{num(f.get('mean_shift'), '+9.3f')} {num(f.get('spread_ratio'), '7.3f')}")
    return lines
