"""One row on a many-core host: the runtime's one-row latency per thread count and session configuration,
against this host's physical floors. Needs numpy and onnxruntime only (no click, torch, onnx or the build
stack), so it runs on a serving host from a copy of the repository and an artifacts folder:

    python -m runtime.bench.host ARTIFACTS [ARTIFACTS ...] --threads 1,2,4,8,16 --out DIR [--quick]

For every build folder and thread count t it measures, in this process (one session alive at a time):

- `sequential`: the runtime as shipped, intra-op t, inter-op 1 (onnxruntime's default executor);
- `parallel inter=k`: ORT_PARALLEL, so the four independent members may run at once, k inter-op threads
  (each node still takes the intra-op pool of t);
- `members in threads`: each member's own graph (members/*.onnx) in its own session, run concurrently
  from a Python thread pool (onnxruntime drops the GIL), PatchTST given the threads the trees do not use:
  what "members as independent branches" buys with no change to the graph;
- `no spinning`: the pools' idle threads sleep instead of spinning;
- at 1 thread only: graph optimisation levels, and bare sessions of the shipped graph and of onnxruntime's
  optimised graph saved and reloaded;
- from 8 threads: `parallel inter=4, intra=t/4`, the cores split among four concurrent members.

and one-row p50/p99 (`runtime.Ensemble.predict_proba`, the service's call) and batch-256 rows/s for the
shipped configuration, on rows the build takes, as a service's are (`domain_rows`: inside the build's proven
domain, near its centre). The floors (runtime.bench.floors: streaming read, numpy matvec, peak float32 FMA) run
first, each thread count in its own process. Writes DIR/bench_host.json and DIR/bench_host.md. Under five
minutes on 16 cores at full effort; `--quick` is a smoke run for the tests (figures not for quoting).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batch.results import dumps_strict, write_file
from runtime.host import cpu, int8_note

from .floors import graph_cost as exact_cost
from .floors import measure, median_seconds, one_row_floor_us

BATCH = 256


MAX_SECONDS = 1.5  # per configuration, once 200 calls are in: keeps a 16-core run of 5 thread counts < 5 min
WARMUP_SECONDS = 0.3  # first calls allocate and pick kernels; a slow configuration gets fewer of them


def timings(fn: Callable[[], Any], calls: int) -> np.ndarray:
    started = time.perf_counter()
    for _ in range(max(5, calls // 10)):
        fn()
        if time.perf_counter() - started > WARMUP_SECONDS:
            break
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < calls and (len(times) < min(calls, 200) or time.perf_counter() - started < MAX_SECONDS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def graph_cost(folder: Path) -> tuple[int, int, str]:
    """(weight bytes, multiply-add FLOPs per row, how they were found): exact, off the graph's bytes."""
    weight_bytes, flops = exact_cost((folder / "ensemble.onnx").read_bytes())
    return weight_bytes, flops, "from the graph's initializers"


def session_options(threads: int, parallel: int = 0, level: str = "ORT_ENABLE_ALL", spinning: bool = True,
             intra: int = 0, spin_us: int = 0, pinned: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra or threads
    options.inter_op_num_threads = parallel or 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin_us:  # how long an idle pool thread spins before it sleeps (onnxruntime >= 1.26)
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
        options.add_session_config_entry("session.inter_op.spin_duration_us", str(spin_us))
    if pinned and (intra or threads) > 1:  # each worker on its own logical processor 2..t (1-based); caller unpinned
        options.add_session_config_entry("session.intra_op_thread_affinities",
                                         ";".join(str(cpu) for cpu in range(2, (intra or threads) + 1)))
    return options


def configurations(threads: int) -> dict[str, dict[str, Any]]:
    """name -> keyword arguments of `session_options` for the whole-graph runs at `threads`."""
    configs: dict[str, dict[str, Any]] = {"sequential": {}}
    for inter in (2, 4):
        if inter <= max(threads, 2):
            configs[f"parallel inter={inter}"] = {"parallel": inter}
    if threads >= 8:  # four members at once, the cores split among them rather than each node taking all
        configs[f"parallel inter=4, intra={threads // 4}"] = {"parallel": 4, "intra": threads // 4}
    configs["no spinning"] = {"spinning": False}  # idle pool threads sleep: less CPU, a wake-up per node
    if threads == 1:
        configs.update({f"level {level}": {"level": f"ORT_{level}"} for level in ("DISABLE_ALL", "ENABLE_BASIC",
                                                                                   "ENABLE_EXTENDED")})
    return configs


def _member_threads(names: list[str], threads: int) -> dict[str, int]:
    """PatchTST (the weights) gets what the other members leave; each other member one thread."""
    heavy = "patchtst" if "patchtst" in names else names[-1]
    return {n: (max(1, threads - (len(names) - 1)) if n == heavy else 1) for n in names}


UNBOUNDED = 1e30  # a half-width past which a feature has no scale in its domain (trees' 1e38: any finite value)


def domain_rows(manifest: dict[str, Any], n: int, seed: int = 0, spread: float = 0.02) -> np.ndarray:
    """n float64 rows [n, F] the build takes, in its feature order: each feature its proven domain's centre
    (manifest.json `domain`) plus normal noise of `spread` times the domain's half-width (2% by default: 2
    standard deviations where the domain is 100; standard normal in a feature only trees bound), clipped to the
    domain. A row drawn on no feature's scale (standard normal in every one) lies far outside a feature of small
    scale (a 1-hour return's domain is about +-0.4) and is refused, not timed. A build from before the domain
    existed takes any finite row: standard normal."""
    noise = np.random.default_rng(seed).standard_normal((n, len(manifest["feature_names"])))
    if manifest.get("domain") is None:
        return noise
    lo = np.asarray(manifest["domain"]["lo"], dtype=np.float64)
    hi = np.asarray(manifest["domain"]["hi"], dtype=np.float64)
    # A feature only trees bound (1e38 either side, 1e308 in float64: any finite value) has no scale in its
    # domain: 2% of it is 2e36, where every row takes each tree's outermost branch. Standard normal there.
    return np.clip(np.where(hi / 2 - lo / 2 < UNBOUNDED, lo / 2 + hi / 2 + noise * spread * (hi / 2 - lo / 2),
                            noise), lo, hi)


def member_feed(session: Any, row: np.ndarray) -> dict[str, np.ndarray]:
    """A member graph's feed of `row`: as it is for a member that reads float64 (LightGBM,
    HistGradientBoosting, LogisticRegression), cast to float32 for the others."""
    spec = session.get_inputs()[0]
    return {spec.name: row if spec.type == "tensor(double)" else row.astype(np.float32)}


def _members_in_threads(folder: Path, manifest: dict[str, Any], row: np.ndarray, threads: int,
                        calls: int) -> np.ndarray:
    import onnxruntime as ort

    names = list(manifest["ensemble"]["members"])
    per = _member_threads(names, threads)
    sessions = {n: ort.InferenceSession(str(folder / manifest["members"][n]["onnx"]["file"]), session_options(per[n]))
                for n in names}
    feeds = {n: member_feed(sessions[n], row) for n in names}
    with ThreadPoolExecutor(len(names)) as pool:
        def call() -> list[Any]:
            return [f.result() for f in [pool.submit(sessions[n].run, None, feeds[n]) for n in names]]
        return timings(call, calls)


def bench_build(folder: Path, thread_counts: list[int], quick: bool,
                progress: Callable[[str], None]) -> dict[str, Any]:
    import runtime

    calls = 30 if quick else 2000
    manifest = runtime.load(folder).manifest  # verified before anything is timed
    row = domain_rows(manifest, BATCH)
    out: dict[str, Any] = {"precision": manifest.get("precision") or {"weights": "fp32"}, "threads": {}}
    for threads in thread_counts:
        entry: dict[str, Any] = {}
        for name, kwargs in configurations(threads).items():
            progress(f"{folder.name}: {threads} thread(s), {name}")
            ensemble = runtime.load(folder, session_options(threads, **kwargs))

            def one_row(e: Any = ensemble) -> Any:
                return e.predict_proba(row[:1])

            def batch(e: Any = ensemble) -> Any:
                return e.predict_proba(row)

            one = timings(one_row, calls)
            entry[name] = {"one_row_p50_us": float(np.percentile(one, 50) * 1e6),
                           "one_row_p99_us": float(np.percentile(one, 99) * 1e6)}
            if name == "sequential" or name.startswith("parallel"):
                entry[name]["batch_rows_per_second"] = BATCH / median_seconds(batch, 5 if quick else 60)
            del ensemble
        # members/ holds the float32 exports even in an int8 build: only a float32 build's members are its graph.
        if threads >= 2 and out["precision"].get("weights", "fp32") == "fp32":
            progress(f"{folder.name}: {threads} thread(s), members in threads")
            one = _members_in_threads(folder, manifest, row[:1], threads, calls)
            entry["members in threads"] = {"one_row_p50_us": float(np.percentile(one, 50) * 1e6),
                                           "one_row_p99_us": float(np.percentile(one, 99) * 1e6),
                                           "member_threads": _member_threads(list(manifest["ensemble"]["members"]),
                                                                            threads)}
        if threads == 1:
            entry.update(_saved_optimised(folder, row[:1], calls))
        out["threads"][str(threads)] = entry
    return out


def _saved_optimised(folder: Path, row: np.ndarray, calls: int) -> dict[str, dict[str, float]]:
    """onnxruntime's own optimised graph (ORT_ENABLE_EXTENDED, the portable level) written once, then loaded
    with optimisation off (what a service could ship to skip the optimiser at start-up), timed as a bare
    session (no input checks) beside the shipped graph's bare session."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        # EXTENDED, not ALL: ALL's layout transforms are specific to the machine that wrote the file.
        options = session_options(1, level="ORT_ENABLE_EXTENDED")
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        ort.InferenceSession(str(folder / "ensemble.onnx"), options)
        started = time.perf_counter()
        session = ort.InferenceSession(options.optimized_model_filepath, session_options(1, level="ORT_DISABLE_ALL"))
        load_seconds = time.perf_counter() - started
        plain = ort.InferenceSession(str(folder / "ensemble.onnx"), session_options(1))
        feed = {session.get_inputs()[0].name: row}
        saved = timings(lambda: session.run(None, feed), calls)
        shipped = timings(lambda: plain.run(None, feed), calls)
    return {"bare session, shipped graph": {"one_row_p50_us": float(np.median(shipped) * 1e6),
                                            "one_row_p99_us": float(np.percentile(shipped, 99) * 1e6)},
            "bare session, optimised graph saved and reloaded": {
                "one_row_p50_us": float(np.median(saved) * 1e6),
                "one_row_p99_us": float(np.percentile(saved, 99) * 1e6),
                "load_seconds": load_seconds}}


MAX_THREADS = 1024  # past any host's cores: a larger count is a typo (onnxruntime and numpy refuse it with a traceback)


def thread_counts(text: str, parser: argparse.ArgumentParser) -> list[int]:
    """--threads as comma-separated counts, each 1 to MAX_THREADS, or the parser's usage error."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        parser.error(f"--threads {text!r}: give comma-separated whole numbers, like 1,2,4")
    if any(not 1 <= t <= MAX_THREADS for t in counts):
        parser.error(f"--threads: each count must be from 1 to {MAX_THREADS}")
    return counts


def out_refusal(out_dir: Path, folders: list[tuple[Path, str]]) -> str | None:
    """Why a benchmark may not write its files into `out_dir`, or None: a file is there, or the folder is, or
    lies inside, one of `folders` (name, "an artifacts folder") or any artifacts folder (one holding
    manifest.json and ensemble.onnx): an unlisted file there fails verification. Checked before anything is timed."""
    target = out_dir.resolve()
    if target.exists() and not target.is_dir():
        return f"--out {out_dir}: is a file, not a folder; name a folder for the results."
    for folder, what in folders:
        if target == folder.resolve() or folder.resolve() in target.parents:
            return f"--out {out_dir}: is, or is inside, {what}; the results would break it. Name another folder."
    for place in (target, *target.parents):  # manifest.json alone may be a web app's: with ensemble.onnx, a build
        if (place / "manifest.json").is_file() and (place / "ensemble.onnx").is_file():
            return (f"--out {out_dir}: is, or is inside, an artifacts folder ({place}); the results would make it "
                    f"fail verification. Name another folder.")
        if place.exists() and not place.is_dir():
            return f"--out {out_dir}: {place} is a file, not a folder; name a folder for the results."
    return None


def run(artifacts: list[Path], thread_counts: list[int], out_dir: Path, quick: bool = False,
        progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    import onnxruntime

    import runtime

    for folder in artifacts:  # every folder verified before anything is measured
        runtime.load(folder)
    started = time.perf_counter()
    host = {**cpu(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}
    costs = {str(a): graph_cost(a) for a in artifacts}
    largest = max(c[0] for c in costs.values())
    floors = {}
    for threads in thread_counts:
        progress(f"floors: {threads} thread(s)")
        floors[str(threads)] = measure(largest, threads, quick)
    results: dict[str, Any] = {"host": host, "quick": quick, "batch": BATCH, "floors": floors, "builds": {}}
    for folder in artifacts:
        weight_bytes, flops, how = costs[str(folder)]
        build = bench_build(folder, thread_counts, quick, progress)
        build.update({"weight_bytes": weight_bytes, "flops_per_row": flops, "cost": how,
                      "int8_note": int8_note(host) if build["precision"].get("weights", "fp32") != "fp32" else None})
        for threads, entry in build["threads"].items():
            # Each thread count against its own floor, and against the all-core floor (the best this host can do).
            fp32 = build["precision"].get("weights", "fp32") == "fp32"
            own = one_row_floor_us(floors[threads], weight_bytes, flops, fp32)
            best = one_row_floor_us(floors[str(max(thread_counts))], weight_bytes, flops, fp32)
            entry["floor"] = {"own_threads": own, "all_threads": best}
        results["builds"][folder.name if folder.name not in results["builds"] else str(folder)] = build
    results["seconds"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    # Through the one writer of result files: each appears whole, strict JSON (runtime.batch.results).
    write_file(out_dir / "bench_host.json", (dumps_strict(results, indent=2, sort_keys=True) + "\n").encode(),
               force=True)
    write_file(out_dir / "bench_host.md", ("\n".join(table(results)) + "\n").encode(), force=True)
    return results


def table(results: dict[str, Any]) -> list[str]:
    h = results["host"]
    lines = [f"Host: {h['model']}, {h['cores']} cores; {', '.join(h['instruction_sets']) or 'no SIMD flags read'}; "
             f"Python {h['python']}, numpy {h['numpy']}, onnxruntime {h['onnxruntime']}"
             + (" (quick run: not for quoting)." if results["quick"] else "."), "",
             "| threads | streaming read, cold | numpy matvec over the weights | peak fp32 (numpy matmul) |",
             "|---:|---:|---:|---:|"]
    for t, f in results["floors"].items():
        lines.append(f"| {t} | {f['stream_cold_bytes_per_second'] / 1e9:.1f} GB/s (warm "
                     f"{f['stream_warm_bytes_per_second'] / 1e9:.1f}) | {f['matvec_seconds'] * 1e6:.0f} µs "
                     f"({f['matvec_bytes_per_second'] / 1e9:.1f} GB/s) | {f['peak_fp32_flops_per_second'] / 1e9:.0f} "
                     "GFLOP/s |")
    for label, b in results["builds"].items():
        lines += ["", f"**{label}** ({b['precision'].get('weights', 'fp32')}, {b['weight_bytes'] / 1e6:.1f} MB of "
                  f"weights, {b['cost']})" + (f". Note: {b['int8_note']}" if b.get("int8_note") else ""), "",
                  ("| threads | configuration | one row p50 | p99 | × floor (same threads) | × all-core floor "
                   f"| batch {results['batch']} rows/s |"), "|---:|---|---:|---:|---:|---:|---:|"]
        for t, entry in b["threads"].items():
            floor = entry["floor"]
            for name, fig in entry.items():
                if name == "floor":
                    continue
                p50 = fig["one_row_p50_us"]
                rows = f"{fig['batch_rows_per_second']:,.0f}" if "batch_rows_per_second" in fig else ""
                lines.append(f"| {t} | {name} | {p50:.0f} µs | {fig['one_row_p99_us']:.0f} µs | "
                             f"{p50 / floor['own_threads']['floor_us']:.2f}× | "
                             f"{p50 / floor['all_threads']['floor_us']:.2f}× | {rows} |")
        t1 = b["threads"].get("1", {}).get("floor")
        if t1:
            lines.append(f"\nFloor at 1 thread: memory {t1['own_threads']['memory_us']:.0f} µs (numpy matvec "
                         f"{t1['own_threads']['matvec_us']:.0f} µs), compute {t1['own_threads']['compute_us']:.0f} µs; "
                         f"all-core memory floor {t1['all_threads']['memory_us']:.0f} µs.")
    lines.append(f"\nWhole run: {results['seconds']:.0f} s.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.bench.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="artifacts folders (say fp32 and int8 builds)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1,2,4,... cores)")
    parser.add_argument("--out", type=Path, default=Path("build/bench-host"), help="where the JSON and table go")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls, figures not for quoting")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    counts = (thread_counts(args.threads, parser) if args.threads is not None
              else sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores}))
    import runtime

    refused = out_refusal(args.out, [(a, "an artifacts folder") for a in args.artifacts])
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    try:
        results = run(args.artifacts, counts, args.out, args.quick)
    except (runtime.ArtifactError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(table(results)))
    print(f"\nwritten: {args.out}/bench_host.json, bench_host.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
