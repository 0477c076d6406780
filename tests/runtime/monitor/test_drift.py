"""Referees `runtime/drift.py` (training statistics read from statistics.json, the drift figures and statuses of
a batch) and the terminal table of `runtime/monitor/drift.py` without training anything. Reading rows and the
HTML report: test_report.py.

Statistics are hand-written statistics.json documents (and the prebuilt demo build's own); every expected
figure is arithmetic written out here (the PSI formula, shares, standard deviations), never a value the code
under test produced.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pytest

import runtime
from runtime.artifacts import ArtifactError
from runtime.drift import (
    THRESHOLDS,
    TrainingStatistics,
    bin_index,
    drift_report,
    parse_statistics,
    quantile_bins,
)
from runtime.errors import InputError
from runtime.monitor.drift import table

WHERE = "build/statistics.json"
BINS_NEED = ("field 'bins' needs strictly increasing edges and one count more than edges, each count a whole "
             "number of rows.")


def statistics_bytes(features: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"statistics_version": 1, "features": features, **top}).encode()


def statistics(features: dict[str, dict[str, Any]], **top: Any) -> TrainingStatistics:
    return parse_statistics(statistics_bytes(features, **top), tuple(features), "build")


def drift_of(features: dict[str, dict[str, Any]], x: np.ndarray | list[list[float]]) -> dict[str, Any]:
    return drift_report(np.asarray(x, dtype=np.float64), statistics(features), tuple(features))


def psi(live: list[float], expected: list[float]) -> float:
    """The PSI of the module docstring written out: sum of (a - e) ln(a / e), an empty share floored at 1e-4."""
    total = 0.0
    for a, e in zip(live, expected, strict=True):
        a, e = max(a, 1e-4), max(e, 1e-4)
        total += (a - e) * math.log(a / e)
    return total


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


def alternating(first: float, second: float, n: int) -> np.ndarray:
    """n rows (n even) of one feature: first, second, first, ... (mean and spread exact in binary)."""
    return np.array([first, second] * (n // 2), dtype=np.float64)[:, None]


# ------------------------------------------------------------------------------------------- binning

@pytest.mark.parametrize(("value", "bin_"), [(-5.0, 0), (0.999, 0), (1.0, 1), (1.5, 1), (2.0, 2), (9.0, 2)])
def test_a_value_on_an_edge_belongs_to_the_bin_above_it(value, bin_):
    assert bin_index(np.array([value]), np.array([1.0, 2.0])).tolist() == [bin_]


def test_the_deciles_of_one_to_a_hundred_hold_ten_rows_each():
    # np.quantile (linear) of 1..100 at k/10 is 1 + 99 k / 10: inner edges 10.9, 20.8, ..., 90.1.
    bins = quantile_bins(np.arange(1.0, 101.0))
    assert bins["edges"] == pytest.approx([1 + 9.9 * k for k in range(1, 10)])
    assert bins["counts"] == [10] * 10
    assert all(type(e) is float for e in bins["edges"]) and all(type(c) is int for c in bins["counts"])


def test_quartiles_take_the_number_of_bins_asked_for():
    # 1..8 at 0, .25, .5, .75, 1 (position q * 7): 1, 2.75, 4.5, 6.25, 8.
    assert quantile_bins(np.arange(1.0, 9.0), bins=4) == {"edges": [2.75, 4.5, 6.25], "counts": [2, 2, 2, 2]}


def test_tied_quantiles_merge_into_one_edge():
    # Fifty 0s and fifty 1s: every decile is 0 or 1 except the median, 0.5 (halfway between rows 49 and 50).
    assert quantile_bins(np.array([0.0] * 50 + [1.0] * 50)) == {"edges": [0.5], "counts": [50, 50]}


def test_a_reference_column_above_its_top_edge_still_fills_the_last_bin():
    # Ten rows, the top one far out: its bin is the open one above the last edge, counted, not dropped.
    bins = quantile_bins(np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 1000]), bins=2)
    assert bins == {"edges": [5.5], "counts": [5, 5]}


# -------------------------------------------------------------------------------- reading the statistics

def test_statistics_become_arrays_in_training_order_with_padding():
    features = {
        "a": {"bins": {"edges": [0.0], "counts": [1, 3]}, "min": -1, "max": 2, "mean": 0.5, "scale": 1.5},
        "b": {"bins": {"edges": [-1.0, 0.0, 1.0], "counts": [1, 1, 1, 1]}, "min": None, "mean": 7, "scale": 0.5},
        "c": {"mean": 2.0, "scale": 0},
    }
    stats = parse_statistics(statistics_bytes(features, reference={"rows": 4, "file": "ref.csv"}),
                             ("c", "a", "b"), "build")
    inf, nan = math.inf, math.nan
    np.testing.assert_array_equal(stats.edges, [[inf, inf, inf], [0.0, inf, inf], [-1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(stats.expected, [[0, 0, 0, 0], [0.25, 0.75, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    assert stats.has_bins.tolist() == [False, True, True]
    np.testing.assert_array_equal(stats.reference_rows, [0, 4, 4])
    np.testing.assert_array_equal(stats.low, [nan, -1.0, nan])
    np.testing.assert_array_equal(stats.high, [nan, 2.0, nan])
    # c: a scale of 0 is a constant feature, no spread to measure a shift in: mean and scale unknown.
    np.testing.assert_array_equal(stats.mean, [nan, 0.5, 7.0])
    np.testing.assert_array_equal(stats.scale, [nan, 1.5, 0.5])
    assert stats.reference == {"rows": 4, "file": "ref.csv"}


@pytest.mark.parametrize(("entry", "mean", "scale"), [
    ({"mean": 3.0, "scale": 0.25}, 3.0, 0.25),
    ({"mean": 3.0, "scale": 0.0}, math.nan, math.nan),
    ({"mean": 3.0, "scale": -2.0}, math.nan, math.nan),
    ({"mean": 3.0}, math.nan, math.nan),
    ({"mean": 3.0, "scale": None}, math.nan, math.nan),
])
def test_only_a_positive_scale_keeps_the_moments(entry, mean, scale):
    stats = statistics({"a": entry})
    np.testing.assert_array_equal([stats.mean[0], stats.scale[0]], [mean, scale])


def test_a_single_reference_row_is_a_share_of_one():
    stats = statistics({"a": {"bins": {"edges": [0.0], "counts": [1, 0]}}})
    assert stats.expected.tolist() == [[1.0, 0.0]] and stats.reference_rows.tolist() == [1]
    assert stats.reference is None


def test_a_build_without_statistics_says_how_to_rebuild():
    with pytest.raises(ArtifactError) as info:
        parse_statistics(None, ("a",), "old-build")
    assert str(info.value) == ("old-build: the build has no statistics.json (built before training statistics were "
                               "recorded); rebuild with `ensemble-onnx convert --reference-data ROWS`.")


@pytest.mark.parametrize(("raw", "message"), [
    (b"nope", f"{WHERE}: not valid JSON (Expecting value: line 1 column 1 (char 0))."),
    (b'{"a": "\xff"}', f"{WHERE}: not valid JSON ('utf-8' codec can't decode byte 0xff in position 7: "
                       f"invalid start byte)."),
    (b"[]", f"{WHERE}: field 'statistics_version' is not 1."),
    (b'{"features": {"a": {}}}', f"{WHERE}: field 'statistics_version' is not 1."),
    (b'{"statistics_version": 2, "features": {"a": {}}}', f"{WHERE}: field 'statistics_version' is not 1."),
    (b'{"statistics_version": "1", "features": {"a": {}}}', f"{WHERE}: field 'statistics_version' is not 1."),
    (b'{"statistics_version": 1}', f"{WHERE}: field 'features' does not name the build's features."),
    (b'{"statistics_version": 1, "features": ["a"]}', f"{WHERE}: field 'features' does not name the build's features."),
    (b'{"statistics_version": 1, "features": {"b": {}}}',
     f"{WHERE}: field 'features' does not name the build's features."),
    (b'{"statistics_version": 1, "features": {"a": {}, "b": {}}}',
     f"{WHERE}: field 'features' does not name the build's features."),
])
def test_an_unusable_statistics_file_is_refused_by_field(raw, message):
    with pytest.raises(ArtifactError) as info:
        parse_statistics(raw, ("a",), "build")
    assert str(info.value) == message


@pytest.mark.parametrize(("entry", "problem"), [
    ([1, 2], "not an object."),
    ({"bins": {"counts": [1, 1]}}, "a field is missing or not a number ('edges')."),
    ({"bins": {"edges": [0.0]}}, "a field is missing or not a number ('counts')."),
    ({"min": "low"}, "a field is missing or not a number ('low' is not a number)."),
    ({"bins": {"edges": [0.0], "counts": [None, 1]}}, "a field is missing or not a number (None is not a number)."),
    ({"bins": {"edges": [0.0], "counts": [True, True]}}, "a field is missing or not a number (True is not a number)."),
    ({"bins": {"edges": "4", "counts": [1, 1]}}, "a field is missing or not a number (str is not a list of numbers)."),
    ({"bins": {"edges": ["4"], "counts": [1, 1]}}, "a field is missing or not a number ('4' is not a number)."),
    ({"mean": 10**400}, "a field is missing or not a number (an integer of 401 digits is out of range)."),
    ({"bins": {"edges": [math.nan], "counts": [1, 1]}}, "a field is missing or not a number (nan is not finite)."),
    ({"bins": {"edges": [-math.inf], "counts": [1, 1]}}, "a field is missing or not a number (-inf is not finite)."),
    ({"scale": math.inf}, "a field is missing or not a number (inf is not finite)."),
    ({"mean": math.nan}, "a field is missing or not a number (nan is not finite)."),
    ({"bins": []}, "a field is missing or not a number (list indices must be integers or slices, not str)."),
    ({"bins": {"edges": [-0.0, 0.0], "counts": [1, 1, 1]}}, BINS_NEED),
    ({"min": 10, "max": -10}, "field 'min' is above field 'max'."),
    ({"bins": {"edges": [0.0], "counts": [1e308, 1e308]}}, BINS_NEED),
    ({"bins": {"edges": [0.0], "counts": [1, 1, 1]}}, BINS_NEED),
    ({"bins": {"edges": [0.0, 1.0], "counts": [1, 1]}},
     BINS_NEED),
    ({"bins": {"edges": [0.0], "counts": [0, 0]}}, BINS_NEED),
    ({"bins": {"edges": [1.0, 0.0], "counts": [1, 1, 1]}},
     BINS_NEED),
    ({"bins": {"edges": [0.0], "counts": [-1, 3]}}, BINS_NEED),
    ({"bins": {"edges": [0.0], "counts": [0.5, 0.5]}}, BINS_NEED),
    ({"bins": {"edges": [0.0], "counts": [2, 2.5]}}, BINS_NEED),
])
def test_an_unusable_feature_entry_is_refused_naming_the_feature(entry, problem):
    with pytest.raises(ArtifactError) as info:
        parse_statistics(statistics_bytes({"rsi": entry}), ("rsi",), "build")
    assert str(info.value) == f"{WHERE}: features.rsi: {problem}"


# ------------------------------------------------------------------------------------------------ PSI

TWO_BINS = {"bins": {"edges": [0.0], "counts": [30, 70]}}  # training shares 0.3 below 0, 0.7 from 0 up


@pytest.mark.parametrize(("x", "live", "status"), [
    # 3 of 10 below 0 (0.0 itself is above: bins are closed below): the training shares, PSI exactly 0.
    ([-1.0, -1.0, -0.5, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 4.0], [0.3, 0.7], "ok"),
    # 8 below, 2 from 0 up: PSI about 1.12.
    ([-1.0] * 8 + [0.0, 1.0], [0.8, 0.2], "drift"),
    # 5 / 5: PSI about 0.17, a moderate shift, but 10 rows cannot tell it from noise (which reaches 0.58 here).
    ([-1.0] * 5 + [0.0] * 5, [0.5, 0.5], "ok"),
    # 100 / 100: the same PSI, over the 0.14 that noise reaches in 200 rows: warn.
    ([-1.0] * 100 + [0.0] * 100, [0.5, 0.5], "warn"),
    # 4 / 6: PSI about 0.045.
    ([-1.0] * 4 + [0.0] * 6, [0.4, 0.6], "ok"),
])
def test_psi_against_the_training_shares_decides_the_status(x, live, status):
    report = drift_of({"a": TWO_BINS}, column(*x))
    figures = report["features"]["a"]
    assert figures["psi"] == pytest.approx(psi(live, [0.3, 0.7]), abs=1e-12)
    assert (figures["status"], report["status"]) == (status, status)
    # One degree of freedom (two bins): (1 / rows + 1 / 100 reference rows).
    assert figures["psi_noise"] == pytest.approx(1 / len(x) + 0.01)


def test_an_empty_bin_counts_as_a_share_of_one_in_ten_thousand():
    # Every training row was below 0; every live row is above: (1e-4 - 1) ln(1e-4) + (1 - 1e-4) ln(1 / 1e-4).
    report = drift_of({"a": {"bins": {"edges": [0.0], "counts": [1, 0]}}}, column(5.0, 6.0))
    assert report["features"]["a"]["psi"] == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    assert report["features"]["a"]["psi_noise"] == 0.0  # one non-empty training bin: no degrees of freedom


def test_features_with_different_numbers_of_bins_are_scored_each_against_its_own():
    features = {"a": {"bins": {"edges": [0.0], "counts": [50, 50]}},
                "b": {"bins": {"edges": [-1.0, 1.0], "counts": [25, 50, 25]}}}
    # a: 3 below 0, 1 above. b: one row in each outer bin, two in the middle one (-1 is in the middle bin).
    x = [[-1.0, -2.0], [-2.0, -1.0], [-3.0, 0.5], [4.0, 1.0]]
    report = drift_of(features, x)
    assert report["features"]["a"]["psi"] == pytest.approx(psi([0.75, 0.25], [0.5, 0.5]))
    assert report["features"]["b"]["psi"] == pytest.approx(psi([0.25, 0.5, 0.25], [0.25, 0.5, 0.25]), abs=1e-15)
    assert report["features"]["b"]["psi"] == 0.0
    assert report["features"]["b"]["psi_noise"] == pytest.approx(2 * (1 / 4 + 1 / 100))


def test_batches_longer_than_one_chunk_are_binned_whole():
    # 70,000 rows (the binning works in chunks of 65,536): 40,000 below the edge and 30,000 on or above it.
    x = np.concatenate([np.full(40_000, -1.0), np.full(29_999, 2.0), [0.0]])[:, None]
    report = drift_of({"a": {"bins": {"edges": [0.0], "counts": [1, 1]}}}, x)
    assert report["features"]["a"]["psi"] == pytest.approx(psi([4 / 7, 3 / 7], [0.5, 0.5]))
    assert report["rows"] == 70_000


# PSI exactly on a threshold: 2^52 reference rows give shares fine enough to land the sum on 0.1 or 0.25 to
# the last bit (found by a search; each log's argument sits far from a rounding boundary, so any libm agrees).
@pytest.mark.parametrize(("below", "rows", "counts", "threshold", "status"), [
    # The shares 16/27 and 25/28 the search found, in twice the rows: enough to tell these PSIs from noise.
    (32, 54, [3335940371456376, 1167659255914120], 0.1, "warn"),
    (50, 56, [4461949235647522, 41650391722974], 0.25, "drift"),
])
def test_a_psi_exactly_on_a_threshold_takes_the_status_it_names(below, rows, counts, threshold, status):
    expected = [c / 2 ** 52 for c in counts]
    assert psi([below / rows, (rows - below) / rows], expected) == threshold  # the premise, in plain Python
    x = column(*([-1.0] * below + [1.0] * (rows - below)))
    figures = drift_of({"a": {"bins": {"edges": [0.0], "counts": counts}}}, x)["features"]["a"]
    assert (figures["psi"], figures["status"]) == (threshold, status)


# Issue 26: 64 rows drawn from the training distribution reported DRIFT on 3 of 18 features, under a noise
# floor of 0.145 the status ignored. Noise alone stays under (9 + 3 sqrt(18)) (1/n + 1/N) for 10 bins.
DECILE_LIMIT = 9 + 3 * math.sqrt(18)


def deciles(reference: np.ndarray) -> dict[str, Any]:
    """Training bins as convert writes them: the inner deciles, and the reference rows in each bin."""
    edges = np.quantile(reference, np.linspace(0, 1, 11))[1:-1]
    return {"edges": edges.tolist(), "counts": np.bincount(bin_index(reference, edges), minlength=10).tolist()}


def test_a_small_batch_from_the_training_data_is_said_too_small_not_flagged():
    rng = np.random.default_rng(26)
    features = {f"f{j}": {"bins": deciles(rng.standard_normal(2000))} for j in range(18)}
    report = drift_of(features, rng.standard_normal((64, 18)))
    assert max(f["psi"] for f in report["features"].values()) >= 0.25  # the premise: a raw PSI past the threshold
    assert (report["status"], report["drift"], report["warn"]) == ("ok", [], [])
    limit = DECILE_LIMIT * (1 / 64 + 1 / 2000)
    assert all(f["psi_limit"] == pytest.approx(limit) and f["psi"] < limit for f in report["features"].values())
    assert report["small_sample"] == {"psi_limit": pytest.approx(limit),
                                      "rows_needed": math.ceil(1 / (0.1 / DECILE_LIMIT - 1 / 2000))}
    line = table(report)[1]
    assert f"{limit:.3f} in 64 rows" in line and f"{report['small_sample']['rows_needed']:,} rows" in line


def test_a_small_batch_that_really_moved_is_still_flagged():
    rng = np.random.default_rng(26)
    features = {"a": {"bins": deciles(rng.standard_normal(2000))}}
    report = drift_of(features, rng.standard_normal((64, 1)) + 3.0)  # three training sds up
    assert report["features"]["a"]["psi"] > DECILE_LIMIT * (1 / 64 + 1 / 2000)
    assert report["status"] == "drift" and report["small_sample"] is not None


def test_a_batch_large_enough_says_nothing_of_its_size():
    rng = np.random.default_rng(26)
    features = {"a": {"bins": deciles(rng.standard_normal(2000))}}
    rows = math.ceil(1 / (0.1 / DECILE_LIMIT - 1 / 2000))
    assert drift_of(features, rng.standard_normal((rows, 1)))["small_sample"] is None
    assert drift_of(features, rng.standard_normal((rows - 1, 1)))["small_sample"] is not None


def test_with_bins_the_scaler_moments_do_not_decide():
    # Every row sits 10 sd above the training mean, but in the bins' proportions: PSI 0, status ok.
    features = {"a": {"bins": {"edges": [10.0], "counts": [1, 1]}, "mean": 0.0, "scale": 1.0}}
    report = drift_of(features, alternating(9.0, 11.0, 100))
    assert report["features"]["a"]["mean_shift"] == 10.0
    assert (report["features"]["a"]["status"], report["status"]) == ("ok", "ok")


# --------------------------------------------------------------------------------------- training range

@pytest.mark.parametrize(("x", "share", "status"), [
    # the training minimum and maximum themselves are in range
    ([0.0] * 10 + [1.0] * 10, 0.0, "ok"),
    # one of 20 over the maximum: exactly the 5% that warns
    ([0.0] * 10 + [1.0] * 9 + [1.5], 0.05, "warn"),
    ([-0.5] + [0.5] * 19, 0.05, "warn"),
    ([-0.5] + [0.5] * 20, 1 / 21, "ok"),
    ([-0.5, 2.0] + [0.5] * 18, 0.1, "warn"),
])
def test_the_share_outside_the_training_range_warns_from_five_percent(x, share, status):
    report = drift_of({"a": {"min": 0.0, "max": 1.0}}, column(*x))
    assert report["features"]["a"]["out_of_range"] == pytest.approx(share, abs=1e-15)
    assert (report["features"]["a"]["status"], report["status"]) == (status, status)
    assert report["features"]["a"]["psi"] is None and report["features"]["a"]["mean_shift"] is None


@pytest.mark.parametrize("entry", [{"min": 0.0}, {"max": 1.0}, {}])
def test_half_a_range_is_no_range(entry):
    report = drift_of({"a": entry}, column(-5.0, 5.0))
    assert report["features"]["a"] == {"status": "unknown", "psi": None, "psi_noise": None, "psi_limit": None,
                                       "out_of_range": None, "mean_shift": None, "spread_ratio": None, "z": None,
                                       "missing": 0}


# ------------------------------------------------------------------------------ scaler moments (no bins)

MOMENTS = {"mean": 10.0, "scale": 2.0}


@pytest.mark.parametrize(("x", "shift", "spread", "z", "status"), [
    # 144 rows at 10 + 2 * (1.25, -0.75): mean 10.5, sd 2 -> shift 0.25 sd, z = 0.25 * 12 = 3 exactly: warn.
    (alternating(12.5, 8.5, 144), 0.25, 1.0, 3.0, "warn"),
    # 143 rows (one more at the mean 10.5): the same shift, z = 0.25 * sqrt(143) < 3: noise, ok.
    (np.vstack([alternating(12.5, 8.5, 142), [[10.5]]]), 0.25, math.sqrt(142 / 143), 0.25 * math.sqrt(143), "ok"),
    # 36 rows at 10 + 2 * (1.5, -0.5): shift 0.5 sd, z = 0.5 * 6 = 3: drift.
    (alternating(13.0, 9.0, 36), 0.5, 1.0, 3.0, "drift"),
    # the same downwards: shift -0.5 sd, z -3: drift.
    (alternating(7.0, 11.0, 36), -0.5, 1.0, -3.0, "drift"),
    # 0.375 sd (10.75 +- 2) over 400 rows (z 7.5): warn, under the 0.5 that drifts.
    (alternating(12.75, 8.75, 400), 0.375, 1.0, 7.5, "warn"),
])
def test_the_mean_shift_decides_once_it_is_significant(x, shift, spread, z, status):
    figures = drift_of({"a": MOMENTS}, x)["features"]["a"]
    assert figures["mean_shift"] == pytest.approx(shift, abs=1e-12)
    assert figures["spread_ratio"] == pytest.approx(spread)
    assert figures["z"] == pytest.approx(z, abs=1e-12)
    assert figures["status"] == status
    assert figures["psi"] is None and figures["psi_noise"] is None and figures["out_of_range"] is None


def spread_rows(sd: float, n: int) -> np.ndarray:
    """n rows about the training mean 10 (scale 2) with a standard deviation of sd training sds: half at
    +sd, half at -sd, and for odd n one at the mean (the others then a little further out)."""
    a = sd * 2.0 * (math.sqrt(n / (n - 1)) if n % 2 else 1.0)
    return np.array([10.0 + a, 10.0 - a] * (n // 2) + [10.0] * (n % 2))[:, None]


@pytest.mark.parametrize(("sd", "n", "status"), [
    (1.25, 200, "ok"),       # on the warn bound, not past it
    (1.3, 200, "warn"),
    (1.5, 200, "warn"),      # on the drift bound
    (1.6, 200, "drift"),
    (0.75, 200, "warn"),     # narrower: 1 / 0.75 = 1.33
    (0.5, 200, "drift"),     # 1 / 0.5 = 2
    (1.0, 200, "ok"),
    # The significance gate, |ln 2| sqrt(2 (n - 1)) >= 3: 9 degrees of freedom give 2.94, 10 give 3.10.
    (2.0, 10, "ok"),
    (2.0, 11, "drift"),
])
def test_the_spread_ratio_decides_once_it_is_significant(sd, n, status):
    figures = drift_of({"a": MOMENTS}, spread_rows(sd, n))["features"]["a"]
    assert figures["spread_ratio"] == pytest.approx(sd)
    assert figures["mean_shift"] == pytest.approx(0.0, abs=1e-12)
    assert figures["status"] == status


def test_a_spread_exactly_on_the_significance_gate_counts():
    # 15 rows (-1, 1, then 13 zeros): sd sqrt(2 / 15); over this scale a ratio of about 1.763, whose log times
    # sqrt(2 * 14) is 3 to the last bit (the log's argument sits far from a rounding boundary).
    x = column(-1.0, 1.0, *[0.0] * 13)
    scale = 0.20713216322103545
    assert abs(math.log(float(x.std()) / scale)) * math.sqrt(28) == 3.0  # the premise, in plain Python
    figures = drift_of({"a": {"mean": 0.0, "scale": scale}}, x)["features"]["a"]
    assert figures["spread_ratio"] == pytest.approx(1.7628762524941748, rel=1e-15)
    assert figures["status"] == "drift"


@pytest.mark.parametrize(("features", "x"), [
    ({"a": MOMENTS}, [[10.0]]),                                          # one row: log(0) * 0
    ({"a": MOMENTS}, np.full((5, 1), 10.0)),                             # no spread: log(0), 1 / 0
    ({"a": {"mean": 0.0, "scale": 1.0}}, np.full((4, 1), 1e308)),        # the mean overflows
    ({"a": {"mean": 0.0, "scale": 0.0}, "b": {}}, [[1.0, 2.0], [3.0, 4.0]]),  # nothing known
])
def test_the_edge_cases_of_the_figures_raise_no_numpy_warnings(features, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drift_of(features, x)


def test_one_row_has_no_spread_and_does_not_drift_on_it():
    figures = drift_of({"a": MOMENTS}, [[10.0]])["features"]["a"]
    assert (figures["spread_ratio"], figures["mean_shift"], figures["z"], figures["status"]) == (0.0, 0.0, 0.0, "ok")


def test_a_live_constant_drifts_on_its_spread():
    figures = drift_of({"a": MOMENTS}, np.full((50, 1), 10.0))["features"]["a"]
    assert (figures["spread_ratio"], figures["mean_shift"], figures["status"]) == (0.0, 0.0, "drift")


def test_a_mean_that_overflows_is_reported_as_null_and_still_drifts():
    figures = drift_of({"a": {"mean": 0.0, "scale": 1.0}}, np.full((4, 1), 1e308))["features"]["a"]
    assert (figures["mean_shift"], figures["z"], figures["spread_ratio"]) == (None, None, None)
    assert figures["status"] == "drift"
    json.dumps(figures, allow_nan=False)  # no Infinity or NaN in what goes out as JSON


# ----------------------------------------------------------------------------------------- the batch

def test_the_batch_takes_its_worst_feature_and_lists_names_in_training_order():
    features = {"z": {"min": 0.0, "max": 1.0}, "m": MOMENTS, "b": {"bins": {"edges": [0.0], "counts": [1, 1]}},
                "q": {"mean": 1.0, "scale": 0.0}, "a": {"min": 0.0, "max": 1.0}}
    x = np.array([[0.5, 13.0, -1.0, 5.0, 2.0], [0.5, 9.0, 1.0, 5.0, 0.5]] * 18)  # 36 rows
    report = drift_of(features, x)
    # z: in range; m: shift 0.5 sd, z 3 (drift); b: the training shares (ok); q: constant (unknown); a: half out.
    assert {n: f["status"] for n, f in report["features"].items()} == {
        "z": "ok", "m": "drift", "b": "ok", "q": "unknown", "a": "warn"}
    assert list(report["features"]) == ["z", "m", "b", "q", "a"]
    assert (report["status"], report["drift"], report["warn"], report["rows"]) == ("drift", ["m"], ["a"], 36)
    assert report["thresholds"] == {"psi_warn": 0.1, "psi_drift": 0.25, "out_of_range_warn": 0.05,
                                    "mean_shift_warn": 0.25, "mean_shift_drift": 0.5, "spread_warn": 1.25,
                                    "spread_drift": 1.5, "z_significant": 3.0}
    assert report["reference"] is None


def test_drift_names_every_feature_that_drifted_in_training_order():
    features = {"z": {"min": 0.0, "max": 1.0}, "y": MOMENTS, "x": MOMENTS}
    rows = np.array([[0.5, 13.0, 7.0], [0.5, 9.0, 11.0]] * 18)
    report = drift_of(features, rows)
    assert (report["status"], report["drift"], report["warn"]) == ("drift", ["y", "x"], [])


@pytest.mark.parametrize(("x", "status", "warn"), [
    ([[0.5, 5.0], [0.5, 5.0]], "ok", []),
    ([[0.5, 5.0], [2.0, 5.0]], "warn", ["r"]),
])
def test_an_unknown_feature_does_not_change_the_batch_status(x, status, warn):
    report = drift_of({"r": {"min": 0.0, "max": 1.0}, "k": {}}, x)
    assert (report["status"], report["warn"], report["drift"]) == (status, warn, [])
    assert report["features"]["k"]["status"] == "unknown"


def test_a_batch_of_only_unknown_features_is_ok():
    report = drift_of({"k": {}}, [[1.0]])
    assert (report["status"], report["drift"], report["warn"]) == ("ok", [], [])


def test_the_reference_of_the_statistics_is_passed_on():
    stats = statistics({"a": {"min": 0.0, "max": 1.0}}, reference={"rows": 500, "file": "train.csv"})
    report = drift_report(np.array([[0.5]]), stats, ("a",))
    assert report["reference"] == {"rows": 500, "file": "train.csv"}
    assert report["thresholds"] == THRESHOLDS


def test_no_rows_is_refused():
    with pytest.raises(InputError) as info:
        drift_of({"a": MOMENTS}, np.empty((0, 1)))
    assert str(info.value) == "no rows to check for drift."


def test_the_demo_build_names_the_one_feature_moved_by_one_sd(demo_artifacts):
    """The prebuilt demo build records the scaler's mean and scale per feature: rows at mean +- scale are
    quiet; the same rows with one feature moved by one scale drift on that feature alone."""
    stats = json.loads((demo_artifacts / "statistics.json").read_text())["features"]
    ens = runtime.load(demo_artifacts)
    mean = np.array([stats[n]["mean"] for n in ens.feature_names])
    scale = np.array([stats[n]["scale"] for n in ens.feature_names])
    x = mean + scale * np.array([[1.0], [-1.0]] * 20)
    quiet = ens.drift(x)
    assert (quiet["status"], quiet["drift"], quiet["warn"], quiet["rows"]) == ("ok", [], [], 40)
    moved = ens.feature_names.index("macd")
    x[:, moved] += scale[moved]
    report = ens.drift(x)
    assert (report["status"], report["drift"], report["warn"]) == ("drift", ["macd"], [])
    assert report["features"]["macd"]["mean_shift"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- the table

def test_the_table_aligns_every_figure_and_dashes_the_unknown():
    report = {"rows": 12, "status": "drift", "drift": ["a", "b"], "warn": ["c"], "features": {
        "a": {"status": "drift", "psi": 0.31234, "out_of_range": 0.05, "mean_shift": -1.5, "spread_ratio": 2.0},
        "c": {"status": "warn", "psi": None, "out_of_range": None, "mean_shift": None, "spread_ratio": None},
        "long_feature_name": {"status": "unknown"},
    }}
    assert table(report) == [
        "drift on 12 rows: DRIFT (drift: a, b) (warn: c)",
        "feature          status       psi     out  shift sd  spread",
        "a                drift     0.3123   5.00%    -1.500   2.000",
        "c                warn           -       -         -       -",
        "long_feature_name unknown        -       -         -       -",
    ]


def test_the_table_prints_figures_that_are_not_finite_as_python_writes_them():
    # drift_report sends null for these; a report made elsewhere still prints, in lower case.
    report = {"rows": 1, "status": "ok", "drift": [], "warn": [], "features": {
        "a": {"status": "ok", "psi": math.inf, "out_of_range": math.nan, "mean_shift": -math.inf,
              "spread_ratio": math.nan}}}
    assert table(report)[2] == "a                ok           inf    nan%      -inf     nan"


@pytest.mark.parametrize(("drift", "warn", "title"), [
    ([], [], "drift on 3 rows: OK"),
    ([], ["a", "b"], "drift on 3 rows: OK (warn: a, b)"),
    (["b"], [], "drift on 3 rows: OK (drift: b)"),
])
def test_the_table_title_lists_only_what_drifted_or_warns(drift, warn, title):
    assert table({"rows": 3, "status": "ok", "drift": drift, "warn": warn, "features": {}})[0] == title


def test_statistics_with_an_integer_past_pythons_digit_limit_are_refused_as_json():
    raw = b'{"statistics_version": 1, "features": {"rsi": {"min": ' + b"9" * 5000 + b"}}}"
    with pytest.raises(ArtifactError) as info:
        parse_statistics(raw, ("rsi",), "build")
    assert str(info.value).startswith(f"{WHERE}: not valid JSON (")
