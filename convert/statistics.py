"""What the members were trained on, per feature, written as `statistics.json` beside the graphs: the
runtime's drift check (`runtime.drift`) compares live rows against it.

- `mean`, `scale`: the shared StandardScaler's, when the scaled members share one that has both; otherwise
  (raw-feature members, or scalers that differ) the reference rows' mean and standard deviation, if given.
- `bins` (decile edges and the rows in each bin), `min`, `max`: from the reference rows, when given:
  `--reference-data`, else the `--calibrate` file, else the `--parity-data` file, in that order.

A file listed in the manifest like every other, so the runtime verifies its sha256; the same inputs give the
same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.drift import STATISTICS_FILE, STATISTICS_VERSION, quantile_bins

from . import manifest as mf
from .errors import MetadataError
from .scaler import Scaler

__all__ = ["STATISTICS_FILE", "read_reference_rows", "statistics_bytes"]


def read_reference_rows(path: Path, feature_names: list[str], text: str | None = None) -> np.ndarray:
    """Recorded rows as `predict` reads them (`text`: the file already read through the build's checks); a
    label, symbol or timestamp column may ride along."""
    from runtime.errors import InputError
    from runtime.records import read_records, records_to_matrix

    try:
        rows = read_records(path.read_text(encoding="utf-8") if text is None else text)
        return records_to_matrix(rows, feature_names, passthrough=("symbol", "label", "timestamp"))
    except InputError as exc:
        raise MetadataError(f"{path}: {exc}") from exc


def _shared_moments(scaler_of_member: list[Path | None], scalers: dict[Path, Scaler]
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """The one scaler's (mean, scale) that every scaled member uses; None if they differ or it lacks either."""
    used = {s for s in scaler_of_member if s is not None}
    if len(used) != 1:
        return None
    scaler = scalers[used.pop()]
    return None if scaler.mean is None or scaler.scale is None else (scaler.mean, scaler.scale)


def statistics_bytes(feature_names: list[str], scaler_of_member: list[Path | None], scalers: dict[Path, Scaler],
                     reference: Path | None, reference_text: str | None = None) -> bytes:
    """statistics.json for a build: `scaler_of_member` is each member's scaler file (None = raw features)."""
    moments = _shared_moments(scaler_of_member, scalers)
    rows = read_reference_rows(reference, feature_names, reference_text) if reference is not None else None
    features: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(feature_names):
        entry: dict[str, Any] = {}
        if moments is not None:
            entry.update(mean=float(moments[0][j]), scale=float(moments[1][j]), moments_from="scaler")
        elif rows is not None and rows[:, j].std() > 0:
            entry.update(mean=float(rows[:, j].mean()), scale=float(rows[:, j].std()), moments_from="reference rows")
        if rows is not None:
            entry.update(bins=quantile_bins(rows[:, j]), min=float(rows[:, j].min()), max=float(rows[:, j].max()))
        features[name] = entry
    return mf.dumps({
        "statistics_version": STATISTICS_VERSION,
        "reference": None if reference is None or rows is None else
                     {"file": reference.name, "sha256": mf.sha256(reference.read_bytes()), "rows": len(rows)},
        "features": features,
    })
