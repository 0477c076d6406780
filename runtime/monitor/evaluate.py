"""How a serving build did once outcomes are known: rows of features with the realised `label` (a class
name) and optionally a `timestamp`, scored by the build and set against the labels, overall and per time
window, so that degradation shows as a trend. Runtime only (onnxruntime + numpy).

Figures, each for the action the build serves (after its decision policy):
accuracy; per class precision (of the rows given that action, the share whose label it was) and recall (of
the rows with that label, the share given it), None where the denominator is empty; the confusion matrix
(rows: realised label, columns: action); the action mix and label mix (shares). `ece` is the top-label
expected calibration error of the ensemble probabilities: rows put in 10 bins of their highest probability
([0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]), and per bin |accuracy of the argmax - mean highest probability|,
weighted by the bin's share of rows; the same definition `convert --calibrate` reports.

Timestamps: ISO 8601 text (a naive time is UTC), or numbers (seconds since 1970-01-01 UTC). Windows are
aligned to the epoch in UTC (a `1d` window runs midnight to midnight UTC).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..records import CsvText, header_problem, parse_number
from .compare import score_records
from .report import Records, esc, heat_map, line_chart, page, table

if TYPE_CHECKING:
    from .. import Ensemble

ECE_BINS = 10
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW = 1000 * 365 * 86400  # seconds


def parse_window(text: str) -> int:
    """'1d', '6h', '15m' (or '15min'), '30s', '1w' -> seconds; InputError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|min|m|h|d|w)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise InputError(f"window {text!r}: expected a positive count and a unit, one of {list(UNITS)} (say 1d or 6h).")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds > MAX_WINDOW:  # windows are float arithmetic on timestamps: a 400-digit count overflows it
        raise InputError(f"window {text!r}: longer than {MAX_WINDOW // (365 * 86400)} years; one window covers "
                         f"any history then, so leave --window out.")
    return seconds


def parse_timestamp(value: Any, line: int) -> float:
    """Seconds since the epoch, UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return _as_date(float(value), value, line)
    elif isinstance(value, CsvText) and _number(value) is not None:  # a CSV cell of epoch seconds
        return parse_timestamp(_number(value), line)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"line {line}, column 'timestamp': {value!r} is not an ISO 8601 time.") from None
    else:
        raise InputError(f"line {line}, column 'timestamp': {value!r} is not a time.")
    # An aware time's timestamp() is arithmetic on its fields and its UTC offset (which datetime keeps within a
    # day): it raises for no date. One that names no date (0001-01-01 east of UTC is in year 0): _as_date.
    seconds = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    return _as_date(seconds, value, line)


def _number(cell: str) -> float | None:
    try:
        return parse_number(cell)
    except ValueError:
        return None


def _as_date(seconds: float, value: Any, line: int) -> float:
    """Seconds that name a date (windows are printed as dates), or InputError by line."""
    try:
        datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise InputError(f"line {line}, column 'timestamp': {value!r} is outside the years 1 to 9999.") from None
    return seconds


def _window_start(start: float, timestamps: np.ndarray) -> str:
    try:
        return datetime.fromtimestamp(start, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):  # a window reaching back before year 1: named by its first row
        return datetime.fromtimestamp(float(timestamps.min()), timezone.utc).isoformat()


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    return float(sum((which == b).mean() * abs((predicted[which == b] == labels[which == b]).mean()
                                                - confidence[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def metrics(labels: np.ndarray, actions: np.ndarray, probabilities: np.ndarray,
            classes: Sequence[str]) -> dict[str, Any]:
    """The figures of one set of rows (see the module docstring); labels and actions are class indices."""
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, actions), 1)
    given, realised = confusion.sum(axis=0), confusion.sum(axis=1)
    return {
        "rows": n,
        "accuracy": float(np.trace(confusion) / n),
        "precision": {c: (float(confusion[i, i] / given[i]) if given[i] else None) for i, c in enumerate(classes)},
        "recall": {c: (float(confusion[i, i] / realised[i]) if realised[i] else None) for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(probabilities, labels),
        "action_mix": {c: float(given[i] / n) for i, c in enumerate(classes)},
        "label_mix": {c: float(realised[i] / n) for i, c in enumerate(classes)},
    }


def evaluate_arrays(labels: np.ndarray, actions: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                    timestamps: np.ndarray | None = None, window: int | None = None) -> dict[str, Any]:
    """Overall figures, and with timestamps and a window (seconds) the same figures per window, in time order."""
    result: dict[str, Any] = {"classes": list(classes), "overall": metrics(labels, actions, probabilities, classes)}
    if window is not None and timestamps is not None:
        start = np.floor(timestamps / window) * window
        result["window_seconds"] = window
        result["windows"] = [{"start": _window_start(float(s), timestamps[start == s]),
                              **metrics(labels[start == s], actions[start == s], probabilities[start == s], classes)}
                             for s in np.unique(start)]
    return result


def evaluate(ens: Ensemble, records: Records, window: str | None = None) -> dict[str, Any]:
    """Score labelled records with the build and evaluate (see the module docstring)."""
    if records and all("label" not in r for _, r in records):  # a header problem: said once, not by line
        names = list(records[0][1])
        hint = (header_problem(names, ["label"], passthrough=names) or "").partition("; ")[2]
        said = f"no 'label' column (each row's realised class, one of {list(ens.classes)}){'; ' + hint if hint else ''}"
        raise InputError(said if said.endswith("?") else f"{said}.")
    bad = [n for n, r in records if r.get("label") not in ens.classes]
    if bad:
        raise InputError(f"line(s) {bad[:5]}{' ...' if len(bad) > 5 else ''}: column 'label' must name one of "
                         f"{list(ens.classes)}.")
    stamped = window is not None
    if stamped and (missing := [n for n, r in records if r.get("timestamp") in (None, "")]):
        raise InputError(f"line(s) {missing[:5]}: --window needs a 'timestamp' on every row.")
    seconds = parse_window(window) if window is not None else None
    out = score_records(ens, records, passthrough=("symbol", "label", "timestamp"))
    labels = np.array([ens.classes.index(r["label"]) for _, r in records], dtype=np.int64)
    timestamps = np.array([parse_timestamp(r["timestamp"], n) for n, r in records]) if stamped else None
    result = evaluate_arrays(labels, out["label"].astype(np.int64), out["probabilities"].astype(np.float64),
                             ens.classes, timestamps, seconds)
    return {"artifacts": ens.path, "window": window, **result}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def text(result: dict[str, Any]) -> list[str]:
    classes, o = result["classes"], result["overall"]
    lines = [f"{o['rows']} labelled rows: accuracy {o['accuracy']:.2%}, calibration error (ECE) {o['ece']:.4f}",
             "  " + ", ".join(f"{c}: precision {_pct(o['precision'][c])} recall {_pct(o['recall'][c])}"
                             for c in classes),
             "  action mix " + ", ".join(f"{c} {o['action_mix'][c]:.1%}" for c in classes)
             + "; label mix " + ", ".join(f"{c} {o['label_mix'][c]:.1%}" for c in classes),
             "  confusion (rows: label, columns: action): " + "  ".join(
                 f"{c}={row}" for c, row in zip(classes, o["confusion"], strict=True))]
    for w in result.get("windows", []):
        lines.append(f"{w['start']}  rows {w['rows']:>6}  accuracy {w['accuracy']:.2%}  ece {w['ece']:.4f}  "
                     + " ".join(f"{c} {w['action_mix'][c]:.1%}" for c in classes))
    return lines


def html(result: dict[str, Any]) -> str:
    classes, o = result["classes"], result["overall"]
    sections = [(f"<p>{o['rows']} labelled rows scored by <code>{esc(result['artifacts'])}</code>: accuracy "
                 f"<b>{o['accuracy']:.2%}</b>, calibration error (ECE) <b>{o['ece']:.4f}</b>.</p>"),
                "<h2>Confusion (rows: realised label, columns: action)</h2>",
                heat_map(classes, classes, o["confusion"], "label \\ action"),
                table(["class", "precision", "recall", "action share", "label share"],
                      [[c, _pct(o["precision"][c]), _pct(o["recall"][c]), _pct(o["action_mix"][c]),
                        _pct(o["label_mix"][c])] for c in classes])]
    windows = result.get("windows")
    if windows:
        starts = [w["start"][:16].replace("T", " ") for w in windows]
        sections += [f"<h2>Per window of {esc(result['window'])}</h2>",
                     line_chart(starts, {"accuracy": [w["accuracy"] for w in windows],
                                         "ECE": [w["ece"] for w in windows],
                                         **{f"{c} share": [w["action_mix"][c] for w in windows] for c in classes}}),
                     table(["window", "rows", "accuracy", "ece", *(f"{c} recall" for c in classes)],
                           [[s, w["rows"], _pct(w["accuracy"]), f"{w['ece']:.4f}",
                             *(_pct(w["recall"][c]) for c in classes)]
                            for s, w in zip(starts, windows, strict=True)])]
    return page("ensemble-onnx evaluate", sections)
