"""The drift report (`runtime.drift.drift_report`, what `Ensemble.drift` returns) as text for the `drift` command."""

from __future__ import annotations

from typing import Any

from ..drift import PSI_WARN


def _small_sample_lines(report: dict[str, Any]) -> list[str]:
    small = report.get("small_sample")
    if not small:
        return []
    need = (f"score {small['rows_needed']:,} rows or more to tell a PSI of {PSI_WARN}" if small["rows_needed"]
            else "the build's reference rows are too few to tell it at any batch size")
    return [f"too few rows to tell: noise alone reaches a PSI of {small['psi_limit']:.3f} in {report['rows']} rows, "
            f"so a PSI under it is not counted; {need}"]


def table(report: dict[str, Any]) -> list[str]:
    """The report as aligned text lines, for a terminal."""
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))  # int("+9") is 9

    # The missing-value column only when a feature had NaN (a build that takes it): counts, not figures.
    missing = any(f.get("missing") for f in report["features"].values())
    lines = [f"drift on {report['rows']} rows: {report['status'].upper()}"
             + (f" (drift: {', '.join(report['drift'])})" if report["drift"] else "")
             + (f" (warn: {', '.join(report['warn'])})" if report["warn"] else ""),
             *_small_sample_lines(report),
             f"{'feature':<16} {'status':<7} {'psi':>8} {'out':>7} {'shift sd':>9} {'spread':>7}"
             + (f" {'missing':>7}" if missing else "")]
    for name, f in report["features"].items():
        lines.append(f"{name:<16} {f['status']:<7} {num(f.get('psi'), '8.4f')} {num(f.get('out_of_range'), '7.2%')} "
                     f"{num(f.get('mean_shift'), '+9.3f')} {num(f.get('spread_ratio'), '7.3f')}"
                     + (f" {f.get('missing', 0):>7}" if missing else ""))
    return lines
