"""What the backfill's unit tests share (test_backfill_units, test_backfill_io, test_ray_engine): the demo build
loaded at one thread, rows inside its proven domain, and the batches and layouts made of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from domain_rows import typical_rows

import runtime
from runtime.batch.backfill import Layout


def one_thread(artifacts: Path) -> runtime.Ensemble:
    """The build at one intra-op thread: a row's bits then do not depend on its batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return runtime.load(artifacts, options)


def rows(build: runtime.Ensemble, n: int, seed: int = 1) -> np.ndarray:
    """n rows [n, F] of features the build takes: near its domain's centre, inside the range its gate proved
    (tests/domain_rows.py; made-up standard normal rows fall outside the demo's ±0.4 on a 1-hour return)."""
    return typical_rows(build, n, seed)


def batch_of(x: np.ndarray, names: tuple[str, ...], **extra: Any) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({**extra, **{f: x[:, j] for j, f in enumerate(names)}})


def layout_of(ens: runtime.Ensemble, keep: tuple[str, ...] = (), members: bool = False) -> Layout:
    return Layout(ens.feature_names, ens.classes, ens.member_order, keep, members)
