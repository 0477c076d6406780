"""`ensemble-onnx bench`: the runtime against the original frameworks, on the same rows, at the same thread
count, in one run; and this machine's floor beside every figure.

Every measurement runs in a fresh worker process (`python -m convert.bench PIPELINE ...`) with
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set before any library loads, so torch, xgboost,
lightgbm, numpy and onnxruntime all get the same thread count, and so the runtime worker never has torch in
its address space. Figures are ratios against the frameworks measured in the same run; the JSON keeps the
machine they came from. Speed is never asserted by a test: this command is where it lives.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import IR_VERSION, OPSET

from .floors import measure as measure_floors
from .floors import one_row_floor_us

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------------- workers
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
    from .reference import Reference
    from .verify import plan_from_manifest

    manifest = json.loads((Path(artifacts) / "manifest.json").read_text())  # verified by the parent
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
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight_bytes, flops_per_row = graph_cost(onnx.load(os.path.join(artifacts, "ensemble.onnx")))

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


def graph_cost(model: Any) -> tuple[int, int]:
    """(bytes of the weights, in whatever type they are stored: float32, or int8 blocks and their scales;
    multiply-add FLOPs per row of every MatMul/Gemm/MatMulNBits against a weight)."""
    from onnx import helper, numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            flops += 2 * attrs["K"] * attrs["N"]
        elif node.op_type in ("MatMul", "Gemm"):
            w = next((weights[i] for i in node.input[1:2] if i in weights), None)
            if w is not None and w.ndim == 2:
                flops += 2 * w.shape[0] * w.shape[1]
    # Integer shapes and axes are not weights; everything numeric a kernel reads per call is.
    return sum(w.nbytes for w in weights.values() if w.dtype != np.int64), flops


WORKERS = {"cold": worker_cold, "warm": worker_warm}


def _worker_main(argv: list[str]) -> None:
    mode, *args = argv
    result = (worker_floor(args[0], int(args[1])) if mode == "floor"
              else WORKERS[mode](args[0], args[1], args[2], args[3], int(args[4])))
    sys.stdout.write(json.dumps(result) + "\n")


# ------------------------------------------------------------------------------------------------ parent

@dataclass
class BenchSetup:
    models: Path
    rows: Path
    threads: int
    effort: str


def _spawn(setup: BenchSetup, *args: str) -> tuple[dict[str, Any], float]:
    """Run a worker with every library held to `setup.threads`; (its JSON, the wall time it was spawned)."""
    env = dict(os.environ, **{v: str(setup.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                              "MKL_NUM_THREADS")}, **{EFFORT_VARIABLE: setup.effort})
    spawned = time.time()
    done = subprocess.run([sys.executable, "-m", "convert.bench", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {args[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), spawned


def _measure(setup: BenchSetup, pipelines: dict[str, tuple[str, Path]],
             progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """label -> figures. Warm workers (latency, throughput, the curve) run in turns across the pipelines, so
    a slow spell on the machine lands on all of them; then cold starts and peak memory in fresh processes."""
    effort = EFFORTS[setup.effort]

    def args(label: str) -> tuple[str, ...]:
        pipeline, folder = pipelines[label]
        return pipeline, str(folder), str(setup.models), str(setup.rows), str(setup.threads)

    warm: dict[str, list[dict[str, Any]]] = {label: [] for label in pipelines}
    for turn in range(effort.warm_runs):
        for label in pipelines:
            progress(f"{setup.threads} thread(s): {label}, latency and throughput ({turn + 1}/{effort.warm_runs})")
            warm[label].append(_spawn(setup, "warm", *args(label))[0])
    figures = {}
    for label in pipelines:
        cold_seconds, peaks = [], []
        for i in range(effort.cold_starts):
            progress(f"{setup.threads} thread(s): {label}, cold start {i + 1}/{effort.cold_starts}")
            cold, spawned = _spawn(setup, "cold", *args(label))
            cold_seconds.append(cold["first_prediction_at"] - spawned)
            peaks.append(cold["peak_rss_mib"])
        figures[label] = {**_median_of(warm[label]), "cold_start_seconds": float(np.median(cold_seconds)),
                          "cold_start_all": cold_seconds, "cold_peak_rss_mib": max(peaks)}
    return figures


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each timing the median over warm runs (each run's own spread is in its p99); peak memory the max."""
    out: dict[str, Any] = {key: float(np.median([r[key] for r in runs]))
                           for key in ("one_row_p50_us", "one_row_p99_us", "rows_per_second")}
    out["batch_seconds"] = {b: float(np.median([r["batch_seconds"][b] for r in runs]))
                            for b in runs[0]["batch_seconds"]}
    out["one_row_p50_us_each_run"] = [r["one_row_p50_us"] for r in runs]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    return out


def installed_size_mib() -> dict[str, float]:
    """Installed bytes of every distribution a runtime-only `pip install ensemble-onnx` pulls in, against
    `ensemble-onnx[convert]`, read from this environment's package records."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def closure(extras: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = [("ensemble-onnx", extras)]
        while todo:
            name, wanted = todo.pop()
            key = name.lower().replace("_", "-")
            if key in seen:
                continue
            seen.add(key)
            for spec in metadata.requires(name) or []:
                req = Requirement(spec)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted or {""}):
                    todo.append((req.name, set(req.extras)))
        return seen - {"ensemble-onnx"}

    def size(names: set[str]) -> float:
        total = 0
        for name in names:
            try:
                total += sum(f.size or 0 for f in metadata.distribution(name).files or [])
            except metadata.PackageNotFoundError:
                continue
        return total / 2**20

    return {"runtime": size(closure(set())), "frameworks": size(closure({"convert"}))}


def build_labels(manifests: list[dict[str, Any]], folders: list[Path]) -> list[str]:
    """Each build named by its weight precision ("fp32", "int8"); by its folder when two share one."""
    labels = [(m.get("precision") or {}).get("weights", "fp32") for m in manifests]
    return [label if labels.count(label) == 1 else folder.name for label, folder in zip(labels, folders, strict=True)]


def run_bench(artifacts: list[Path], models: Path, out_dir: Path, thread_counts: list[int],
              progress: Callable[[str], None] = log.info, quick: bool = False) -> dict[str, Any]:
    """Every build in `artifacts` (say fp32 and int8 of the same models) against the frameworks once."""
    import runtime

    from .scaler import load_scaler
    from .verify import check_sources, plan_from_manifest

    manifests = [runtime.load(a).manifest for a in artifacts]  # verified before anything is timed
    for manifest in manifests:
        check_sources(manifest, models)  # a comparison only means something against the models of the build
    labels = build_labels(manifests, artifacts)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_features = len(manifests[0]["feature_names"])
    scaler_file = next((m.scaler for m in plan_from_manifest(manifests[0], models).members if m.scaler), None)
    scaler = load_scaler(scaler_file) if scaler_file else None
    mean = scaler.mean if scaler is not None and scaler.mean is not None else np.zeros(n_features)
    scale = scaler.scale if scaler is not None and scaler.scale is not None else np.ones(n_features)
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.npy"  # the same rows for every pipeline, drawn from the scaler's statistics
        np.save(rows, mean + scale * np.random.default_rng(0).standard_normal((max(BATCH_CURVE), n_features)))
        results: dict[str, Any] = {
            "machine": machine(), "batch_curve": list(BATCH_CURVE), "quick": quick,
            "throughput_batch": THROUGHPUT_BATCH, "threads": {},
            "builds": {label: {"artifacts": str(a), "precision": m.get("precision") or {"weights": "fp32"}}
                       for label, a, m in zip(labels, artifacts, manifests, strict=True)}}
        pipelines = {"frameworks": ("frameworks", artifacts[0].resolve()),
                     **{f"runtime {label}": ("runtime", folder.resolve())
                        for label, folder in zip(labels, artifacts, strict=True)}}
        costs = {label: _graph_cost_of(folder) for label, folder in zip(labels, artifacts, strict=True)}
        for threads in thread_counts:
            setup = BenchSetup(models.resolve(), rows, threads, "quick" if quick else "full")
            figures = _measure(setup, pipelines, progress)
            progress(f"{threads} thread(s): physical floors (numpy: streaming read, matvec, peak float32)")
            physical = measure_floors(max(c[0] for c in costs.values()), threads, quick)
            entry: dict[str, Any] = {"frameworks": figures["frameworks"], "physical": physical, "builds": {}}
            for label, folder, manifest in zip(labels, artifacts, manifests, strict=True):
                progress(f"{threads} thread(s): {label}, machine floor")
                build = {"floor": _spawn(setup, "floor", str(folder.resolve()), str(threads))[0],
                         "runtime": figures[f"runtime {label}"]}
                fp32 = (manifest.get("precision") or {}).get("weights", "fp32") == "fp32"
                build["physical_floor"] = physical_floor(physical, *costs[label], fp32,
                                                         build["floor"]["matmul_flops_per_second"])
                build["ratios"] = ratios(build, entry["frameworks"])
                entry["builds"][label] = build
            results["threads"][str(threads)] = entry
    results["warnings"] = lowered_warnings(results)
    results["installed_mib"] = installed_size_mib()
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "bench.md").write_text("\n".join(table(results)) + "\n")
    plot(results, out_dir / "bench.png")
    return results


def _graph_cost_of(folder: Path) -> tuple[int, int]:
    import onnx

    return graph_cost(onnx.load(folder / "ensemble.onnx"))


def physical_floor(physical: dict[str, Any], weight_bytes: int, flops_per_row: int, fp32: bool,
                   onnxruntime_flops: float = 0.0) -> dict[str, float]:
    """One build's floors from the host's physical limits: one row (its bytes at the best bandwidth, its
    multiply-adds at peak float32) and a batch (rows/s at peak float32). The peak is numpy's matmul rate, or
    onnxruntime's where that is higher: numpy's BLAS is not always the best kernel on a host (OpenBLAS
    reached half of onnxruntime's MLAS rate on the AVX-512/AMX VM), and a floor a kernel beats is none."""
    peak = max(physical["peak_fp32_flops_per_second"], onnxruntime_flops)
    one = one_row_floor_us({**physical, "peak_fp32_flops_per_second": peak}, weight_bytes, flops_per_row, fp32)
    return {**one, "batch_rows_per_second": peak / flops_per_row, "peak_fp32_flops_per_second": peak}


def lowered_warnings(results: dict[str, Any]) -> list[str]:
    """A line for every measured batch size at which a lowered (int8) build is slower than the float32 build
    or than the frameworks: a lowered build exists to be faster, and where it is not, the table says so."""
    warnings = []
    for threads, entry in results["threads"].items():
        fw = entry["frameworks"]["batch_seconds"]
        fp32 = next((b["runtime"]["batch_seconds"] for label, b in entry["builds"].items()
                     if results["builds"][label]["precision"].get("weights", "fp32") == "fp32"), None)
        for label, build in entry["builds"].items():
            if results["builds"][label]["precision"].get("weights", "fp32") == "fp32":
                continue
            for batch, seconds in sorted(build["runtime"]["batch_seconds"].items(), key=lambda b: int(b[0])):
                for other, theirs in (("the fp32 build", fp32), ("the frameworks", fw)):
                    if theirs is not None and seconds > theirs[batch]:
                        warnings.append(f"{label} at {threads} thread(s), batch {batch}: {seconds * 1e6:,.0f} µs, "
                                        f"slower than {other} ({theirs[batch] * 1e6:,.0f} µs)")
    return warnings


def ratios(build: dict[str, Any], fw: dict[str, Any]) -> dict[str, float]:
    """How one build's runtime compares, each as 'times better' (>1 is the runtime ahead)."""
    rt, floor, physical = build["runtime"], build["floor"], build["physical_floor"]
    return {"one_row_p50_over_physical": rt["one_row_p50_us"] / physical["floor_us"],
            "one_row_p50_over_matvec": rt["one_row_p50_us"] / physical["matvec_us"],
            "throughput_share_of_physical": rt["rows_per_second"] / physical["batch_rows_per_second"],
            "one_row_p50_speedup": fw["one_row_p50_us"] / rt["one_row_p50_us"],
            "one_row_p50_over_floor": rt["one_row_p50_us"] / floor["one_row_floor_us"],
            "throughput_ratio": rt["rows_per_second"] / fw["rows_per_second"],
            "throughput_share_of_floor": rt["rows_per_second"] / floor["batch_floor_rows_per_second"],
            "cold_start_ratio": rt["cold_start_seconds"] / fw["cold_start_seconds"],
            "peak_memory_ratio": rt["cold_peak_rss_mib"] / fw["cold_peak_rss_mib"]}


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    from runtime.host import cpu as host_cpu

    host = host_cpu()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "instruction_sets": host["instruction_sets"], "int8_fast": host["int8_fast"],
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def table(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores "
             f"({', '.join(m.get('instruction_sets', [])) or 'no SIMD flags read'}), "
             f"Python {m['python']}, onnxruntime {m['onnxruntime']}.", "",
             "| threads | figure | build | runtime | frameworks | runtime vs frameworks | onnxruntime kernel floor "
             "| physical floor |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for threads, e in results["threads"].items():
        fw = e["frameworks"]
        for label, b in e["builds"].items():
            rt, fl, r, ph = b["runtime"], b["floor"], b["ratios"], b["physical_floor"]
            rows = [
                ("one row, p50", f"{rt['one_row_p50_us']:.0f} µs", f"{fw['one_row_p50_us']:.0f} µs",
                 f"{r['one_row_p50_speedup']:.1f}× faster", f"{fl['one_row_floor_us']:.0f} µs "
                 f"(runtime at {r['one_row_p50_over_floor']:.2f}×)",
                 f"{ph['floor_us']:.0f} µs (runtime at {r['one_row_p50_over_physical']:.2f}×; numpy matvec "
                 f"{ph['matvec_us']:.0f} µs, {r['one_row_p50_over_matvec']:.2f}×)"),
                ("one row, p99", f"{rt['one_row_p99_us']:.0f} µs", f"{fw['one_row_p99_us']:.0f} µs",
                 f"{fw['one_row_p99_us'] / rt['one_row_p99_us']:.1f}× faster", "", ""),
                (f"batch {results['throughput_batch']}, rows/s", f"{rt['rows_per_second']:,.0f}",
                 f"{fw['rows_per_second']:,.0f}", f"{r['throughput_ratio']:.2f}×",
                 f"{fl['batch_floor_rows_per_second']:,.0f} (runtime at {r['throughput_share_of_floor']:.0%})",
                 f"{ph['batch_rows_per_second']:,.0f} (runtime at {r['throughput_share_of_physical']:.0%})"),
                ("cold start to first prediction", f"{rt['cold_start_seconds']:.2f} s",
                 f"{fw['cold_start_seconds']:.2f} s", f"{r['cold_start_ratio']:.2f} of theirs", "", ""),
                ("peak memory (cold process)", f"{rt['cold_peak_rss_mib']:.0f} MiB",
                 f"{fw['cold_peak_rss_mib']:.0f} MiB",
                 f"{r['peak_memory_ratio']:.2f} of theirs", "", ""),
            ]
            lines += [f"| {threads} | {row[0]} | {label} | " + " | ".join(row[1:]) + " |" for row in rows]
    lines += [
        "", "Physical floors, measured with numpy alone (never with the onnxruntime kernels they judge):", "",
        "| threads | streaming read, cold (warm) | numpy matvec over the weights | peak float32 (numpy matmul) |",
        "|---:|---:|---:|---:|", *[
            f"| {t} | {p['stream_cold_bytes_per_second'] / 1e9:.1f} GB/s "
            f"({p['stream_warm_bytes_per_second'] / 1e9:.1f}) "
            f"| {p['matvec_bytes_per_second'] / 1e9:.1f} GB/s | {p['peak_fp32_flops_per_second'] / 1e9:.0f} GFLOP/s |"
            for t, p in ((t, e["physical"]) for t, e in results["threads"].items())]]
    lines += [f"\n**Warning:** {w}." for w in results.get("warnings", [])]
    size = results["installed_mib"]
    lines += ["", f"Installed size: runtime-only environment {size['runtime']:.0f} MiB, full framework stack "
                  f"{size['frameworks']:.0f} MiB ({size['runtime'] / size['frameworks']:.2f} of it)."]
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for threads, e in results["threads"].items():
        pipelines = [(f"runtime {label}", b["runtime"], "-o") for label, b in e["builds"].items()]
        for name, figures, style in [*pipelines, ("frameworks", e["frameworks"], "--s")]:
            curve = figures["batch_seconds"]
            ax.plot([int(b) for b in curve], [s * 1e3 for s in curve.values()], style,
                    label=f"{name}, {threads} thread(s)")
    ax.set(xscale="log", yscale="log", xlabel="rows per call", ylabel="ms per call (median)",
           title="Latency against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
