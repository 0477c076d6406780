"""The CPU this process runs on: its model and the instruction sets that decide which onnxruntime kernels are
fast here. Read from /proc/cpuinfo (Linux; elsewhere the model only, and `int8_fast` unknown).

Used by `describe()` (does the serving host have what an int8 build needs?), by `convert --precision int8`
(does the build host?) and by the benchmarks (every figure names its host). Standard library only.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name people know. Order is the order they are reported in.
INSTRUCTION_SETS = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16", "amx_tile": "AMX",
    "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "asimd": "NEON", "asimddp": "NEON dot product",
    "i8mm": "NEON I8MM", "sve": "SVE",
}
# The instructions onnxruntime's 8-bit MatMulNBits kernels (accuracy_level 4) need to beat float32: without
# one of them an int8 dot product is emulated with wider multiplies and the "faster" build can be slower.
INT8_FAST = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
CPUINFO = Path("/proc/cpuinfo")  # a module constant, so a test can hand it another host's file


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo, key -> value ({} where there is none)."""
    if not CPUINFO.exists():
        return {}
    info: dict[str, str] = {}
    for line in CPUINFO.read_text(errors="replace").splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu() -> dict[str, Any]:
    """{"model", "cores", "instruction_sets": [names], "int8_fast": bool | None} for this host."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    model = info.get("model name") or info.get("Model name") or info.get("CPU part") or platform.processor()
    return {"model": model or "unknown", "cores": os.cpu_count(),
            "instruction_sets": [name for flag, name in INSTRUCTION_SETS.items() if flag in flags],
            "int8_fast": any(f in flags for f in INT8_FAST) if flags else None}


def int8_note(host: dict[str, Any]) -> str | None:
    """A warning for an int8 build on `host`, or None where its instructions make 8-bit pay."""
    if host.get("int8_fast") is None:
        return f"cannot tell whether {host.get('model')} has the instructions that make 8-bit weights pay."
    if host["int8_fast"]:
        return None
    return (f"{host.get('model')} has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): "
            f"onnxruntime's 8-bit kernels emulate them, and an int8 build can be slower than fp32 here. "
            f"Benchmark both on the serving host (`ensemble-onnx bench FP32 INT8 --models ...`).")
