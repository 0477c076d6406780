"""The bench's worker processes: each builds one pipeline (the frameworks, or the runtime on one build),
measures it, and prints one JSON object on stdout. `convert.bench.run` spawns them as
`python -m convert.bench.workers MODE ...` with every library's thread variables set before anything loads,
so the runtime worker never has torch in its address space. The FLOP and weight count of a graph is
`runtime.bench.floors.graph_cost`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bench.floors import graph_cost
from runtime.contract import IR_VERSION, OPSET

BATCH_CURVE = (1, 4, 16, 64, 256, 1024)
THROUGHPUT_BATCH = 256
EFFORT_VARIABLE = "ENSEMBLE_ONNX_BENCH_EFFORT"


@dataclass(frozen=True)
class Effort:
    one_row_calls: int       # timed one-row calls per pipeline (after warm-up)
    min_curve_seconds: float  # each point of the batch curve is timed for at least this long
    cold_starts: int         # fresh processes per pipeline; the median is reported
    warm_runs: int           # warm workers per pipeline, taken in turns; each figure is their median


# "quick" only proves the command end to end (tests, a smoke run in CI); its figures are not for quoting.
# Several warm runs in turns, because one process's figures are not another's: the frameworks' one-row time
# moved by ±20% between single runs here (four libraries' thread pools and allocations land differently).
EFFORTS = {"full": Effort(400, 0.3, 5, 3), "quick": Effort(10, 0.0, 1, 1)}


def effort() -> Effort:
    return EFFORTS[os.environ.get(EFFORT_VARIABLE, "full")]


# A worker builds one pipeline, measures, and prints one JSON object on stdout.

def _load_pipeline(pipeline: str, artifacts: str, models: str, threads: int) -> Callable[[np.ndarray], Any]:
    if pipeline == "runtime":
        import onnxruntime as ort

        import runtime

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return runtime.load(artifacts, options).predict_proba
    import torch

    torch.set_num_threads(threads)
    from ..discover import plan_from_manifest
    from ..reference import Reference

    manifest = json.loads((Path(artifacts) / "manifest.json").read_text(encoding="utf-8"))  # verified by the parent
    return Reference.from_plan(plan_from_manifest(manifest, Path(models))).predict_proba


def _timings(fn: Callable[[], Any], calls: int = 0, min_seconds: float = 0.0) -> np.ndarray:
    for _ in range(max(3, calls // 10)):  # warm-up: first calls allocate and pick kernels
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(calls, 3) or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that across fork and
    exec, so a worker would report its parent's peak (the parent has torch loaded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def worker_cold(pipeline: str, artifacts: str, models: str, rows: str, threads: int) -> dict[str, Any]:
    """Load and make one prediction; the parent times from its spawn to `first_prediction_at`."""
    predict = _load_pipeline(pipeline, artifacts, models, threads)
    predict(np.load(rows)[:1])
    return {"first_prediction_at": time.time(), "peak_rss_mib": _peak_rss_mib()}


def worker_warm(pipeline: str, artifacts: str, models: str, rows: str, threads: int) -> dict[str, Any]:
    predict = _load_pipeline(pipeline, artifacts, models, threads)
    x = np.load(rows)
    one = _timings(lambda: predict(x[:1]), calls=effort().one_row_calls)
    curve = {}
    for batch in BATCH_CURVE:
        xb = np.resize(x, (batch, x.shape[1]))
        curve[str(batch)] = float(np.median(_timings(functools.partial(predict, xb),
                                                     min_seconds=effort().min_curve_seconds)))
    return {"one_row_p50_us": float(np.percentile(one, 50) * 1e6),
            "one_row_p99_us": float(np.percentile(one, 99) * 1e6),
            "batch_seconds": curve, "rows_per_second": THROUGHPUT_BATCH / curve[str(THROUGHPUT_BATCH)],
            "peak_rss_mib": _peak_rss_mib()}


def worker_floor(artifacts: str, threads: int) -> dict[str, Any]:
    """This machine's limits for this ensemble: streaming its weights once, and its FLOPs at the best
    matrix-multiply rate onnxruntime reaches here (the kernels the runtime itself uses)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    with open(os.path.join(artifacts, "ensemble.onnx"), "rb") as f:
        weight_bytes, flops_per_row = graph_cost(f.read())

    def session(a_rows: int, k: int, n: int) -> tuple[Any, np.ndarray]:
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [a_rows, k])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a_rows, n])],
                                  [numpy_helper.from_array(np.random.default_rng(0).random((k, n), np.float32), "b")])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        return ort.InferenceSession(model.SerializeToString(), options), np.ones((a_rows, k), np.float32)

    # Streaming: one row through a single matrix holding as many bytes as the ensemble's weights (the
    # best onnxruntime does at reading them once), or numpy's dot over them, whichever is faster.
    k = 128
    gemv, row = session(1, k, max(1, weight_bytes // (4 * k)))
    flat = np.random.default_rng(0).random(weight_bytes // 4, dtype=np.float32)
    stream_seconds = min(float(np.median(_timings(lambda: gemv.run(None, {"a": row}), calls=300))),
                         float(np.median(_timings(lambda: np.dot(flat, flat), calls=300))) if threads == 1 else np.inf)
    # Compute: PatchTST's feed-forward shape, the bulk of the work, at the throughput batch.
    n = 2048
    gemm, rows = session(THROUGHPUT_BATCH, k, n)
    flops_per_second = 2 * THROUGHPUT_BATCH * k * n / float(np.median(_timings(lambda: gemm.run(None, {"a": rows}),
                                                                               calls=200)))
    return {"weight_bytes": weight_bytes, "flops_per_row": flops_per_row,
            "stream_bytes_per_second": weight_bytes / stream_seconds, "matmul_flops_per_second": flops_per_second,
            "one_row_floor_us": max(stream_seconds, flops_per_row / flops_per_second) * 1e6,
            "batch_floor_rows_per_second": flops_per_second / flops_per_row}


WORKERS = {"cold": worker_cold, "warm": worker_warm}


def _worker_main(argv: list[str]) -> None:
    mode, *args = argv
    result = (worker_floor(args[0], int(args[1])) if mode == "floor"
              else WORKERS[mode](args[0], args[1], args[2], args[3], int(args[4])))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
