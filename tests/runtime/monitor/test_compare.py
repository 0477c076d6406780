"""The referee of `runtime/monitor/compare.py` and `runtime/monitor/evaluate.py`, with nothing trained: the
prebuilt demo build, builds derived from it by editing its manifest (classes, members and features renamed or
reordered, bound to the graph again as a careful release engineer would), the real onnxruntime, and figures
written out by hand.

Expected values come from `Ensemble.predict` (by class, member and feature name: an independent path from the
index arithmetic of `compare`) or from arithmetic in this file, never from the functions under test.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forge import rebound, reorder_members

import runtime
from runtime import RUN_CHUNK as CHUNK
from runtime.errors import InputError
from runtime.monitor.compare import (
    HIST_EDGES,
    IncomparableError,
    class_order,
    compare,
    confidence_summary,
    gate,
    score_records,
)
from runtime.monitor.compare import html as compare_html
from runtime.monitor.compare import text as compare_text
from runtime.monitor.evaluate import (
    evaluate,
    evaluate_arrays,
    expected_calibration_error,
    metrics,
    parse_timestamp,
    parse_window,
)
from runtime.monitor.evaluate import html as evaluate_html
from runtime.monitor.evaluate import text as evaluate_text
from runtime.monitor.report import heat_map, histogram, line_chart, table

CLASSES = ("SELL", "HOLD", "BUY")
T0 = 1772445600.0  # 2026-03-02T10:00:00Z
Row = dict[str, float]


# ------------------------------------------------------------------------------------------ builds and rows

def _other_names(manifest: dict[str, Any]) -> None:
    """Classes in another order, members in another order and one renamed (the graph too: `reorder_members`),
    two features swapped (the graph now reads each one's column as the other's) and one renamed."""
    manifest["classes"] = ["BUY", "SELL", "HOLD"]
    manifest["members"]["xgb2"] = manifest["members"].pop("xgboost")
    manifest["ensemble"]["members"] = ["patchtst", "nhits", "lightgbm", "xgb2"]
    names = manifest["feature_names"]
    names[0], names[8] = names[8], names[0]  # rsi_14 <-> return_1h: both near 50 in the demo's scaled units
    names[5] = "bb_pos_v2"


def _other_statistics(statistics: dict[str, Any]) -> None:
    statistics["features"]["bb_pos_v2"] = statistics["features"].pop("bb_position")


def _long_class(manifest: dict[str, Any]) -> None:
    manifest["classes"] = ["SELL", "HOLD", "LONG"]


@pytest.fixture(scope="module")
def old(demo_artifacts: Path) -> runtime.Ensemble:
    return runtime.load(demo_artifacts)


@pytest.fixture(scope="module")
def other(demo_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> runtime.Ensemble:
    return runtime.load(rebound(demo_artifacts, tmp_path_factory.mktemp("other") / "b", _other_names,
                                _other_statistics, lambda graph: reorder_members(
                                    graph, ["patchtst", "nhits", "lightgbm", "xgb2"], {"xgboost": "xgb2"})))


@pytest.fixture(scope="module")
def rows(old: runtime.Ensemble, demo_artifacts: Path) -> dict[str, list[Row]]:
    """Rows drawn around the scaler's mean of each feature, grouped by the action the demo build serves."""
    stats = json.loads((demo_artifacts / "statistics.json").read_text())["features"]
    mean = np.array([stats[n]["mean"] for n in old.feature_names])
    scale = np.array([stats[n]["scale"] for n in old.feature_names])
    x = mean + 1.5 * scale * np.random.default_rng(7).normal(size=(300, len(mean)))
    by_action: dict[str, list[Row]] = {c: [] for c in CLASSES}
    for row, p in zip(x, old.predict(x), strict=True):
        by_action[p.action].append(dict(zip(old.feature_names, map(float, row), strict=True)))
    return by_action


@pytest.fixture(scope="module")
def mixed(rows: dict[str, list[Row]]) -> list[Row]:
    """4 SELL, 6 HOLD and 3 BUY rows (for the demo build), interleaved."""
    s, h, b = rows["SELL"][:4], rows["HOLD"][:6], rows["BUY"][:3]
    return [s[0], h[0], b[0], h[1], s[1], h[2], b[1], s[2], h[3], h[4], b[2], s[3], h[5]]


def as_records(rows: list[Row], **columns: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) as a CSV with a header reads them: line 2 holds the first row."""
    return [(i + 2, {**row, **{k: v[i] for k, v in columns.items()}}) for i, row in enumerate(rows)]


def served(ens: runtime.Ensemble, rows: list[Row], renamed: dict[str, str] | None = None) -> list[runtime.Prediction]:
    """What `ens` serves for the rows, read by feature name (`renamed`: the build's name -> the row's name)."""
    renamed = renamed or {}
    return ens.predict([{n: row[renamed.get(n, n)] for n in ens.feature_names} for row in rows])


def summary_by_hand(confidence: list[float]) -> dict[str, Any]:
    c = np.array(confidence, dtype=np.float64)
    tenths = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    counts = [sum(1 for v in confidence if lo <= v < hi or hi == v == 1.0)
              for lo, hi in zip(tenths[:-1], tenths[1:], strict=True)]
    return {"mean": pytest.approx(c.mean()),
            "quantiles": {k: pytest.approx(float(np.quantile(c, q)))
                          for k, q in (("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95))},
            "histogram": {"edges": tenths, "counts": counts}}


# ------------------------------------------------------------------------------------------------ compare

def test_confidence_summary_of_hand_values_counts_edges_into_the_bin_they_open():
    values = [0.0, 0.05, 0.12, 0.2, 0.3, 0.31, 0.4, 0.45, 0.5, 0.55, 0.6, 0.62, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92,
              0.95, 0.99, 1.0]
    shuffled = np.array(values)[np.random.default_rng(3).permutation(21)]
    summary = confidence_summary(shuffled)
    assert summary["mean"] == pytest.approx(sum(values) / 21)
    # 21 sorted values: the q-quantile is the value at position 20 q.
    assert summary["quantiles"] == {"p05": pytest.approx(0.05), "p25": pytest.approx(0.31),
                                    "p50": pytest.approx(0.6), "p75": pytest.approx(0.85), "p95": pytest.approx(0.99)}
    assert summary["histogram"] == {"edges": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                    "counts": [2, 1, 1, 2, 2, 2, 2, 2, 2, 5]}
    assert json.loads(json.dumps(summary)) == summary  # plain floats and ints, as --json writes them


def test_score_records_ignores_every_column_that_is_not_a_feature(old, mixed):
    records = as_records(mixed, label=["HOLD"] * 13, note=["text"] * 13, timestamp=["2026-03-02"] * 13)
    out = score_records(old, records)
    expect = served(old, mixed)
    assert out["label"].tolist() == [CLASSES.index(p.action) for p in expect]
    assert out["probabilities"].tolist() == [[p.probabilities[c] for c in CLASSES] for p in expect]
    assert out["confidence"].tolist() == [p.confidence for p in expect]
    assert out["member_probabilities"].shape == (13, 4, 3)


def test_score_records_refuses_a_column_outside_the_passthrough_by_line(old, mixed):
    records = as_records(mixed[:2], symbol=["A", "B"], note=["x", "y"])
    with pytest.raises(InputError) as info:
        score_records(old, records, passthrough=("symbol",))
    # every row has the column: said once, not once per row (issue 26)
    assert str(info.value) == "unknown column(s) ['note'] (every row)."


def test_score_records_names_the_line_of_a_row_a_member_overflows_on_past_the_first_chunk(old, mixed):
    # Scored CHUNK rows a call: the refusal's row counted from its chunk's start named another line.
    rows = [mixed[i % len(mixed)] for i in range(CHUNK + 3)]
    records = as_records(rows)
    records[CHUNK + 1][1]["bb_position"] = 1e38
    with pytest.raises(InputError) as info:
        score_records(old, records)
    # Refused by the build's input domain (docs/numerics.md) before any member sees it.
    assert str(info.value).startswith(f"line {CHUNK + 3}: feature 'bb_position': 1e+38 is outside [")
    assert str(info.value).endswith("(1 row(s) refused).")


def test_score_records_counts_every_overflowing_row_of_the_input_as_predict_does(old, mixed):
    # Counted per 4,096-row chunk, bad rows on lines 7 and 4,099 read "1 row(s) affected"; predict said 2.
    rows = [mixed[i % len(mixed)] for i in range(CHUNK + 3)]
    records = as_records(rows)
    records[5][1]["bb_position"] = records[CHUNK + 1][1]["bb_position"] = 1e38
    with pytest.raises(InputError) as info:
        score_records(old, records)
    assert str(info.value).startswith("line 7: feature 'bb_position': 1e+38 is outside [")
    assert str(info.value).endswith("(2 row(s) refused).")


def test_a_build_compared_with_itself_moves_nothing(old, rows, demo_artifacts):
    # No BUY rows: its flip rate has no rows to be taken over.
    chosen = rows["SELL"][:3] + rows["HOLD"][:5]
    result = compare(old, old, as_records(chosen, symbol=["X"] * 8))
    assert result["old"] == result["new"] == str(demo_artifacts)
    assert (result["rows"], result["classes"]) == (8, list(CLASSES))
    assert result["features"] == {"only_old": [], "only_new": [], "same_order": True}
    assert result["transitions"] == {"counts": [[3, 0, 0], [0, 5, 0], [0, 0, 0]],
                                     "rates": [[3 / 8, 0.0, 0.0], [0.0, 5 / 8, 0.0], [0.0, 0.0, 0.0]]}
    assert json.dumps(result["transitions"]["counts"]) == "[[3, 0, 0], [0, 5, 0], [0, 0, 0]]"  # counts, not floats
    assert result["flip_rate"] == 0.0
    assert result["flip_rate_by_class"] == {"SELL": 0.0, "HOLD": 0.0, "BUY": None}
    assert result["share"] == {"SELL": {"old": 3 / 8, "new": 3 / 8, "shift": 0.0},
                               "HOLD": {"old": 5 / 8, "new": 5 / 8, "shift": 0.0},
                               "BUY": {"old": 0.0, "new": 0.0, "shift": 0.0}}
    confidence = summary_by_hand([p.confidence for p in served(old, chosen)])
    assert result["confidence"] == {"old": confidence, "new": confidence}
    assert result["ensemble"] == {"mean_abs_move": 0.0, "max_abs_move": 0.0}
    still = {"mean_abs_move": 0.0, "max_abs_move": 0.0}
    assert result["members"] == {"xgboost": still, "lightgbm": still, "nhits": still, "patchtst": still}
    assert list(result["members"]) == ["xgboost", "lightgbm", "nhits", "patchtst"]
    assert (result["members_only_old"], result["members_only_new"]) == ([], [])


@pytest.mark.parametrize("direction", ["demo -> renamed", "renamed -> demo"])
def test_builds_are_matched_by_class_member_and_feature_name(old, other, mixed, direction):
    a, b = (old, other) if direction == "demo -> renamed" else (other, old)
    records = as_records([{**row, "bb_pos_v2": row["bb_position"]} for row in mixed])
    renamed = {"bb_pos_v2": "bb_position"}
    pa, pb = served(a, mixed, renamed), served(b, mixed, renamed)
    classes, n = list(a.classes), len(mixed)
    result = compare(a, b, records)
    assert (result["old"], result["new"], result["rows"], result["classes"]) == (a.path, b.path, n, classes)

    pairs = Counter((p.action, q.action) for p, q in zip(pa, pb, strict=True))
    counts = [[pairs[(c, d)] for d in classes] for c in classes]
    assert 0 < sum(counts[i][i] for i in range(3)) < n, "the swapped features should flip some rows, not all"
    assert result["transitions"] == {"counts": counts, "rates": [[v / n for v in row] for row in counts]}
    flipped = [p.action != q.action for p, q in zip(pa, pb, strict=True)]
    assert result["flip_rate"] == pytest.approx(sum(flipped) / n)
    by_class = {c: [f for f, p in zip(flipped, pa, strict=True) if p.action == c] for c in classes}
    assert result["flip_rate_by_class"] == {c: pytest.approx(sum(f) / len(f)) if f else None
                                            for c, f in by_class.items()}
    share = {c: (sum(p.action == c for p in pa) / n, sum(q.action == c for q in pb) / n) for c in classes}
    assert result["share"] == {c: {"old": pytest.approx(o), "new": pytest.approx(w), "shift": pytest.approx(w - o)}
                               for c, (o, w) in share.items()}
    assert result["confidence"] == {"old": summary_by_hand([p.confidence for p in pa]),
                                    "new": summary_by_hand([q.confidence for q in pb])}

    moved = np.array([[abs(q.probabilities[c] - p.probabilities[c]) for c in classes]
                      for p, q in zip(pa, pb, strict=True)])
    assert result["ensemble"] == {"mean_abs_move": pytest.approx(moved.mean()),
                                  "max_abs_move": pytest.approx(moved.max())}
    shared = [m for m in a.member_order if m in b.member_order]
    assert list(result["members"]) == shared and set(shared) == {"lightgbm", "nhits", "patchtst"}
    for m in shared:
        move = np.array([[abs(q.members[m][c] - p.members[m][c]) for c in classes]
                         for p, q in zip(pa, pb, strict=True)])
        assert result["members"][m] == {"mean_abs_move": pytest.approx(move.mean()),
                                        "max_abs_move": pytest.approx(move.max())}
    assert result["members_only_old"] == [m for m in a.member_order if m not in b.member_order]
    assert result["members_only_new"] == [m for m in b.member_order if m not in a.member_order]
    assert {*result["members_only_old"], *result["members_only_new"]} == {"xgboost", "xgb2"}
    only_old, only_new = ["bb_position"], ["bb_pos_v2"]
    if a is other:
        only_old, only_new = only_new, only_old
    assert result["features"] == {"only_old": only_old, "only_new": only_new, "same_order": False}


def test_builds_with_other_class_sets_are_refused_naming_both(old, mixed, demo_artifacts, tmp_path):
    long = runtime.load(rebound(demo_artifacts, tmp_path / "long", _long_class))
    with pytest.raises(IncomparableError) as info:
        compare(old, long, as_records(mixed))
    assert str(info.value) == (f"{old.path} predicts ['SELL', 'HOLD', 'BUY'], {long.path} predicts ['SELL', "
                               f"'HOLD', 'LONG']: different class sets, so no action of one maps onto an action of "
                               f"the other; compare builds with the same classes.")


@pytest.mark.parametrize(("old_classes", "new_classes", "expect"), [
    (("SELL", "HOLD"), ("SELL", "HOLD", "HOLD"), None),  # the same set, one name twice: still refused
    (("SELL", "HOLD", "BUY"), ("SELL", "BUY"), None),
    (("SELL", "HOLD", "BUY"), ("HOLD", "BUY", "SELL"), [2, 0, 1]),
])
def test_class_order_maps_each_old_class_to_its_index_in_new(old_classes, new_classes, expect):
    if expect is None:
        with pytest.raises(IncomparableError, match=r"^a/ predicts .* b/ predicts .*: different class sets"):
            class_order(old_classes, new_classes, "a/", "b/")
    else:
        assert class_order(old_classes, new_classes, "a/", "b/") == expect


def hand_result(classes: tuple[str, str, str] = CLASSES) -> dict[str, Any]:
    """8 rows: the first class 2 kept + 1 flipped, the second 3 kept + 2 flipped, the third never served by old."""
    s, h, b = classes
    return {
        "old": "builds/a", "new": "builds/b", "rows": 8, "classes": list(classes),
        "features": {"only_old": [], "only_new": [], "same_order": True},
        "transitions": {"counts": [[2, 1, 0], [1, 3, 1], [0, 0, 0]],
                        "rates": [[0.25, 0.125, 0.0], [0.125, 0.375, 0.125], [0.0, 0.0, 0.0]]},
        "flip_rate": 0.375, "flip_rate_by_class": {s: 1 / 3, h: 0.4, b: None},
        "share": {s: {"old": 0.375, "new": 0.375, "shift": 0.0}, h: {"old": 0.625, "new": 0.5, "shift": -0.125},
                  b: {"old": 0.0, "new": 0.125, "shift": 0.125}},
        "confidence": {
            "old": {"mean": 0.7125, "quantiles": {"p05": 0.51, "p25": 0.6, "p50": 0.725, "p75": 0.8, "p95": 0.93},
                    "histogram": {"edges": list(HIST_EDGES), "counts": [0, 0, 0, 0, 0, 2, 1, 3, 1, 1]}},
            "new": {"mean": 0.6, "quantiles": {"p05": 0.41, "p25": 0.5, "p50": 0.6, "p75": 0.7, "p95": 0.79},
                    "histogram": {"edges": list(HIST_EDGES), "counts": [0, 0, 0, 0, 2, 2, 2, 2, 0, 0]}}},
        "ensemble": {"mean_abs_move": 0.01234, "max_abs_move": 0.45678},
        "members": {"xgboost": {"mean_abs_move": 0.01, "max_abs_move": 0.2},
                    "nhits": {"mean_abs_move": 0.0, "max_abs_move": 0.0}},
        "members_only_old": [], "members_only_new": [],
    }


@pytest.mark.parametrize(("flip", "shift", "failures"), [
    (None, None, []),
    (0.375, 0.125, []),  # a figure exactly at its limit passes
    (0.3, None, ["flip rate 37.50% > --max-flip-rate 30.00%"]),
    (None, 0.1, ["HOLD share 62.50% -> 50.00% (shift -12.50%) exceeds --max-share-shift 10.00%",
                 "BUY share 0.00% -> 12.50% (shift +12.50%) exceeds --max-share-shift 10.00%"]),
    (0.3, 0.1, ["flip rate 37.50% > --max-flip-rate 30.00%",
                "HOLD share 62.50% -> 50.00% (shift -12.50%) exceeds --max-share-shift 10.00%",
                "BUY share 0.00% -> 12.50% (shift +12.50%) exceeds --max-share-shift 10.00%"]),
])
def test_gate_names_each_figure_past_its_limit(flip, shift, failures):
    assert gate(hand_result(), flip, shift) == failures


def test_compare_text_prints_the_matrix_shares_confidence_and_moves():
    assert compare_text(hand_result()) == [
        "8 rows: builds/a (rows) -> builds/b (columns)",
        "old \\ new           SELL           HOLD            BUY",
        "SELL           2  25.0%       1  12.5%       0   0.0%",
        "HOLD           1  12.5%       3  37.5%       1  12.5%",
        "BUY            0   0.0%       0   0.0%       0   0.0%",
        "flip rate 37.50%; by old class: SELL 33.33%, HOLD 40.00%, BUY -",
        "share old -> new: SELL 37.5% -> 37.5% (+0.0%), HOLD 62.5% -> 50.0% (-12.5%), BUY 0.0% -> 12.5% (+12.5%)",
        "confidence old: mean 0.713, p05 0.510, p25 0.600, p50 0.725, p75 0.800, p95 0.930",
        "confidence new: mean 0.600, p05 0.410, p25 0.500, p50 0.600, p75 0.700, p95 0.790",
        "ensemble probabilities moved: mean 0.0123, max 0.4568",
        "  member xgboost    mean 0.0100, max 0.2000",
        "  member nhits      mean 0.0000, max 0.0000",
    ]


def test_compare_text_widens_the_columns_for_a_long_class_and_lists_what_one_build_lacks():
    result = hand_result(("SELL", "HOLD", "STRONG_BUY"))
    result["members_only_old"], result["members_only_new"] = ["patchtst", "lightgbm"], []
    result["features"] = {"only_old": ["adx_14"], "only_new": [], "same_order": False}
    lines = compare_text(result)
    assert lines[1:5] == [
        "old \\ new                SELL              HOLD        STRONG_BUY",
        "SELL                 2  25.0%          1  12.5%          0   0.0%",
        "HOLD                 1  12.5%          3  37.5%          1  12.5%",
        "STRONG_BUY           0   0.0%          0   0.0%          0   0.0%",
    ]
    assert lines[-2:] == ["  members only in old: patchtst, lightgbm",
                          "features only in old: ['adx_14'], only in new: []"]
    result["members_only_old"], result["members_only_new"] = [], ["xgb2"]
    result["features"] = {"only_old": [], "only_new": ["bb_pos_v2"], "same_order": False}
    assert compare_text(result)[-2:] == ["  members only in new: xgb2",
                                         "features only in old: [], only in new: ['bb_pos_v2']"]


def test_compare_text_refuses_a_matrix_whose_counts_and_rates_disagree():
    result = hand_result()
    result["transitions"]["rates"][1] = [0.125, 0.375]  # a row cut short: printing it would drop a column
    with pytest.raises(ValueError, match="zip"):
        compare_text(result)


def test_compare_html_holds_the_verdict_heat_map_shares_histogram_and_moves():
    result = hand_result()
    result["members_only_new"] = ["xgb2"]
    page = compare_html(result, ["flip rate <b> & more", "second"])
    assert page.startswith("<!DOCTYPE html>") and "<title>ensemble-onnx compare</title>" in page
    assert ("<p>8 rows. old: <code>builds/a</code>, new: <code>builds/b</code>. Flip rate <b>37.50%</b>.</p>"
            in page)
    assert "<p class='fail'>flip rate &lt;b&gt; &amp; more<br>second</p>" in page
    assert heat_map(list(CLASSES), list(CLASSES), result["transitions"]["counts"], "old \\ new") in page
    assert table(["class", "old share", "new share", "shift", "flip rate (old class)"],
                 [["SELL", "37.50%", "37.50%", "+0.00%", "33.33%"], ["HOLD", "62.50%", "50.00%", "-12.50%", "40.00%"],
                  ["BUY", "0.00%", "12.50%", "+12.50%", "-"]]) in page
    # Each side's histogram as shares of the rows: counts / 8.
    assert histogram({"old": [0, 0, 0, 0, 0, 0.25, 0.125, 0.375, 0.125, 0.125],
                      "new": [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0]}, list(HIST_EDGES)) in page
    assert table(["build", "mean", "p05", "p25", "p50", "p75", "p95"],
                 [["old", "0.713", "0.510", "0.600", "0.725", "0.800", "0.930"],
                  ["new", "0.600", "0.410", "0.500", "0.600", "0.700", "0.790"]]) in page
    assert table(["member", "mean |move|", "max |move|"],
                 [["xgboost", "0.0100", "0.2000"], ["nhits", "0.0000", "0.0000"], ["xgb2", "only in new", ""]]) in page
    headings = ("<h2>Actions, old (rows) to new (columns)</h2>", "<h2>Class shares</h2>", "<h2>Confidence</h2>",
                "<h2>How far the probabilities moved</h2>")
    assert [h for h in headings if f"\n{h}\n" not in page] == []  # each heading a line of its own
    assert "Flip rate <b>37.50%</b>.</p>\n<p class='fail'>" in page
    promoted = compare_html(result)  # no failures: an empty line where the verdict was
    assert "Flip rate <b>37.50%</b>.</p>\n\n<h2>Actions, old (rows) to new (columns)</h2>\n" in promoted
    assert "class='fail'" not in promoted


# ----------------------------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize(("text", "seconds"), [
    (" 2 h ", 7200), ("15 min", 900), ("2w", 1209600), ("1m", 60), ("365000d", 365000 * 86400),
])
def test_a_window_is_a_count_and_a_unit(text, seconds):
    assert parse_window(text) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("0h", "window '0h': expected a positive count and a unit, one of ['s', 'm', 'min', 'h', 'd', 'w'] (say 1d or "
           "6h)."),
    ("00d", "window '00d': expected a positive count and a unit, one of ['s', 'm', 'min', 'h', 'd', 'w'] (say 1d "
            "or 6h)."),
    ("1.5h", "window '1.5h': expected a positive count and a unit, one of ['s', 'm', 'min', 'h', 'd', 'w'] (say 1d "
             "or 6h)."),
    ("1d2", "window '1d2': expected a positive count and a unit, one of ['s', 'm', 'min', 'h', 'd', 'w'] (say 1d "
            "or 6h)."),
    ("365001d", "window '365001d': longer than 1000 years; one window covers any history then, so leave --window "
                "out."),
    ("52143w", "window '52143w': longer than 1000 years; one window covers any history then, so leave --window "
               "out."),
])
def test_a_window_that_is_no_positive_count_and_unit_or_too_long_is_refused_by_text(text, message):
    with pytest.raises(InputError) as info:
        parse_window(text)
    assert str(info.value) == message


EAST = timezone(timedelta(hours=2))


@pytest.mark.parametrize(("value", "seconds"), [
    (datetime(2026, 3, 2, 10, tzinfo=timezone.utc), T0),
    (datetime(2026, 3, 2, 10), T0),                       # a naive time is UTC
    (datetime(2026, 3, 2, 12, tzinfo=EAST), T0),
    (int(T0), T0), (T0 + 0.5, T0 + 0.5), (np.float64(T0), T0),
    ("2026-03-02T10:00:00Z", T0), (" 2026-03-02 10:00:00 ", T0), ("2026-03-02T12:00:00+02:00", T0),
    ("2026-03-02", T0 - 10 * 3600), ("2026-03-02Z", T0 - 10 * 3600),
    (-62135596800, -62135596800.0),                       # 0001-01-01T00:00:00Z, the first second a date names
])
def test_a_timestamp_is_seconds_since_the_epoch_in_utc(value, seconds):
    assert parse_timestamp(value, 7) == seconds


@pytest.mark.parametrize(("value", "says"), [
    ("soon", "line 7, column 'timestamp': 'soon' is not an ISO 8601 time."),
    ("", "line 7, column 'timestamp': '' is not an ISO 8601 time."),
    (True, "line 7, column 'timestamp': True is not a time."),
    (None, "line 7, column 'timestamp': None is not a time."),
    (float("nan"), "line 7, column 'timestamp': nan is not a time."),
    (float("inf"), "line 7, column 'timestamp': inf is not a time."),
    (1e20, "line 7, column 'timestamp': 1e+20 is outside the years 1 to 9999."),
    (-62135596801, "line 7, column 'timestamp': -62135596801 is outside the years 1 to 9999."),
    (253402300800, "line 7, column 'timestamp': 253402300800 is outside the years 1 to 9999."),  # 10000-01-01
    ("0001-01-01T00:00:00+01:00", "line 7, column 'timestamp': '0001-01-01T00:00:00+01:00' is outside the years 1 "
                                  "to 9999."),
    (datetime(1, 1, 1, tzinfo=EAST), "line 7, column 'timestamp': datetime.datetime(1, 1, 1, 0, 0, tzinfo="
                                     "datetime.timezone(datetime.timedelta(seconds=7200))) is outside the years 1 "
                                     "to 9999."),
])
def test_a_timestamp_that_names_no_date_is_refused_by_line(value, says):
    with pytest.raises(InputError) as info:
        parse_timestamp(value, 7)
    assert str(info.value) == says


@pytest.fixture
def host_far_east(monkeypatch: pytest.MonkeyPatch):
    """The host's local time 14 hours ahead of UTC (POSIX TZ writes the offset with the sign inverted)."""
    monkeypatch.setenv("TZ", "UTC-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("value", "seconds"), [
    ("2026-03-02 10:00:00", T0), (datetime(2026, 3, 2, 10), T0),
    (253402300799, 253402300799.0), ("9999-12-31T23:59:59", 253402300799.0),  # the last second of 9999, UTC
])
def test_naive_times_are_utc_whatever_the_host_zone(host_far_east, value, seconds):
    assert datetime.fromtimestamp(T0).hour == 0  # 10:00 UTC is midnight in the host's zone
    assert parse_timestamp(value, 7) == seconds


# Seven rows, one per bin of the top probability except bin 9, which holds two (1.0 wrong, 0.95 right).
ECE_PROBABILITIES = np.array([[0.05, 0.03, 0.02], [0.15, 0.10, 0.10], [0.25, 0.30, 0.45], [0.20, 0.50, 0.30],
                              [0.10, 0.05, 0.85], [0.00, 1.00, 0.00], [0.95, 0.03, 0.02]])
ECE_LABELS = np.array([0, 1, 2, 2, 2, 0, 0])


def test_calibration_error_weighs_each_bin_of_the_top_probability_by_its_rows():
    # per bin |accuracy - mean top probability|: 0: |1 - .05|, 1: |0 - .15|, 4: |1 - .45|, 5: |0 - .5|,
    # 8: |1 - .85|, 9: two rows, |.5 - .975| weighed twice.
    by_hand = (0.95 + 0.15 + 0.55 + 0.5 + 0.15 + 2 * 0.475) / 7
    assert expected_calibration_error(ECE_PROBABILITIES, ECE_LABELS) == pytest.approx(by_hand)
    # Five bins of 0.2: [.05 right, .15 wrong] | [.45 right, .5 wrong] | [.85 right, 1.0 wrong, .95 right]
    five = (2 * abs(0.5 - 0.1) + 2 * abs(0.5 - 0.475) + 3 * abs(2 / 3 - 2.8 / 3)) / 7
    assert expected_calibration_error(ECE_PROBABILITIES, ECE_LABELS, bins=5) == pytest.approx(five)


def test_metrics_name_no_precision_for_an_action_never_given_and_no_recall_for_a_label_never_seen():
    classes = ("A", "B", "C", "D")
    labels = np.array([0, 0, 1, 2, 2, 1])     # D is never a label
    actions = np.array([0, 1, 1, 0, 3, 1])    # C is never an action
    out = metrics(labels, actions, ECE_PROBABILITIES[:6], classes)
    assert out["rows"] == 6
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert json.dumps(out["confusion"]) == "[[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]"  # counts
    assert out["precision"] == {"A": 0.5, "B": pytest.approx(2 / 3), "C": None, "D": 0.0}
    assert out["recall"] == {"A": 0.5, "B": 1.0, "C": 0.0, "D": None}
    assert out["action_mix"] == pytest.approx({"A": 2 / 6, "B": 3 / 6, "C": 0.0, "D": 1 / 6})
    assert out["label_mix"] == pytest.approx({"A": 2 / 6, "B": 2 / 6, "C": 2 / 6, "D": 0.0})
    # argmax 0,0,2,1,2,1 against labels 0,0,1,2,2,1: the ECE of the top probability, not of the actions.
    assert out["ece"] == pytest.approx((0.95 + 0.85 + 0.45 + 0.5 + 0.15 + 0.0) / 6)


def test_windows_come_in_time_order_and_only_with_a_window_and_timestamps():
    labels, actions = np.array([0, 1, 2, 0]), np.array([0, 1, 1, 1])
    probabilities = ECE_PROBABILITIES[[0, 3, 4, 6]]
    stamps = T0 + np.array([7300.0, 10.0, 3700.0, 20.0])  # hours 12, 10, 11, 10
    assert set(evaluate_arrays(labels, actions, probabilities, CLASSES)) == {"classes", "overall"}
    assert set(evaluate_arrays(labels, actions, probabilities, CLASSES, stamps)) == {"classes", "overall"}
    assert set(evaluate_arrays(labels, actions, probabilities, CLASSES, None, 3600)) == {"classes", "overall"}
    result = evaluate_arrays(labels, actions, probabilities, CLASSES, stamps, 3600)
    assert result["window_seconds"] == 3600 and result["classes"] == list(CLASSES)
    assert [(w["start"], w["rows"], w["accuracy"]) for w in result["windows"]] == [
        ("2026-03-02T10:00:00+00:00", 2, 0.5), ("2026-03-02T11:00:00+00:00", 1, 0.0),
        ("2026-03-02T12:00:00+00:00", 1, 1.0)]
    assert result["windows"][0]["confusion"] == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_a_window_reaching_back_before_year_one_is_named_by_its_first_row():
    year_one = -62135596800.0  # 0001-01-01T00:00:00Z; its week, aligned to 1970, began in year 0
    stamps = np.array([year_one + 86400, year_one])
    result = evaluate_arrays(np.array([0, 1]), np.array([0, 1]), ECE_PROBABILITIES[:2], CLASSES, stamps, 7 * 86400)
    assert [(w["start"], w["rows"]) for w in result["windows"]] == [("0001-01-01T00:00:00+00:00", 2)]


@pytest.fixture(scope="module")
def labelled(mixed: list[Row]) -> tuple[list[Row], list[str]]:
    """The 13 mixed rows labelled by hand: the action served, but another on five rows."""
    served_actions = ["SELL", "HOLD", "BUY", "HOLD", "SELL", "HOLD", "BUY", "SELL", "HOLD", "HOLD", "BUY", "SELL",
                      "HOLD"]
    labels = list(served_actions)
    for i, label in ((1, "BUY"), (2, "SELL"), (4, "HOLD"), (8, "SELL"), (12, "BUY")):
        labels[i] = label
    return mixed, labels


def ece_by_hand(probabilities: list[list[float]], labels: list[int]) -> float:
    bins: dict[int, list[tuple[float, bool]]] = {}
    for p, label in zip(probabilities, labels, strict=True):
        top = max(p)
        bins.setdefault(min(int(top * 10), 9), []).append((top, p.index(top) == label))
    return sum(len(b) / len(labels) * abs(sum(ok for _, ok in b) / len(b) - sum(t for t, _ in b) / len(b))
               for b in bins.values())


def test_evaluate_scores_labelled_records_against_a_hand_count(old, labelled, demo_artifacts):
    rows, labels = labelled
    predictions = served(old, rows)
    assert [p.action for p in predictions] == ["SELL", "HOLD", "BUY", "HOLD", "SELL", "HOLD", "BUY", "SELL", "HOLD",
                                               "HOLD", "BUY", "SELL", "HOLD"]
    # No --window: the timestamps are carried and never read.
    records = as_records(rows, label=labels, symbol=["BTC"] * 13, timestamp=["whenever"] * 13)
    result = evaluate(old, records)
    assert set(result) == {"artifacts", "window", "classes", "overall"}
    assert (result["artifacts"], result["window"], result["classes"]) == (str(demo_artifacts), None, list(CLASSES))
    pairs = Counter(zip(labels, (p.action for p in predictions), strict=True))
    o = result["overall"]
    assert o["rows"] == 13 and o["accuracy"] == pytest.approx(8 / 13)
    assert o["confusion"] == [[pairs[(a, b)] for b in CLASSES] for a in CLASSES]
    assert o["confusion"] == [[3, 1, 1], [1, 3, 0], [0, 2, 2]]
    assert o["ece"] == pytest.approx(ece_by_hand([[p.probabilities[c] for c in CLASSES] for p in predictions],
                                                 [CLASSES.index(c) for c in labels]))


def test_evaluate_per_window_reads_every_kind_of_timestamp(old, labelled):
    rows, labels = labelled
    stamps: list[Any] = ["2026-03-02T10:00:00Z", T0 + 60, "2026-03-02 10:30:00", datetime(2026, 3, 2, 10, 59),
                         int(T0) + 3600, "2026-03-02T13:10:00+02:00", T0 + 5000, "2026-03-02T11:59:59",
                         T0 + 2 * 3600, T0 + 2 * 3600 + 1, "2026-03-02T12:30:00+00:00", T0 + 3 * 3600 - 1,
                         datetime(2026, 3, 2, 14, 59, tzinfo=EAST)]
    result = evaluate(old, as_records(rows, label=labels, timestamp=stamps), window="1h")
    assert (result["window"], result["window_seconds"]) == ("1h", 3600)
    # Rows 0-3 in 10:00, 4-7 in 11:00, 8-12 in 12:00; wrong labels at rows 1, 2 | 4 | 8, 12.
    assert [(w["start"], w["rows"], w["accuracy"]) for w in result["windows"]] == [
        ("2026-03-02T10:00:00+00:00", 4, 0.5), ("2026-03-02T11:00:00+00:00", 4, 0.75),
        ("2026-03-02T12:00:00+00:00", 5, 0.6)]


@pytest.mark.parametrize(("bad", "message"), [
    ([0, 2, 4, 6, 7], "line(s) [2, 4, 6, 8, 9]: column 'label' must name one of ['SELL', 'HOLD', 'BUY']."),
    ([0, 2, 4, 6, 7, 12], "line(s) [2, 4, 6, 8, 9] ...: column 'label' must name one of ['SELL', 'HOLD', 'BUY']."),
])
def test_evaluate_refuses_rows_whose_label_names_no_class_by_line(old, labelled, bad, message):
    rows, labels = labelled
    records = as_records(rows, label=["sell" if i in bad else c for i, c in enumerate(labels)])
    with pytest.raises(InputError) as info:
        evaluate(old, records)
    assert str(info.value) == message
    del records[3][1]["label"]  # a missing label is named as well
    with pytest.raises(InputError, match=r"^line\(s\) \[2, 4, 5, 6, 8\]"):
        evaluate(old, records)


def test_evaluate_per_window_needs_a_timestamp_on_every_row(old, labelled):
    rows, labels = labelled
    stamps: list[Any] = [T0 + i for i in range(13)]
    for i in (1, 3, 4, 6, 9, 11):
        stamps[i] = "" if i % 2 else None
    records = as_records(rows, label=labels, timestamp=stamps)
    del records[12][1]["timestamp"]
    with pytest.raises(InputError) as info:
        evaluate(old, records, window="1d")
    assert str(info.value) == "line(s) [3, 5, 6, 8, 11]: --window needs a 'timestamp' on every row."
    assert evaluate(old, records)["overall"]["rows"] == 13  # without a window nothing reads them


def test_evaluate_names_the_line_of_a_bad_timestamp_and_a_bad_window(old, labelled):
    rows, labels = labelled
    stamps: list[Any] = [T0] * 13
    stamps[4] = "after lunch"
    with pytest.raises(InputError) as info:
        evaluate(old, as_records(rows, label=labels, timestamp=stamps), window="1d")
    assert str(info.value) == "line 6, column 'timestamp': 'after lunch' is not an ISO 8601 time."
    with pytest.raises(InputError, match=r"^window '0d': expected a positive count"):
        evaluate(old, as_records(rows, label=labels, timestamp=[T0] * 13), window="0d")


@pytest.mark.parametrize("column", ["symbol", "timestamp", "note"])
def test_evaluate_carries_symbol_label_and_timestamp_and_refuses_any_other_column(old, labelled, column):
    rows, labels = labelled
    records = as_records(rows[:2], label=labels[:2], **{column: ["2026-03-02T10:00:00Z"] * 2})
    if column == "note":
        with pytest.raises(InputError, match=r"^unknown column\(s\) \['note'\] \(every row\)\.$"):
            evaluate(old, records)
    else:
        assert evaluate(old, records)["overall"]["rows"] == 2


def hand_evaluation(windows: bool) -> dict[str, Any]:
    overall = {"rows": 8, "accuracy": 0.625, "ece": 0.04321,
               "precision": {"SELL": 0.5, "HOLD": 0.75, "BUY": None},
               "recall": {"SELL": 1.0, "HOLD": 0.6, "BUY": 0.0},
               "confusion": [[1, 0, 0], [1, 3, 1], [0, 1, 0]],
               "action_mix": {"SELL": 0.25, "HOLD": 0.5, "BUY": 0.125},
               "label_mix": {"SELL": 0.125, "HOLD": 0.625, "BUY": 0.25}}
    result: dict[str, Any] = {"artifacts": "builds/<a>", "window": "1d" if windows else None,
                              "classes": list(CLASSES), "overall": overall}
    if windows:
        result["window_seconds"] = 86400
        result["windows"] = [
            {**overall, "start": "2026-03-01T00:00:00+00:00", "rows": 3, "accuracy": 1.0, "ece": 0.1,
             "action_mix": {"SELL": 1 / 3, "HOLD": 2 / 3, "BUY": 0.0}, "recall": {"SELL": 1.0, "HOLD": 1.0,
                                                                                 "BUY": None}},
            {**overall, "start": "2026-03-02T00:00:00+00:00", "rows": 5, "accuracy": 0.4, "ece": 0.25,
             "action_mix": {"SELL": 0.2, "HOLD": 0.4, "BUY": 0.4}, "recall": {"SELL": None, "HOLD": 0.5,
                                                                             "BUY": 0.0}}]
    return result


def test_evaluate_text_prints_the_overall_figures_then_one_line_per_window():
    overall = [
        "8 labelled rows: accuracy 62.50%, calibration error (ECE) 0.0432",
        "  SELL: precision 50.0% recall 100.0%, HOLD: precision 75.0% recall 60.0%, BUY: precision - recall 0.0%",
        "  action mix SELL 25.0%, HOLD 50.0%, BUY 12.5%; label mix SELL 12.5%, HOLD 62.5%, BUY 25.0%",
        "  confusion (rows: label, columns: action): SELL=[1, 0, 0]  HOLD=[1, 3, 1]  BUY=[0, 1, 0]",
    ]
    assert evaluate_text(hand_evaluation(windows=False)) == overall
    assert evaluate_text(hand_evaluation(windows=True)) == overall + [
        "2026-03-01T00:00:00+00:00  rows      3  accuracy 100.00%  ece 0.1000  SELL 33.3% HOLD 66.7% BUY 0.0%",
        "2026-03-02T00:00:00+00:00  rows      5  accuracy 40.00%  ece 0.2500  SELL 20.0% HOLD 40.0% BUY 40.0%",
    ]


def test_evaluate_text_refuses_a_confusion_matrix_short_of_a_class():
    result = hand_evaluation(windows=False)
    result["overall"]["confusion"] = [[1, 0, 0], [1, 3, 1]]
    with pytest.raises(ValueError, match="zip"):
        evaluate_text(result)


def test_evaluate_html_holds_the_confusion_the_class_table_and_the_trend_per_window():
    plain = evaluate_html(hand_evaluation(windows=False))
    assert plain.startswith("<!DOCTYPE html>") and "<title>ensemble-onnx evaluate</title>" in plain
    assert ("<p>8 labelled rows scored by <code>builds/&lt;a&gt;</code>: accuracy <b>62.50%</b>, calibration error "
            "(ECE) <b>0.0432</b>.</p>") in plain
    assert "</p>\n<h2>Confusion (rows: realised label, columns: action)</h2>\n<table>" in plain
    assert heat_map(list(CLASSES), list(CLASSES), [[1, 0, 0], [1, 3, 1], [0, 1, 0]], "label \\ action") in plain
    assert table(["class", "precision", "recall", "action share", "label share"],
                 [["SELL", "50.0%", "100.0%", "25.0%", "12.5%"], ["HOLD", "75.0%", "60.0%", "50.0%", "62.5%"],
                  ["BUY", "-", "0.0%", "12.5%", "25.0%"]]) in plain
    assert "<svg" not in plain and "Per window" not in plain
    paged = evaluate_html(hand_evaluation(windows=True))
    assert paged.startswith(plain.removesuffix("\n</body></html>\n"))  # the same overall part, windows after it
    assert "<h2>Per window of 1d</h2>" in paged
    starts = ["2026-03-01 00:00", "2026-03-02 00:00"]
    assert line_chart(starts, {"accuracy": [1.0, 0.4], "ECE": [0.1, 0.25], "SELL share": [1 / 3, 0.2],
                               "HOLD share": [2 / 3, 0.4], "BUY share": [0.0, 0.4]}) in paged
    assert table(["window", "rows", "accuracy", "ece", "SELL recall", "HOLD recall", "BUY recall"],
                 [["2026-03-01 00:00", 3, "100.0%", "0.1000", "100.0%", "100.0%", "-"],
                  ["2026-03-02 00:00", 5, "40.0%", "0.2500", "-", "50.0%", "0.0%"]]) in paged
