"""`ensemble-onnx bench`: the runtime against the original frameworks, on the same rows, at the same thread
count, in one run; and this machine's floor beside every figure.

Every measurement runs in a fresh worker process (`python -m convert.bench.workers MODE ...`) with
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set before any library loads, so torch, xgboost,
lightgbm, numpy and onnxruntime all get the same thread count, and so the runtime worker never has torch in
its address space. Figures are ratios against the frameworks measured in the same run; the JSON keeps the
machine they came from. Speed is never asserted by a test: this command is where it lives.

This module runs the workers (`workers.py`) and gathers their figures; the physical floors are in
`runtime/bench/floors.py` (they run on a serving host too), the ratios, warnings, table and plot in `report.py`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batch.results import dumps_strict, write_file
from runtime.bench.floors import graph_cost, physical_floor
from runtime.bench.floors import measure as measure_floors
from runtime.bench.host import domain_rows

from .report import lowered_warnings, machine, plot, ratios, table
from .workers import BATCH_CURVE, EFFORT_VARIABLE, EFFORTS, THROUGHPUT_BATCH

log = logging.getLogger(__name__)


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
    done = subprocess.run([sys.executable, "-m", "convert.bench.workers", *args], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {args[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), spawned


def _measure(setup: BenchSetup, pipelines: dict[str, tuple[str, Path]],
             progress: Callable[[str], None], record: Callable[..., None] = lambda *_: None
             ) -> dict[str, dict[str, Any]]:
    """label -> figures. Warm workers (latency, throughput, the curve) run in turns across the pipelines, so
    a slow spell on the machine lands on all of them; then cold starts and peak memory in fresh processes.
    `record(threads, label, kind, figures)` gets each measurement as it is taken."""
    effort = EFFORTS[setup.effort]

    def args(label: str) -> tuple[str, ...]:
        pipeline, folder = pipelines[label]
        return pipeline, str(folder), str(setup.models), str(setup.rows), str(setup.threads)

    warm: dict[str, list[dict[str, Any]]] = {label: [] for label in pipelines}
    for turn in range(effort.warm_runs):
        for label in pipelines:
            progress(f"{setup.threads} thread(s): {label}, latency and throughput ({turn + 1}/{effort.warm_runs})")
            warm[label].append(_spawn(setup, "warm", *args(label))[0])
            record(setup.threads, label, "warm", warm[label][-1])
    figures = {}
    for label in pipelines:
        cold_seconds, peaks = [], []
        for i in range(effort.cold_starts):
            progress(f"{setup.threads} thread(s): {label}, cold start {i + 1}/{effort.cold_starts}")
            cold, spawned = _spawn(setup, "cold", *args(label))
            record(setup.threads, label, "cold", cold)
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
            try:
                required = metadata.requires(name) or []
            except metadata.PackageNotFoundError:  # named by an extra but not installed here (an alternative
                continue                            # wheel installed under another name, e.g. xgboost for xgboost-cpu)
            for spec in required:
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


MEASUREMENTS_FILE = "bench.measurements.jsonl"


def build_labels(manifests: list[dict[str, Any]], folders: list[Path]) -> list[str]:
    """Each build named by its weight precision ("fp32", "int8"); by its folder when two share one."""
    labels = [(m.get("precision") or {}).get("weights", "fp32") for m in manifests]
    return [label if labels.count(label) == 1 else folder.name for label, folder in zip(labels, folders, strict=True)]


def bench_rows(manifests: list[dict[str, Any]], mean: np.ndarray | None, scale: np.ndarray | None,
               n: int) -> np.ndarray:
    """The rows every pipeline times: drawn from the scaler's statistics (mean, scale), else, with no scale to
    draw on, around the first build's domain (runtime.bench.host.domain_rows); then clipped into every build's
    domain, so each build takes them all (a row past it would be refused, not timed)."""
    if mean is not None and scale is not None:
        rows = mean + scale * np.random.default_rng(0).standard_normal((n, len(manifests[0]["feature_names"])))
    else:
        rows = domain_rows(manifests[0], n)
    for manifest in manifests:
        if manifest.get("domain") is not None:
            rows = np.clip(rows, manifest["domain"]["lo"], manifest["domain"]["hi"])
    return rows


def run_bench(artifacts: list[Path], models: Path, out_dir: Path, thread_counts: list[int],
              progress: Callable[[str], None] = log.info, quick: bool = False) -> dict[str, Any]:
    """Every build in `artifacts` (say fp32 and int8 of the same models) against the frameworks once."""
    import runtime

    from ..discover import plan_from_manifest
    from ..scaler import load_scaler
    from ..verify import check_sources

    manifests = [runtime.load(a).manifest for a in artifacts]  # verified before anything is timed
    for manifest in manifests:
        check_sources(manifest, models)  # a comparison only means something against the models of the build
    labels = build_labels(manifests, artifacts)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every measurement as it is taken, one JSON line each: a run stopped part-way keeps what it measured.
    measured = out_dir / MEASUREMENTS_FILE
    measured.write_text("")

    def record(threads: int, label: str, kind: str, figures: Any) -> None:
        with measured.open("a") as fh:
            fh.write(json.dumps({"threads": threads, "pipeline": label, "kind": kind, "figures": figures},
                                sort_keys=True, default=str) + "\n")
    scaler_file = next((m.scaler for m in plan_from_manifest(manifests[0], models).members if m.scaler), None)
    scaler = load_scaler(scaler_file) if scaler_file else None
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.npy"  # the same rows for every pipeline
        np.save(rows, bench_rows(manifests, scaler.mean if scaler else None, scaler.scale if scaler else None,
                                 max(BATCH_CURVE)))
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
            figures = _measure(setup, pipelines, progress, record)
            progress(f"{threads} thread(s): physical floors (numpy: streaming read, matvec, peak float32)")
            physical = measure_floors(max(c[0] for c in costs.values()), threads, quick)
            record(threads, "numpy", "physical floors", physical)
            entry: dict[str, Any] = {"frameworks": figures["frameworks"], "physical": physical, "builds": {}}
            for label, folder, manifest in zip(labels, artifacts, manifests, strict=True):
                progress(f"{threads} thread(s): {label}, machine floor")
                build = {"floor": _spawn(setup, "floor", str(folder.resolve()), str(threads))[0],
                         "runtime": figures[f"runtime {label}"]}
                record(threads, f"runtime {label}", "machine floor", build["floor"])
                fp32 = (manifest.get("precision") or {}).get("weights", "fp32") == "fp32"
                build["physical_floor"] = physical_floor(physical, *costs[label], fp32,
                                                         build["floor"]["matmul_flops_per_second"])
                build["ratios"] = ratios(build, entry["frameworks"])
                entry["builds"][label] = build
            results["threads"][str(threads)] = entry
    results["warnings"] = lowered_warnings(results)
    results["installed_mib"] = installed_size_mib()
    # Through the one writer of result files: each appears whole, strict JSON (runtime.batch.results).
    write_file(out_dir / "bench.json", (dumps_strict(results, indent=2, sort_keys=True) + "\n").encode(), force=True)
    write_file(out_dir / "bench.md", ("\n".join(table(results)) + "\n").encode(), force=True)
    plot(results, out_dir / "bench.png")
    return results


def _graph_cost_of(folder: Path) -> tuple[int, int]:
    return graph_cost((folder / "ensemble.onnx").read_bytes())
