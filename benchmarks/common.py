"""What every study does before it times anything: the build verified, --out checked, the host named."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def refusal(artifacts: Path, out: Path) -> str | None:
    """Why the study may not run, or None: the build does not load (runtime.load verifies it), or --out would
    break it (runtime.bench.host.out_refusal). Checked before anything is timed."""
    import runtime
    from runtime.bench.host import out_refusal

    try:
        runtime.load(artifacts)
    except (runtime.ArtifactError, OSError) as exc:
        return str(exc)
    return out_refusal(out, [(artifacts, "the artifacts folder")])


def refused(artifacts: Path, out: Path) -> bool:
    """`refusal`, said on stderr as `error: ...`: True when the study must stop (exit 1)."""
    reason = refusal(artifacts, out)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
    return reason is not None


def host() -> dict[str, Any]:
    """This host's CPU (runtime.host.cpu) and the onnxruntime that ran the figures."""
    import onnxruntime

    from runtime.host import cpu

    return {**cpu(), "onnxruntime": onnxruntime.__version__}


def write(out: Path, stem: str, results: dict[str, Any], lines: list[str]) -> None:
    """OUT/STEM.json and OUT/STEM.md, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
