"""The referee of `runtime/monitor/compare.py`, with nothing trained: the prebuilt demo build, builds derived
from it by editing its manifest (classes, members and features renamed or reordered, bound to the graph again
as a careful release engineer would), the real onnxruntime, and figures written out by hand. Evaluate:
test_evaluate.py.

Expected values come from `Ensemble.predict` (by class, member and feature name: an independent path from the
index arithmetic of `compare`) or from arithmetic in this file, never from the functions under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forge import rebound, reorder_features, reorder_members
from monitor_rows import CLASSES, Row, as_records, interleaved, rows_by_action, served

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
from runtime.monitor.report import heat_map, histogram, table

# ------------------------------------------------------------------------------------------ builds and rows

def _other_names(manifest: dict[str, Any]) -> None:
    """Classes in another order, members in another order and one renamed (the graph too: `reorder_members`),
    two features swapped (the graph now reads each one's column as the other's) and one renamed."""
    manifest["classes"] = ["BUY", "SELL", "HOLD"]
    manifest["members"]["xgb2"] = manifest["members"].pop("xgboost")
    manifest["ensemble"]["members"] = ["patchtst", "nhits", "lightgbm", "xgb2"]
    order = list(range(len(manifest["feature_names"])))
    order[0], order[8] = 8, 0  # rsi_14 <-> return_1h, each with its own domain
    reorder_features(manifest, order)
    manifest["feature_names"][5] = "bb_pos_v2"


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
    return rows_by_action(old, demo_artifacts)


@pytest.fixture(scope="module")
def mixed(rows: dict[str, list[Row]]) -> list[Row]:
    return interleaved(rows)


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
