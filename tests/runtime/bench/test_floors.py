"""The host and its physical floors (issue 17): what the CPU can do, measured with numpy; the many-core script
that runs with numpy and onnxruntime alone; and no silent trap in `--precision int8`. No timing is asserted:
only that the figures exist, are consistent with each other, and name their host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import main

REPO = Path(__file__).resolve().parents[3]
# What a bare serving host lacks: bench_host must run without any of these.
BUILD_STACK = ("click", "torch", "onnx", "sklearn", "xgboost", "lightgbm", "skl2onnx", "onnxmltools", "pandas")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def int8_build(demo_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8-host") / "artifacts"
    result = invoke("convert", demo_models, "-o", out, "--precision", "int8", "--json", "-q")
    assert result.exit_code == 0, result.output
    return out


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo (Linux)")
@pytest.mark.parametrize(("flag", "name"), [("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_vnni", "AVX-512 VNNI"),
                                            ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX-512 BF16"),
                                            ("amx_int8", "AMX-INT8")])
def test_host_names_exactly_the_instruction_sets_the_kernel_reports(flag, name):
    from runtime.host import cpu

    assert (name in cpu()["instruction_sets"]) == (flag in _proc_flags())


@pytest.mark.parametrize(("int8_fast", "warns"), [(True, False), (False, True), (None, True)])
def test_int8_note_only_where_the_host_lacks_8_bit_dot_products(int8_fast, warns):
    from runtime.host import int8_note

    note = int8_note({"model": "Some CPU", "int8_fast": int8_fast})
    assert (note is not None) == warns
    if warns:
        assert "Some CPU" in note


def test_int8_build_records_its_build_host_and_describe_its_serving_host(int8_build, demo_artifacts):
    import runtime
    from runtime.host import cpu

    manifest = json.loads((int8_build / "manifest.json").read_text())
    build_host = manifest["precision"]["build_host"]
    assert build_host["instruction_sets"] == cpu()["instruction_sets"]
    assert ("int8_note" in build_host) and ((build_host["int8_note"] is None) == bool(cpu()["int8_fast"]))
    serving = runtime.load(int8_build).describe()["host"]
    assert serving["model"] == cpu()["model"] and "int8_note" in serving
    assert "int8_note" not in runtime.load(demo_artifacts).describe()["host"]  # fp32: nothing to warn about


def test_floors_are_consistent_with_each_other():
    from runtime.bench.floors import measure, one_row_floor_us

    floors = measure(1 << 20, 1, quick=True)
    for key in ("stream_cold_bytes_per_second", "stream_warm_bytes_per_second", "matvec_bytes_per_second",
                "peak_fp32_flops_per_second"):
        assert floors[key] > 0, key
    fp32 = one_row_floor_us(floors, 1 << 20, 2 << 18)
    assert fp32["floor_us"] == max(fp32["memory_us"], fp32["compute_us"])
    assert fp32["memory_us"] <= fp32["matvec_us"]  # the memory floor is the best of the reads, matvec among them
    assert one_row_floor_us(floors, 1 << 20, 2 << 18, float32=False)["compute_us"] == 0


@pytest.mark.parametrize(("int8_seconds", "expected"), [
    ({"1": 1.0, "256": 2.0}, []),                                              # faster than both everywhere
    ({"1": 1.0, "256": 3.5}, ["batch 256", "fp32 build"]),                      # slower than fp32 at 256 only
    ({"1": 6.0, "256": 2.0}, ["batch 1", "fp32 build", "frameworks"]),          # slower than both at 1 row
])
def test_bench_flags_an_int8_build_slower_than_fp32_or_the_frameworks(int8_seconds, expected):
    from convert.bench.report import lowered_warnings

    results = {"builds": {"fp32": {"precision": {"weights": "fp32"}}, "int8": {"precision": {"weights": "int8"}}},
               "threads": {"1": {"frameworks": {"batch_seconds": {"1": 5.0, "256": 4.0}},
                                 "builds": {"fp32": {"runtime": {"batch_seconds": {"1": 2.0, "256": 3.0}}},
                                            "int8": {"runtime": {"batch_seconds": int8_seconds}}}}}}
    warnings = lowered_warnings(results)
    assert bool(warnings) == bool(expected)
    assert all(any(word in w for w in warnings) for word in expected)
    assert all(w.startswith("int8 at 1 thread(s)") for w in warnings)


def test_bench_reports_physical_floors_and_the_host(demo_models, demo_artifacts, int8_build, tmp_path):
    result = invoke("bench", demo_artifacts, int8_build, "--models", demo_models, "--threads", "1", "--quick",
                    "--out", tmp_path, "--json", "-q")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    from convert.bench.report import lowered_warnings
    from runtime.host import cpu

    assert figures["machine"]["instruction_sets"] == cpu()["instruction_sets"]
    builds = figures["threads"]["1"]["builds"]
    for build in builds.values():
        assert build["ratios"]["one_row_p50_over_physical"] == pytest.approx(
            build["runtime"]["one_row_p50_us"] / build["physical_floor"]["floor_us"])
    assert builds["int8"]["physical_floor"]["compute_us"] == 0  # an 8-bit build's floor is its bytes
    assert builds["fp32"]["physical_floor"]["peak_fp32_flops_per_second"] >= max(
        figures["threads"]["1"]["physical"]["peak_fp32_flops_per_second"],
        builds["fp32"]["floor"]["matmul_flops_per_second"])
    assert sorted(figures["warnings"]) == sorted(lowered_warnings(figures))  # all this run measured is reported
    table = (tmp_path / "bench.md").read_text()
    assert "physical floor" in table and "numpy matvec" in table
    assert all(name in table for name in cpu()["instruction_sets"])
    assert all(f"**Warning:** {w}." in table for w in figures["warnings"])
    # Each measurement was also written as it was taken, one JSON line each.
    measured = [json.loads(line) for line in (tmp_path / "bench.measurements.jsonl").read_text().splitlines()]
    assert {(m["pipeline"], m["kind"]) for m in measured} == {
        (pipeline, kind) for pipeline in ("frameworks", "runtime fp32", "runtime int8") for kind in ("warm", "cold")
    } | {("numpy", "physical floors"), ("runtime fp32", "machine floor"), ("runtime int8", "machine floor")}


def test_the_benchmarks_time_rows_the_build_takes(demo_artifacts, int8_build):
    """Found: bench_host and the studies drew standard-normal rows, on no feature's scale: the demo refuses them
    (a 1-hour return's domain is about +-0.4), so the host bench and the many-core study timed nothing."""
    import numpy as np

    import runtime
    from runtime.bench.host import domain_rows

    for folder in (demo_artifacts, int8_build):
        ens = runtime.load(folder)
        lo, hi = (np.asarray(ens.manifest["domain"][k]) for k in ("lo", "hi"))
        with pytest.raises(runtime.InputError, match="is outside"):  # what the benchmarks drew before
            ens.predict_proba(np.random.default_rng(0).standard_normal((256, len(ens.feature_names))))
        rows = domain_rows(ens.manifest, 256)
        assert rows.shape == (256, len(ens.feature_names)) and ((lo <= rows) & (rows <= hi)).all()
        assert np.isfinite(ens.predict_proba(rows)).all()  # all taken
        # Near the centre, as a service's rows are, and not all one row: within 10% of the half-width, spread.
        assert (np.abs(rows - (lo + hi) / 2) <= 0.1 * (hi - lo) / 2).all() and (rows.std(axis=0) > 0).all()
        assert (domain_rows(ens.manifest, 4, seed=1) != rows[:4]).all()
    old = {"feature_names": ["a", "b"], "domain": None}  # a build from before the domain takes any finite row
    assert np.isfinite(domain_rows(old, 3)).all() and domain_rows(old, 3).shape == (3, 2)


def test_bench_host_runs_with_numpy_and_onnxruntime_alone(demo_artifacts, int8_build, tmp_path):
    """A serving host has neither the build stack nor click: block them all and run the module."""
    blocker = (
        "import sys, runpy\n"
        f"BLOCKED = {BUILD_STACK!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not on a serving host')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['bench_host', *sys.argv[1:]]\n"
        "runpy.run_module('runtime.bench.host', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", blocker, str(demo_artifacts), str(int8_build), "--threads", "1,2",
                           "--quick", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench_host.json").read_text())
    assert sorted(results["floors"]) == ["1", "2"]
    fp32 = results["builds"][demo_artifacts.name]
    assert fp32["cost"] == "from the graph's initializers"  # onnx was blocked: counted off the bytes, exactly
    one, two = fp32["threads"]["1"], fp32["threads"]["2"]
    assert {"sequential", "level DISABLE_ALL", "bare session, optimised graph saved and reloaded"} <= set(one)
    assert {"sequential", "parallel inter=2", "members in threads"} <= set(two)
    assert two["members in threads"]["member_threads"]["patchtst"] == 1  # 2 threads: the rest take one each
    assert results["builds"]["artifacts"]["precision"]["weights"] == "int8"
    table = (tmp_path / "bench_host.md").read_text()
    assert "| 2 | members in threads |" in table and results["host"]["model"] in table


def test_bench_host_refuses_a_folder_that_is_not_artifacts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "runtime.bench.host", str(tmp_path), "--quick", "--threads", "1",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and str(tmp_path) in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("form", ["Gemm W transposed", "MatMul + Add"])
def test_layout_study_compares_graphs_that_compute_the_same(demo_artifacts, form):
    """bench_layouts times each weight-Gemm form of the whole ensemble: each must be the same function."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from benchmarks.layouts import whole_graph_in_form

    model = onnx.load(demo_artifacts / "ensemble.onnx")
    rewritten = whole_graph_in_form(model, form)
    assert not [n for n in rewritten.graph.node if n.op_type == "Gemm" and any(
        a.name == "transB" and a.i == 1 for a in n.attribute)]
    rows = np.random.default_rng(1).standard_normal((16, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value))
    shipped = ort.InferenceSession(model.SerializeToString()).run(["probabilities"], {"features": rows})[0]
    other = ort.InferenceSession(rewritten.SerializeToString()).run(["probabilities"], {"features": rows})[0]
    np.testing.assert_allclose(other, shipped, atol=1e-5)


@pytest.mark.parametrize(("form", "k"), [("blocks", 8), ("blocks", 16), ("branches", 4)])
def test_manycore_study_rewrites_the_feed_forward_blocks_into_the_same_function(demo_artifacts, form, k):
    """bench_manycore times PatchTST's feed-forward blocks split k ways: every block must be rewritten, and the
    ensemble must compute what the shipped graph computes."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from benchmarks.manycore import feed_forward_split

    model = onnx.load(demo_artifacts / "ensemble.onnx")
    blocks = 4  # PatchTST's four layers; no other Gemm -> Relu -> Gemm block of the demo holds 65,536 weights
    rewritten = feed_forward_split(model, k, form)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    if form == "blocks":
        assert ops.count("ReduceSum") == blocks
    else:
        assert ops.count("Sum") == blocks and ops.count("Gemm") == 24 - 2 * blocks + blocks * 2 * k
    rows = np.random.default_rng(2).standard_normal((33, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value))
    names = ["probabilities", "member_probabilities"]
    shipped = ort.InferenceSession(model.SerializeToString()).run(names, {"features": rows})
    other = ort.InferenceSession(rewritten.SerializeToString()).run(names, {"features": rows})
    for a, b in zip(other, shipped, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_manycore_study_refuses_an_unknown_form(demo_artifacts):
    import onnx

    from benchmarks.manycore import feed_forward_split

    with pytest.raises(ValueError, match="blocks, branches"):
        feed_forward_split(onnx.load(demo_artifacts / "ensemble.onnx"), 4, "diagonal")


@pytest.mark.slow
def test_layouts_study_runs_and_times_every_member_alone(demo_artifacts, tmp_path):
    # Found: the study fed every member graph float32, and a member that reads float64 (LightGBM) refused it.
    done = subprocess.run([sys.executable, "-m", "benchmarks.layouts", str(demo_artifacts), "--rounds", "1",
                           "--calls", "2", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    timed = json.loads((tmp_path / "layouts.json").read_text())["whole_graph"]
    members = json.loads((demo_artifacts / "manifest.json").read_text())["members"]
    assert {f"member {name} alone" for name in members} <= set(timed)


def test_manycore_study_runs_and_writes_its_table(demo_artifacts, tmp_path):
    # Found: it timed predict_proba on a standard normal row, which the demo build refuses (outside its domain).
    done = subprocess.run([sys.executable, "-m", "benchmarks.manycore", str(demo_artifacts), "--threads", "1,2",
                           "--quick", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "manycore.json").read_text())
    assert set(results["threads"]) == {"1", "2"}
    assert {"shipped, default", "blocks 16, default", "shipped, spin 1 ms",
            "runtime.predict_proba, default"} <= set(results["threads"]["2"])
    assert "| 2 | shipped, workers pinned |" in (tmp_path / "manycore.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "benchmarks.manycore", str(tmp_path), "--quick"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and str(tmp_path) in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("module", ["runtime.bench.host", "benchmarks.manycore", "benchmarks.layouts"])
@pytest.mark.parametrize("where", [".", "members", "new/sub"])
def test_a_study_refuses_to_write_into_the_artifacts_folder_it_times(artifacts_copy, module, where):
    # Found: --out ARTIFACTS wrote bench_host.json/manycore.json into the build, which then failed verification.
    import runtime

    out = artifacts_copy / where
    effort = ["--rounds", "1"] if module == "benchmarks.layouts" else ["--quick", "--threads", "1"]
    done = subprocess.run([sys.executable, "-m", module, str(artifacts_copy), "--out", str(out), *effort],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"--out {out}: is, or is inside, the artifacts folder" in done.stderr \
        or f"--out {out}: is, or is inside, an artifacts folder" in done.stderr
    runtime.load(artifacts_copy)  # untouched


def test_bench_refuses_an_out_folder_inside_a_build(demo_artifacts, tmp_path):
    # Found: --out ARTIFACTS/members passed the check (it compared equality only) and broke the build.
    import shutil

    build = Path(shutil.copytree(demo_artifacts, tmp_path / "build"))
    result = invoke("bench", build, "--models", tmp_path, "--out", build / "members", "--quick")
    assert result.exit_code == 1 and "is, or is inside, an artifacts folder" in result.output
    assert sorted(p.name for p in (build / "members").iterdir()) == sorted(
        p.name for p in (demo_artifacts / "members").iterdir())


@pytest.mark.parametrize(("argv", "says"), [
    (["--threads", "99999999999"], "each count must be from 1 to 1024"),
    (["--threads", "0"], "each count must be from 1 to 1024"),
    (["--threads", "1,,2"], "give comma-separated whole numbers"),
])
def test_a_study_refuses_thread_counts_it_cannot_run(demo_artifacts, tmp_path, argv, says):
    # Found: 99999999999 threads gave a TypeError traceback (onnxruntime) or a MemoryError (numpy).
    for module in ("runtime.bench.host", "benchmarks.manycore"):
        done = subprocess.run([sys.executable, "-m", module, str(demo_artifacts), "--quick", "--out",
                               str(tmp_path / "out"), *argv], cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_study_refuses_an_out_that_is_a_file_before_timing(demo_artifacts, tmp_path):
    # Found: bench_manycore ran the whole sweep, then printed a FileExistsError traceback.
    existing = tmp_path / "existing.txt"
    existing.write_text("user data\n")
    for out in (existing, existing / "sub"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.manycore", str(demo_artifacts), "--quick",
                               "--threads", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 1 and "not a folder" in done.stderr and "Traceback" not in done.stderr
        assert "| 1 | shipped" not in done.stdout  # refused before anything was timed
    assert existing.read_text() == "user data\n"


def test_the_layout_study_refuses_zero_rounds(demo_artifacts, tmp_path):
    # Found: --rounds 0 printed "nan µs" for every figure, none measured.
    done = subprocess.run([sys.executable, "-m", "benchmarks.layouts", str(demo_artifacts), "--rounds", "0",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "at least 1" in done.stderr and "nan" not in done.stdout


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from MODULE import NAME` in a file, relative modules made absolute."""
    import ast

    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


STUDIES_AND_HOST = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "runtime" / "bench").glob("*.py"))


@pytest.mark.parametrize("path", STUDIES_AND_HOST, ids=lambda p: str(p.relative_to(REPO)))
def test_benchmarks_import_only_public_names_and_the_host_benchmark_only_the_runtime(path):
    """The studies use the project's public functions (no `_private` helper of another module); what runs on a
    serving host (runtime/bench) imports nothing from the build package or the studies."""
    ours = ("convert", "runtime", "benchmarks")
    imported = [(m, n) for m, n in _imports(path) if m.split(".")[0] in ours]
    assert not [(m, n) for m, n in imported if n.startswith("_")]
    if path.parent.name == "bench":
        assert all(m.split(".")[0] == "runtime" for m, _ in imported), imported


@pytest.mark.parametrize(("lo", "hi", "expect"), [
    (-1e38, 1e38, "standard normal"),      # a feature only float32 trees bound: any value, no scale in it
    (-1e308, 1e308, "standard normal"),    # one only float64 trees bound
    (-100.0, 100.0, "2% of the half-width"),
    (1e8 - 5e8, 1e8 + 5e8, "2% of the half-width"),  # raw volumes near 1e8, 100 standard deviations of 5e6
])
def test_bench_rows_in_a_feature_only_trees_bound_are_on_no_absurd_scale(lo, hi, expect):
    """Found: 2% of a trees-only domain's half-width is 2e36, so the benchmarks timed every tree's outermost
    branch on rows no service sends. Such a feature draws standard normal rows; a bounded one, 2% as before."""
    import numpy as np

    from runtime.bench.host import domain_rows

    manifest = {"feature_names": ["f"], "domain": {"lo": [lo], "hi": [hi]}}
    rows = domain_rows(manifest, 4000)[:, 0]
    noise = np.random.default_rng(0).standard_normal(4000)
    want = noise if expect == "standard normal" else lo / 2 + hi / 2 + noise * 0.02 * (hi / 2 - lo / 2)
    np.testing.assert_array_equal(rows, want)
