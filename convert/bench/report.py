"""The bench's report: how each build compares (ratios), the machine it ran on, the warnings where a lowered
build is slower than what it should beat, the Markdown table and the plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


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
