"""Drift of live features against what a build was trained on (its verified `statistics.json`), numpy only.

Per feature, for one batch of rows:

- `psi`: the population stability index of the batch against the training quantile bins,
  PSI = sum over bins of (live share - training share) * ln(live share / training share), an empty bin's
  share floored at PSI_FLOOR. The thresholds are the convention of credit-scoring practice: under 0.1 no
  significant shift, 0.1 to 0.25 a moderate shift worth a look, 0.25 and over a significant shift
  (N. Siddiqi, *Credit Risk Scorecards*, Wiley 2006; B. Yurdakul, "Statistical Properties of the Population
  Stability Index", Western Michigan University, 2018). A sample drawn from the training distribution
  itself has a PSI of about (bins - 1) * (1/n + 1/N) (`psi_noise`), with a standard deviation of about
  sqrt(2 (bins - 1)) * (1/n + 1/N) (n PSI is near a chi-square of bins - 1 degrees of freedom): a PSI
  counts only from psi_noise + 3 such deviations up (`psi_limit`), so a small batch drawn from the training
  data does not fire. Where that limit is at or over the warn threshold, the batch is too small to tell a
  moderate shift from noise: the report says so (`small_sample`: the limit and the rows that would tell).
- `out_of_range`: the share of values under the training minimum or over the training maximum.
- `missing`: how many rows hold NaN in the feature (taken only where the build takes it, as `predict` does);
  every other figure is over the rows that hold a value; a feature the build describes but the batch holds
  no value of warns (a feed that stopped sending it).
- `mean_shift` (the batch mean minus the training mean, in training standard deviations), `spread_ratio`
  (the batch's standard deviation over the training one) and `z` (the mean shift in standard errors of the
  batch mean), from the scaler's mean and scale. When a build recorded no bins (no reference rows were
  given to `convert`), these decide the status.

Status per feature, the worst of its rules; the batch's status is its worst feature's:

| rule | warn | drift |
| --- | --- | --- |
| PSI (when bins are known, and over its noise limit) | >= 0.1 | >= 0.25 |
| share out of the training range (when known) | >= 0.05 | - |
| mean shift, only without bins (and |z| >= 3, so noise in a small batch does not fire) | >= 0.25 sd | >= 0.5 sd |
| spread ratio, only without bins (and |ln ratio| * sqrt(2 (n - 1)) >= 3) | outside [0.8, 1.25] | outside [0.67, 1.5] |
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .artifacts import ArtifactError
from .errors import InputError

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
CHUNK = 65536  # rows binned at once
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


@dataclass(frozen=True)
class TrainingStatistics:
    """statistics.json as arrays over the features (training order), read once at load: a batch's drift is
    then a few vectorised numpy calls, whatever the number of features. NaN / False where a figure is unknown."""

    edges: np.ndarray      # [F, E] inner bin edges, padded with +inf (no finite value reaches a padded bin)
    expected: np.ndarray   # [F, E + 1] training share per bin, padded with 0
    has_bins: np.ndarray   # [F] bool
    reference_rows: np.ndarray  # [F] rows behind the bins
    low: np.ndarray        # [F] training minimum
    high: np.ndarray       # [F] training maximum
    mean: np.ndarray       # [F]
    scale: np.ndarray      # [F]
    reference: dict[str, Any] | None


def _real(value: Any) -> float:
    """A JSON number as a float; bool, text and integers past float's range are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"an integer of {len(str(value))} digits is out of range") from None
    if not math.isfinite(number):  # JSON's NaN and Infinity tokens: convert writes neither
        raise ValueError(f"{value!r} is not finite")
    return number


def _reals(values: Any) -> list[float]:
    if not isinstance(values, list):
        raise TypeError(f"{type(values).__name__} is not a list of numbers")
    return [_real(v) for v in values]


def _feature_arrays(entry: Any, where: str) -> tuple[list[float], list[float], float, float, float, float]:
    if not isinstance(entry, dict):
        raise ArtifactError(f"{where}: not an object.")
    has_bins = entry.get("bins") is not None
    bins = entry["bins"] if has_bins else {"edges": [], "counts": []}
    try:
        edges, counts = _reals(bins["edges"]), _reals(bins["counts"])
        numbers = [_real(entry[k]) if entry.get(k) is not None else math.nan for k in ("min", "max", "mean", "scale")]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: a field is missing or not a number ({exc}).") from None
    # Strictly increasing edges (quantile_bins merges ties), whole counts with a finite positive total: else
    # a bin no live value can reach, or every share, is wrong.
    if has_bins and (len(counts) != len(edges) + 1 or not 0 < sum(counts) < math.inf
                     or any(b <= a for a, b in itertools.pairwise(edges))
                     or any(c < 0 or not c.is_integer() for c in counts)):
        raise ArtifactError(f"{where}: field 'bins' needs strictly increasing edges and one count more than edges, "
                            f"each count a whole number of rows.")
    if numbers[0] > numbers[1]:
        raise ArtifactError(f"{where}: field 'min' is above field 'max'.")
    if not numbers[3] > 0:
        numbers[2] = numbers[3] = math.nan  # a constant feature has no spread to measure shifts in
    return edges, counts, numbers[0], numbers[1], numbers[2], numbers[3]


def parse_statistics(raw: bytes | None, feature_names: tuple[str, ...], where: str) -> TrainingStatistics:
    """The verified bytes of statistics.json -> arrays; ArtifactError naming the field when it is unusable."""
    if raw is None:
        raise ArtifactError(f"{where}: the build has no {STATISTICS_FILE} (built before training statistics "
                            f"were recorded); rebuild with `ensemble-onnx convert --reference-data ROWS`.")
    try:
        stats = json.loads(raw)
    except ValueError as exc:  # also a UnicodeDecodeError, and an integer past Python's digit limit
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: not valid JSON ({exc}).") from None
    if not isinstance(stats, dict) or stats.get("statistics_version") != STATISTICS_VERSION:
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: field 'statistics_version' is not {STATISTICS_VERSION}.")
    features = stats.get("features")
    if not isinstance(features, dict) or set(features) != set(feature_names):
        raise ArtifactError(f"{where}/{STATISTICS_FILE}: field 'features' does not name the build's features.")
    parsed = [_feature_arrays(features[n], f"{where}/{STATISTICS_FILE}: features.{n}") for n in feature_names]
    width = max(len(p[0]) for p in parsed)
    edges = np.full((len(parsed), width), np.inf)
    expected = np.zeros((len(parsed), width + 1))
    for j, (e, c, *_) in enumerate(parsed):
        edges[j, :len(e)] = e
        expected[j, :len(c)] = np.asarray(c) / max(sum(c), 1.0)
    rows = np.array([sum(p[1]) for p in parsed])
    low, high, mean, scale = (np.array([p[k] for p in parsed]) for k in range(2, 6))
    return TrainingStatistics(edges, expected, rows > 0, rows, low, high, mean, scale, stats.get("reference"))


def drift_report(x: np.ndarray, stats: TrainingStatistics, feature_names: tuple[str, ...]) -> dict[str, Any]:
    """[n, F] validated features in training order -> per feature figures and status (see the module
    docstring), the names that drifted or warn, and the batch status."""
    n, f = x.shape
    if n == 0:  # every share below would divide by zero
        raise InputError("no rows to check for drift.")
    # A missing value (NaN, where the build takes it) is counted per feature and left out of its figures: each
    # feature's shares, moments and noise limits are over the rows that hold a value for it.
    missing = np.isnan(x)
    n_missing = missing.sum(axis=0)
    present = n - n_missing
    width = stats.edges.shape[1] + 1
    index = np.empty((n, f), dtype=np.int64)
    for start in range(0, n, CHUNK):  # bin_index for every column at once; chunked to bound the [n, F, E] mask
        index[start:start + CHUNK] = (x[start:start + CHUNK, :, None] >= stats.edges[None]).sum(axis=2)
    index[missing] = width  # one slot past the bins, dropped below
    counts = np.bincount((index + np.arange(f) * (width + 1)).ravel(), minlength=f * (width + 1))
    live = counts.reshape(f, width + 1)[:, :width] / np.maximum(present, 1)[:, None]
    e, a = np.maximum(stats.expected, PSI_FLOOR), np.maximum(live, PSI_FLOOR)  # padded bins: both floored, add 0
    psi = np.where(stats.has_bins & (present > 0), ((a - e) * np.log(a / e)).sum(axis=1), np.nan)
    freedom = np.count_nonzero(stats.expected, axis=1) - 1
    per_row = 1.0 / np.maximum(present, 1) + 1.0 / np.maximum(stats.reference_rows, 1)
    noise = freedom * per_row
    # What noise alone stays under: the mean plus Z_SIGNIFICANT standard deviations of (chi-square / rows).
    noise_factor = freedom + Z_SIGNIFICANT * np.sqrt(2.0 * np.maximum(freedom, 0))
    limit = noise_factor * per_row
    significant = psi >= limit
    has_range = ~np.isnan(stats.low) & ~np.isnan(stats.high) & (present > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out_of_range = np.where(has_range, ((x < stats.low) | (x > stats.high)).sum(axis=0) / present, np.nan)
    has_moments = ~np.isnan(stats.scale) & (present > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean = np.where(missing, 0.0, x).sum(axis=0) / present
        shift = (mean - stats.mean) / stats.scale
        spread = np.sqrt((np.where(missing, 0.0, x - mean) ** 2).sum(axis=0) / present) / stats.scale
        z = shift * np.sqrt(present)
        big = np.where(np.abs(z) >= Z_SIGNIFICANT, np.abs(shift), 0.0)
        # The spread gets the same significance gate as the mean: ln(sample sd / sd) has a standard error of
        # about 1 / sqrt(2 (n - 1)), so one row (no spread at all) or a handful never fire on noise.
        spread_z = np.abs(np.log(spread)) * np.sqrt(2 * np.maximum(present - 1, 0))
        wide = np.where(spread_z >= Z_SIGNIFICANT, np.where(spread > 0, np.maximum(spread, 1.0 / spread), np.inf),
                        1.0)
    level = np.maximum.reduce([
        np.where(stats.has_bins & significant, (psi >= PSI_WARN).astype(int) + (psi >= PSI_DRIFT), 0),
        np.where(has_range, out_of_range >= OUT_OF_RANGE_WARN, 0).astype(int),
        np.where(has_moments & ~stats.has_bins, np.maximum((big >= SHIFT_WARN).astype(int) + (big >= SHIFT_DRIFT),
                                                           (wide > SPREAD_WARN).astype(int) + (wide > SPREAD_DRIFT)),
                 0)])
    # A feature the build describes but the batch holds no value of (every row NaN): a feed that stopped
    # sending it, which warns rather than reading "ok".
    silent = (stats.has_bins | (~np.isnan(stats.low) & ~np.isnan(stats.high)) | ~np.isnan(stats.scale)) & (present == 0)
    level = np.maximum(level, silent.astype(int))
    known = (stats.has_bins & (present > 0)) | has_range | has_moments | silent

    def value(v: np.ndarray, j: int) -> float | None:
        # Not finite (a mean of values near the float maximum overflows): null, as JSON has no Infinity; the
        # status above was decided on the arrays.
        return float(v[j]) if math.isfinite(v[j]) else None

    features = {name: {"status": STATUSES[level[j]] if known[j] else "unknown", "psi": value(psi, j),
                       "psi_noise": float(noise[j]) if stats.has_bins[j] else None,
                       "psi_limit": float(limit[j]) if stats.has_bins[j] else None,
                       "out_of_range": value(out_of_range, j), "mean_shift": value(shift, j),
                       "spread_ratio": value(spread, j), "z": value(z, j), "missing": int(n_missing[j])}
                for j, name in enumerate(feature_names)}
    return {"rows": n, "status": STATUSES[int(level[known].max(initial=0))],
            "drift": [name for name, v in features.items() if v["status"] == "drift"],
            "warn": [name for name, v in features.items() if v["status"] == "warn"],
            "small_sample": _small_sample(limit, noise_factor, stats, present), "features": features,
            "thresholds": THRESHOLDS, "reference": stats.reference}


def _small_sample(limit: np.ndarray, noise_factor: np.ndarray, stats: TrainingStatistics, present: np.ndarray
                  ) -> dict[str, Any] | None:
    """None when every binned feature can tell a PSI of PSI_WARN from noise in this batch; else the largest PSI
    that noise may reach (`psi_limit`) and the rows a batch needs to tell PSI_WARN (`rows_needed`; None when
    even endless rows cannot, the reference rows being too few)."""
    binned = stats.has_bins & (noise_factor > 0) & (present > 0)
    if not binned.any() or limit[binned].max() < PSI_WARN:
        return None
    room = PSI_WARN / noise_factor[binned] - 1.0 / np.maximum(stats.reference_rows[binned], 1)
    return {"psi_limit": float(limit[binned].max()),
            "rows_needed": int(math.ceil(1.0 / room.min())) if (room > 0).all() else None}
