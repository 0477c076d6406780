"""The referee of `runtime/monitor/evaluate.py`, with nothing trained: windows and timestamps, the calibration
error and the metrics of labelled rows, and the text and HTML reports, on the prebuilt demo build and the real
onnxruntime. Expected values come from `Ensemble.predict` or from arithmetic in this file, never from the
functions under test."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monitor_rows import CLASSES, Row, as_records, interleaved, rows_by_action, served

import runtime
from runtime.errors import InputError
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
from runtime.monitor.report import heat_map, line_chart, table

T0 = 1772445600.0  # 2026-03-02T10:00:00Z


@pytest.fixture(scope="module")
def old(demo_artifacts: Path) -> runtime.Ensemble:
    return runtime.load(demo_artifacts)


@pytest.fixture(scope="module")
def rows(old: runtime.Ensemble, demo_artifacts: Path) -> dict[str, list[Row]]:
    return rows_by_action(old, demo_artifacts)


@pytest.fixture(scope="module")
def mixed(rows: dict[str, list[Row]]) -> list[Row]:
    return interleaved(rows)


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

