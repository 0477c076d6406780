"""This host's physical limits, measured with numpy alone (never with onnxruntime, the kernels they judge):

- streaming read: bytes per second reading a buffer the size of the weights once (a sum, a dot of the
  buffer with itself, or at N threads N slices summed at once, whichever is fastest), warm (the same
  buffer again: in cache where it fits) and
  cold-ish (a different buffer each call, from a pool larger than any last-level cache);
- matrix-vector product: one row through a float32 matrix holding the weights' bytes (BLAS sgemv, numpy's
  own), at 1 thread and at N: the best a tuned kernel does at reading the weights once for one row;
- peak float32 multiply-add rate: a large square matmul (BLAS sgemm), at 1 thread and at N.

Each thread count runs in a fresh process (`python -m runtime.bench.floors N BYTES [--quick]`) with the BLAS
thread variables set before numpy loads, so no thread-control package is needed: `ensemble-onnx bench`
(convert.bench) and the numpy-plus-onnxruntime-only `runtime.bench.host` both call `measure`, and
`graph_cost`, the exact count of a graph's weights and FLOPs, read off the protobuf bytes (`runtime.protowire`,
no onnx: a serving host has none). Needs numpy only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime import protowire

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
COLD_POOL_BYTES = 512 << 20  # larger than any last-level cache we expect, so a rotation reads from memory
MATVEC_COLUMNS = 1024        # sgemv reads W row by row; a long row keeps its loop in its fast path


def median_seconds(fn: Callable[[], Any], calls: int, warmup: int = 5, percentile: float = 50) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, percentile))


def floor_seconds(fn: Callable[[], Any], calls: int, warmup: int = 5) -> float:
    """A floor is what the host can do, not what it did while shared: the 10th percentile of the calls."""
    return median_seconds(fn, calls, warmup, percentile=10)


def _in_process(weight_bytes: int, threads: int, quick: bool) -> dict[str, Any]:
    """The floors at `threads` (this process's BLAS was given as many)."""
    calls = 20 if quick else 200
    rng = np.random.default_rng(0)
    n = max(MATVEC_COLUMNS, weight_bytes // 4)
    warm = rng.random(n, dtype=np.float32)
    stream_warm = min(floor_seconds(lambda: warm.sum(), calls), floor_seconds(lambda: np.dot(warm, warm), calls))
    pool_size = 2 if quick else max(2, COLD_POOL_BYTES // (4 * n))
    pool = [rng.random(n, dtype=np.float32) for _ in range(pool_size)]
    turn = iter(range(1 << 62))

    def cold(read: Callable[[np.ndarray], Any]) -> float:
        return floor_seconds(lambda: read(pool[next(turn) % pool_size]), calls)

    stream_cold = min(cold(np.sum), cold(lambda v: np.dot(v, v)))
    if threads > 1:  # numpy's sum runs on one thread; read the buffer in `threads` slices at once
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as workers:
            def sliced(v: np.ndarray) -> Any:
                return list(workers.map(np.sum, np.array_split(v, threads)))

            stream_cold = min(stream_cold, cold(sliced))
    pool.clear()  # free the cold pool before the matmul allocates
    w = warm.reshape(-1, MATVEC_COLUMNS) if n % MATVEC_COLUMNS == 0 else warm[: n - n % MATVEC_COLUMNS].reshape(
        -1, MATVEC_COLUMNS)
    x = rng.random(MATVEC_COLUMNS, dtype=np.float32)
    matvec = floor_seconds(lambda: w @ x, calls)
    size = 512 if quick else 2048
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    matmul = floor_seconds(lambda: a @ b, 5 if quick else 10, warmup=2)
    return {"stream_warm_bytes_per_second": 4 * n / stream_warm, "stream_cold_bytes_per_second": 4 * n / stream_cold,
            "matvec_seconds": matvec * (4 * n) / w.nbytes,  # scaled to the weights' bytes exactly
            "matvec_bytes_per_second": w.nbytes / matvec, "peak_fp32_flops_per_second": 2 * size**3 / matmul,
            "matmul_size": size}


def measure(weight_bytes: int, threads: int, quick: bool = False) -> dict[str, Any]:
    """The floors at `threads` BLAS threads, in a fresh process (thread pools are fixed when numpy loads)."""
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARIABLES})
    done = subprocess.run([sys.executable, "-m", "runtime.bench.floors", str(threads), str(weight_bytes),
                           *(["--quick"] if quick else [])], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"floor worker ({threads} threads) failed:\n{done.stderr[-2000:]}")
    return {"threads": threads, "weight_bytes": weight_bytes, **json.loads(done.stdout.strip().splitlines()[-1])}


def one_row_floor_us(floors: dict[str, Any], weight_bytes: int, flops_per_row: int,
                     float32: bool = True) -> dict[str, float]:
    """What one row cannot beat on this host at this thread count: reading the weights once (at the best of
    the streaming read and the tuned matvec), and, for a float32 build, its multiply-adds at the peak float32
    rate (8-bit dot products run at another rate, not measured here: an int8 build's floor is its bytes)."""
    best_bandwidth = max(floors["stream_cold_bytes_per_second"], floors["matvec_bytes_per_second"])
    memory = weight_bytes / best_bandwidth * 1e6
    compute = flops_per_row / floors["peak_fp32_flops_per_second"] * 1e6 if float32 else 0.0
    return {"memory_us": memory, "matvec_us": weight_bytes / floors["matvec_bytes_per_second"] * 1e6,
            "compute_us": compute, "floor_us": max(memory, compute)}


# TensorProto.data_type -> bytes per element, for the types weights are stored in (INT64, 7, holds shapes and
# axes, which are not weights): FLOAT, UINT8, INT8, UINT16, INT16, INT32, BOOL, FLOAT16, DOUBLE, UINT32, UINT64,
# BFLOAT16. A type not listed here counts 0 bytes, as no graph convert writes stores one.
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def graph_cost(model: bytes) -> tuple[int, int]:
    """(bytes of the weights, in whatever type they are stored: float32, or int8 blocks and their scales;
    multiply-add FLOPs per row of every MatMul/Gemm/MatMulNBits against a weight), read off an ONNX model's
    bytes: the main graph's initializers and nodes. ValueError for bytes that are no ONNX model."""
    g = protowire.main_graph(model)
    shapes = {name: protowire.tensor(model, span) for name, span in g.initializers.items()}
    flops = 0
    for node in {id(n): n for n in g.nodes.values()}.values():  # a node is listed under each of its outputs
        if node.op == "MatMulNBits":
            attrs = protowire.attributes(model, node)
            k, n = attrs.get("K"), attrs.get("N")
            if isinstance(k, int) and isinstance(n, int):
                flops += 2 * k * n
        elif node.op in ("MatMul", "Gemm") and len(node.inputs) > 1 and node.inputs[1] in shapes:
            dims = shapes[node.inputs[1]].dims
            if len(dims) == 2:
                flops += 2 * dims[0] * dims[1]
    weight_bytes = sum(int(np.prod(t.dims, dtype=np.int64)) * _ITEMSIZE.get(t.data_type, 0) for t in shapes.values())
    return weight_bytes, flops


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_in_process(int(sys.argv[2]), int(sys.argv[1]), "--quick" in sys.argv)) + "\n")


def physical_floor(physical: dict[str, Any], weight_bytes: int, flops_per_row: int, fp32: bool,
                   onnxruntime_flops: float = 0.0) -> dict[str, float]:
    """One build's floors from the host's physical limits: one row (its bytes at the best bandwidth, its
    multiply-adds at peak float32) and a batch (rows/s at peak float32). The peak is numpy's matmul rate, or
    onnxruntime's where that is higher: numpy's BLAS is not always the best kernel on a host (OpenBLAS
    reached half of onnxruntime's MLAS rate on the AVX-512/AMX VM), and a floor a kernel beats is none."""
    peak = max(physical["peak_fp32_flops_per_second"], onnxruntime_flops)
    one = one_row_floor_us({**physical, "peak_fp32_flops_per_second": peak}, weight_bytes, flops_per_row, fp32)
    return {**one, "batch_rows_per_second": peak / flops_per_row, "peak_fp32_flops_per_second": peak}
