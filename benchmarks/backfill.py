"""The backfill demo and its benchmark (`make backfill-demo`).

    python -m benchmarks.backfill history build/backfill/history.parquet --symbols 500 --minutes 4000
    python -m benchmarks.backfill compare A.parquet B.parquet
    python -m benchmarks.backfill bench artifacts/ build/backfill/history.parquet \
        --models models/ --out build/backfill

`history` writes symbols x minutes of features drawn from the demo market (`convert.demo.market_data`: the
same loadings, centers and scales the demo models were trained on), with each symbol's market signal a
slow AR(1) walk over the minutes, as real indicators drift rather than jump. `bench` scores it in fresh
processes: the runtime with N worker processes x 1 thread and with 1 process x N threads, Ray with N actors,
and the original frameworks (`convert.reference.Reference`, on the first `--framework-rows` rows); each
reports rows/s, rows/s per core and the peak resident memory of its whole process tree (sampled). It also
measures how far a 2-thread run's probabilities move from the 1-thread answers and whether any label does.

Only numpy, onnxruntime and pyarrow are needed for `history`, `compare` and `bench --no-frameworks` (a
serving-class host); the frameworks part needs the [convert] extra, Ray the [ray] extra (`--no-ray`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from convert.demo import DemoSpec, feature_scales

REPO = Path(__file__).resolve().parent.parent


def market_parameters(spec: DemoSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loadings, centers, scales) of the demo market, replaying market_data's draws in its order."""
    rng = np.random.default_rng(spec.seed)
    rng.standard_normal(spec.n_rows)
    loadings = rng.uniform(-1.0, 1.0, spec.n_features)
    return (loadings, *feature_scales(spec))


def write_history(path: Path, symbols: int, minutes: int, spec: DemoSpec | None = None, seed: int = 11,
                  symbols_per_group: int = 16) -> int:
    """symbols x minutes rows (symbol, timestamp, the features) as Parquet, written a few symbols at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = spec or DemoSpec()
    loadings, centers, scales = market_parameters(spec)
    rng = np.random.default_rng(seed)
    phi = 0.995  # a minute-to-minute AR(1) signal with the training data's N(0, 1) marginal
    start = np.datetime64("2024-01-01T00:00", "us")
    times = start + np.arange(minutes).astype("timedelta64[m]").astype("timedelta64[us]")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for first in range(0, symbols, symbols_per_group):
            group = range(first, min(first + symbols_per_group, symbols))
            shocks = rng.standard_normal((len(group), minutes)) * np.sqrt(1 - phi ** 2)
            signal = np.empty_like(shocks)
            signal[:, 0] = rng.standard_normal(len(group))
            for t in range(1, minutes):
                signal[:, t] = phi * signal[:, t - 1] + shocks[:, t]
            noise = rng.standard_normal((len(group) * minutes, spec.n_features))
            x = centers + scales * (signal.reshape(-1, 1) * loadings + 0.7 * noise)
            table = pa.table({"symbol": pa.array(np.repeat([f"SYM{s:04d}" for s in group], minutes)),
                              "timestamp": pa.array(np.tile(times, len(group))),
                              **{name: x[:, j] for j, name in enumerate(spec.feature_names)}})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=65536)
    finally:
        if writer is not None:
            writer.close()
    return symbols * minutes


def compare(a: Path, b: Path, batch_rows: int = 65536) -> dict[str, Any]:
    """Two scored files, batch by batch: identical rows? If not, how far apart (float32 ulps) and labels."""
    import pyarrow.parquet as pq

    fa, fb = pq.ParquetFile(a, pre_buffer=False), pq.ParquetFile(b, pre_buffer=False)
    if fa.schema_arrow != fb.schema_arrow or fa.metadata.num_rows != fb.metadata.num_rows:
        return {"identical": False, "why": "schemas or row counts differ"}
    prob_cols = [c for c in fa.schema_arrow.names if c.startswith("p_")]
    rows = differing_rows = label_diffs = max_ulp = 0
    identical = True
    for x, y in zip(fa.iter_batches(batch_rows), fb.iter_batches(batch_rows), strict=False):
        identical = identical and x.equals(y)
        pa_ = np.column_stack([x.column(c).to_numpy(zero_copy_only=False) for c in prob_cols]).astype(np.float32)
        pb = np.column_stack([y.column(c).to_numpy(zero_copy_only=False) for c in prob_cols]).astype(np.float32)
        ulps = np.abs(pa_.view(np.int32).astype(np.int64) - pb.view(np.int32).astype(np.int64))
        max_ulp = max(max_ulp, int(ulps.max(initial=0)))
        differing_rows += int((ulps > 0).any(axis=1).sum())
        label_diffs += sum(u != v for u, v in zip(x.column("action").to_pylist(), y.column("action").to_pylist(),
                                                  strict=True))
        rows += x.num_rows
    return {"identical": identical, "rows": rows, "rows_with_any_difference": differing_rows,
            "max_ulp": max_ulp, "label_differences": label_diffs}


# ------------------------------------------------------------------------------------------- measuring

def _tree(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (resident KiB, CPU ticks used) for a process and all its descendants, from /proc."""
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (rss, int(fields[11]) + int(fields[12]))  # utime + stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
            continue
    return found


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak MiB) of one fresh process and its whole tree, sampled every 50 ms,
    and its stdout. CPU seconds make a per-core figure that a busy shared host does not distort as much
    as wall time does (each process's last 50 ms can be missed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak, ticks = 0, dict[int, float]()
    while proc.poll() is None:
        tree = _tree(proc.pid)
        peak = max(peak, sum(rss for rss, _ in tree.values()))
        for pid, (_, used) in tree.items():
            ticks[pid] = max(ticks.get(pid, 0), used)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])}... failed:\n{err[-3000:]}")
    return time.perf_counter() - start, sum(ticks.values()) / os.sysconf("SC_CLK_TCK"), peak / 1024, out


SCORE = """
import json, sys, time
from runtime.batch.backfill import score_file
from runtime.batch.ray_engine import score_file_ray
args = json.loads(sys.argv[1])
fn = score_file_ray if args.pop("engine") == "ray" else score_file
t = time.perf_counter()
s = fn(**args)
print(json.dumps({"rows": s.rows, "seconds": time.perf_counter() - t}))
"""

FRAMEWORKS = """
import json, sys, time
import numpy as np, pyarrow.parquet as pq, torch
torch.set_num_threads(1)
from pathlib import Path
from convert.reference import Reference
from convert.discover import plan_from_manifest
artifacts, models, history, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
manifest = json.loads((Path(artifacts) / "manifest.json").read_text(encoding="utf-8"))
ref = Reference.from_plan(plan_from_manifest(manifest, Path(models)))
names = manifest["feature_names"]
t, rows = time.perf_counter(), 0
for batch in pq.ParquetFile(history, pre_buffer=False).iter_batches(65536, columns=names):
    x = np.column_stack([batch.column(n).to_numpy() for n in names])[: limit - rows]
    probs = ref.predict_proba(x)
    labels, confidence = ref.decision.choose(probs, manifest["classes"])  # the action, as the service decided it
    rows += len(x)
    if rows >= limit:
        break
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t}))
"""


def machine() -> dict[str, Any]:
    import onnxruntime

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    isa = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return {"cpu": model or platform.processor(), "instruction_sets": isa, "cores": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}


def bench(artifacts: Path, history: Path, models: Path | None, out: Path, workers: list[int],
          ray_workers: list[int], framework_rows: int, batch_rows: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    total = pq.read_metadata(history).num_rows
    runs: list[dict[str, Any]] = []

    def score(name: str, engine: str, n_workers: int, threads: int, cores: int) -> Path:
        target = out / f"scores-{name}.parquet"
        args = {"engine": engine, "artifacts": str(artifacts), "input_path": str(history), "output": str(target),
                "workers": n_workers, "threads": threads, "batch_rows": batch_rows, "force": True}
        seconds, cpu, peak, stdout = _timed([sys.executable, "-c", SCORE, json.dumps(args)], env)
        runs.append(_figures(name, engine, n_workers, threads, cores, json.loads(stdout.strip().splitlines()[-1]),
                             seconds, cpu, peak))
        print(json.dumps(runs[-1]), file=sys.stderr)
        return target

    reference = score("runtime-1x1", "local", 1, 1, 1)
    for n in workers:
        if n > 1:
            score(f"runtime-{n}workers", "local", n, 1, n)
    two_threads = score("runtime-1x2threads", "local", 1, 2, 2) if max(workers) >= 2 else None
    agreement: dict[str, Any] = {}
    for n in ray_workers:
        target = score(f"ray-{n}actors", "ray", n, 1, n)
        agreement[f"ray-{n}actors vs runtime-1x1"] = compare(reference, target)
    for n in workers:
        if n > 1:
            agreement[f"runtime-{n}workers vs runtime-1x1"] = compare(reference,
                                                                      out / f"scores-runtime-{n}workers.parquet")
    if two_threads is not None:
        agreement["runtime-1x2threads vs runtime-1x1"] = compare(reference, two_threads)
    if models is not None:
        seconds, cpu, peak, stdout = _timed([sys.executable, "-c", FRAMEWORKS, str(artifacts), str(models),
                                             str(history), str(framework_rows)], env)
        runs.append(_figures("frameworks", "torch+xgboost+lightgbm+sklearn", 1, 1, 1,
                             json.loads(stdout.strip().splitlines()[-1]), seconds, cpu, peak))
        print(json.dumps(runs[-1]), file=sys.stderr)
    result = {"machine": machine(), "history_rows": total, "batch_rows": batch_rows, "runs": runs,
              "agreement": agreement}
    (out / "backfill_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "backfill_bench.md").write_text("\n".join(table(result)) + "\n")
    return result


def _figures(name: str, engine: str, workers: int, threads: int, cores: int, inner: dict[str, Any],
             seconds: float, cpu: float, peak: float) -> dict[str, Any]:
    """One run's figures. `inner` is what the process timed itself: scoring only, start-up excluded."""
    rows = inner["rows"]
    return {"pipeline": name, "engine": engine, "workers": workers, "threads": threads, "cores": cores,
            "rows": rows, "seconds": inner["seconds"], "process_seconds": seconds, "cpu_seconds": cpu,
            "rows_per_second": rows / inner["seconds"], "rows_per_second_per_core": rows / inner["seconds"] / cores,
            "rows_per_cpu_second": rows / cpu if cpu else None, "peak_rss_mib": peak}


def table(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    lines = [(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['instruction_sets'])}), Python {m['python']}, "
              f"onnxruntime {m['onnxruntime']}. History: {result['history_rows']:,} rows."), "",
             ("| pipeline | workers x threads | rows | rows/s (wall) | rows/s per core (wall) | rows per CPU-second "
              "(whole process tree, start-up included) | peak memory (process tree) |"),
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['pipeline']} | {r['workers']} x {r['threads']} | {r['rows']:,} | "
                     f"{r['rows_per_second']:,.0f} "
                     f"| {r['rows_per_second_per_core']:,.0f} | {r['rows_per_cpu_second'] or 0:,.0f} "
                     f"| {r['peak_rss_mib']:,.0f} MiB |")
    lines += ["", "| compared | identical | rows with any difference | max float32 ulp | label differences |",
              "|---|---|---:|---:|---:|"]
    for name, a in result["agreement"].items():
        lines.append(f"| {name} | {a.get('identical')} | {a.get('rows_with_any_difference', '-'):,} | "
                     f"{a.get('max_ulp', '-')} | {a.get('label_differences', '-')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backfill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("history", help="write the demo history")
    h.add_argument("path", type=Path)
    h.add_argument("--symbols", type=int, default=500)
    h.add_argument("--minutes", type=int, default=4000)
    c = sub.add_parser("compare", help="are two scored Parquet files identical? (exit 1 if not)")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    b = sub.add_parser("bench", help="rows/s per core and peak memory of each engine and the frameworks")
    b.add_argument("artifacts", type=Path)
    b.add_argument("history", type=Path)
    b.add_argument("--models", type=Path, help="the models folder, for the frameworks' figures")
    b.add_argument("--no-frameworks", action="store_true", help="skip the frameworks (a runtime-only host)")
    b.add_argument("--no-ray", action="store_true", help="skip Ray (no [ray] extra)")
    b.add_argument("--workers", default=None, help="comma-separated worker counts (default 1 and the cores)")
    b.add_argument("--ray-workers", default=None, help="comma-separated actor counts (default: the cores)")
    b.add_argument("--framework-rows", type=int, default=200_000)
    b.add_argument("--batch-rows", type=int, default=65536)
    b.add_argument("--out", type=Path, default=Path("build/backfill"))
    args = parser.parse_args(argv)
    if args.command == "history":
        n = write_history(args.path, args.symbols, args.minutes)
        print(f"wrote {n:,} rows to {args.path}")
    elif args.command == "compare":
        result = compare(args.a, args.b)
        print(json.dumps(result))
        sys.exit(0 if result["identical"] else 1)
    else:
        cores = os.cpu_count() or 1
        counts = [int(v) for v in (args.workers or f"1,{cores}").split(",")]
        ray_counts = [] if args.no_ray else [int(v) for v in (args.ray_workers or str(cores)).split(",")]
        models = None if args.no_frameworks else args.models
        if models is None and not args.no_frameworks:
            parser.error("--models is needed for the frameworks' figures (or pass --no-frameworks)")
        result = bench(args.artifacts, args.history, models, args.out, sorted(set(counts)), ray_counts,
                       args.framework_rows, args.batch_rows)
        print("\n".join(table(result)))


if __name__ == "__main__":
    main()
