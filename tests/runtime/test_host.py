"""The host CPU report (`runtime/host.py`): the first processor block of /proc/cpuinfo, the instruction sets
int8 needs, and the note an int8 build gives a host where 8-bit weights do not pay. Every expected value is
written by hand here; nothing trains or loads a model."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import pytest

from runtime import host

# ------------------------------------------------------------------------------------------ the host


def _host(monkeypatch, tmp_path: Path, text: bytes | None) -> dict[str, Any]:
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_bytes(text)
    monkeypatch.setattr(host, "CPUINFO", path)
    return host.cpu()


X86 = b"""
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu sse avx512_vnni fma avx2 amx_int8 avx512f
address sizes\t: 46 bits: physical
flags\t\t: ignored, the first value counts

processor\t: 1
model name\t: another cpu
flags\t\t: fpu
"""


def test_the_first_processor_block_of_cpuinfo_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_bytes(X86 + b"bogus\xff: \xfe\n")
    assert host._cpuinfo() == {"processor": "0", "vendor_id": "GenuineIntel",
                               "model name": "Intel(R) Xeon(R) CPU @ 2.20GHz",
                               "flags": "fpu sse avx512_vnni fma avx2 amx_int8 avx512f",
                               "address sizes": "46 bits: physical"}
    (tmp_path / "cpuinfo").write_bytes(b"model name: x\x80y\n")
    assert host._cpuinfo() == {"model name": "x\ufffdy"}


@pytest.mark.parametrize(("text", "want"), [
    (X86, {"model": "Intel(R) Xeon(R) CPU @ 2.20GHz",
           "instruction_sets": ["AVX2", "FMA", "AVX-512F", "AVX-512 VNNI", "AMX-INT8"], "int8_fast": True}),
    (b"processor: 0\nmodel name: old\nflags: sse avx2 fma\n", {"model": "old", "instruction_sets": ["AVX2", "FMA"],
                                                               "int8_fast": False}),
    (b"processor: 0\nModel name: Neoverse-N1\nFeatures: fp asimd asimddp\n",
     {"model": "Neoverse-N1", "instruction_sets": ["NEON", "NEON dot product"], "int8_fast": True}),
    (b"processor: 0\nCPU part: 0xd0c\nFeatures: fp i8mm sve\n",
     {"model": "0xd0c", "instruction_sets": ["NEON I8MM", "SVE"], "int8_fast": True}),
    (b"processor: 0\nmodel name: zen\nflags: avx_vnni avx512bw avx512_bf16 avx512_fp16 amx_tile amx_bf16\n",
     {"model": "zen", "instruction_sets": ["AVX-512BW", "AVX-VNNI", "AVX-512 BF16", "AVX-512 FP16", "AMX",
                                           "AMX-BF16"], "int8_fast": True}),
    (b"processor: 0\nmodel name: flagless\n", {"model": "flagless", "instruction_sets": [], "int8_fast": None}),
    (b"processor: 0\nmodel name: \nflags: \n", {"model": platform.processor() or "unknown", "instruction_sets": [],
                                                 "int8_fast": None}),
])
def test_cpu_reports_the_model_and_the_instruction_sets_int8_needs(monkeypatch, tmp_path, text, want):
    assert _host(monkeypatch, tmp_path, text) == {**want, "cores": os.cpu_count()}


def test_a_host_without_cpuinfo_reports_what_python_knows(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "processor", lambda: "")  # a host Python cannot name either
    assert _host(monkeypatch, tmp_path, None) == {"model": "unknown", "cores": os.cpu_count(),
                                                  "instruction_sets": [], "int8_fast": None}
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert _host(monkeypatch, tmp_path, None)["model"] == "arm"
    assert host._cpuinfo() == {}


def test_this_host_is_reported_from_its_own_cpuinfo():
    report = host.cpu()
    assert set(report) == {"model", "cores", "instruction_sets", "int8_fast"} and report["cores"] == os.cpu_count()
    assert report["model"] and report["model"] != "unknown" or not Path("/proc/cpuinfo").exists()


@pytest.mark.parametrize(("report", "note"), [
    ({"model": "fast", "int8_fast": True}, None),
    ({"model": "slow", "int8_fast": False},
     "slow has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): onnxruntime's 8-bit kernels emulate "
     "them, and an int8 build can be slower than fp32 here. Benchmark both on the serving host (`ensemble-onnx "
     "bench FP32 INT8 --models ...`)."),
    ({"model": "odd", "int8_fast": None}, "cannot tell whether odd has the instructions that make 8-bit weights pay."),
    ({"model": "bare"}, "cannot tell whether bare has the instructions that make 8-bit weights pay."),
    ({}, "cannot tell whether None has the instructions that make 8-bit weights pay."),
    ({"int8_fast": False}, "None has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): onnxruntime's "
     "8-bit kernels emulate them, and an int8 build can be slower than fp32 here. Benchmark both on the serving "
     "host (`ensemble-onnx bench FP32 INT8 --models ...`)."),
])
def test_int8_note_warns_where_8_bit_weights_do_not_pay(report, note):
    assert host.int8_note(report) == note

