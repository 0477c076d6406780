"""What the referees of compare and evaluate share (test_compare.py, test_evaluate.py): rows drawn around the
demo build's scaler means, grouped by the action the build serves, and the records a command reads of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import runtime

CLASSES = ("SELL", "HOLD", "BUY")
Row = dict[str, float]


def rows_by_action(old: runtime.Ensemble, demo_artifacts: Path) -> dict[str, list[Row]]:
    """Rows drawn around the scaler's mean of each feature, grouped by the action the demo build serves."""
    stats = json.loads((demo_artifacts / "statistics.json").read_text())["features"]
    mean = np.array([stats[n]["mean"] for n in old.feature_names])
    scale = np.array([stats[n]["scale"] for n in old.feature_names])
    x = mean + 1.5 * scale * np.random.default_rng(7).normal(size=(300, len(mean)))
    by_action: dict[str, list[Row]] = {c: [] for c in CLASSES}
    for row, p in zip(x, old.predict(x), strict=True):
        by_action[p.action].append(dict(zip(old.feature_names, map(float, row), strict=True)))
    return by_action


def interleaved(rows: dict[str, list[Row]]) -> list[Row]:
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
