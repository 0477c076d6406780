"""The explicit int8 build (`convert --precision int8`): gated on its own label agreement after the float32
export is proven exact, smaller weights in the shipped graph only, rows independent of their batchmates,
served and verified like any other build, and refused where it cannot run. Real frameworks, demo models."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from domain_rows import bounds, typical_rows

from convert.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# Two hosts, written as /proc/cpuinfo: the int8 warning is a branch on the build host's instruction sets, so
# both branches run on whatever CPU runs the suite (an AVX2-only CI host and an AVX-512 VNNI one alike).
AVX2_ONLY = "processor\t: 0\nmodel name\t: Test AVX2 host\nflags\t\t: fpu sse sse4_2 avx fma avx2\n"
WITH_VNNI = "processor\t: 0\nmodel name\t: Test VNNI host\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
NO_VNNI_WARNING = "Test AVX2 host has none of AVX-512 VNNI"


@contextlib.contextmanager
def as_host(cpuinfo: str, folder):
    """Within it, runtime.host reads `cpuinfo` as this machine's /proc/cpuinfo."""
    import runtime.host

    path = folder / "cpuinfo"
    path.write_text(cpuinfo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime.host, "CPUINFO", path)
        yield


@pytest.fixture(scope="module")
def int8_build(demo_models, demo_artifacts, tmp_path_factory):
    """Built as on an AVX2-only host: the manifest is read from stdout, the host warning goes to stderr."""
    out = tmp_path_factory.mktemp("int8") / "artifacts"
    with as_host(AVX2_ONLY, out.parent):
        result = invoke("convert", demo_models, "-o", out, "--precision", "int8", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert "--precision int8: this build host " + NO_VNNI_WARNING in result.stderr
    manifest = json.loads(result.stdout)  # stdout is the manifest alone, whatever the host warned
    assert manifest["precision"]["build_host"]["int8_fast"] is False
    return out, manifest


def test_int8_build_records_its_precision_and_passes_both_gates(int8_build, demo_artifacts):
    out, manifest = int8_build
    precision = manifest["precision"]
    assert precision["weights"] == "int8" and precision["min_agreement"] == 0.99
    # PatchTST's eight feed-forward matrices are the layers at or over the size threshold in the demo set.
    assert len(precision["quantized_nodes"]) == 8 and all("patchtst" in n for n in precision["quantized_nodes"])
    report = json.loads((out / "parity.json").read_text())
    strict = [c for c in report["checks"] if c["target"] == "ensemble"]
    lowered = [c for c in report["checks"] if c["target"] == "ensemble (int8)"]
    assert strict and all(c["passed"] and c["max_abs_diff"] <= report["tolerance"] for c in strict)
    assert lowered and all(c["label_agreement"] >= 0.99 for c in lowered)
    assert manifest["parity"]["targets"]["ensemble (int8)"]["label_agreement"] >= 0.99
    # The member files are the float32 exports the strict gate proved, byte for byte.
    fp32 = json.loads((demo_artifacts / "manifest.json").read_text())
    for name, member in manifest["members"].items():
        assert member["onnx"]["sha256"] == fp32["members"][name]["onnx"]["sha256"]


def test_int8_graph_streams_9_of_32_bytes_for_each_lowered_weight(int8_build, demo_artifacts):
    """Each lowered weight: one byte, plus a float32 scale per block of 32 (and at most a one-byte zero point
    per block); everything else as in float32. Counted from the hyperparameters, not from the quantizer."""
    import onnx

    from runtime.bench.floors import graph_cost

    int8_bytes, int8_flops = graph_cost((int8_build[0] / "ensemble.onnx").read_bytes())
    fp32_bytes, fp32_flops = graph_cost((demo_artifacts / "ensemble.onnx").read_bytes())
    assert int8_flops == fp32_flops  # same arithmetic, fewer bytes
    hp = json.loads((demo_artifacts / "manifest.json").read_text())["members"]["patchtst"]["hyperparameters"]
    lowered = hp["n_layers"] * 2 * hp["d_model"] * hp["dim_feedforward"]  # the feed-forward matrices
    least = fp32_bytes - lowered * (4 - 1 - 4 / 32)
    assert least <= int8_bytes <= least + lowered / 32
    assert 0.33 < int8_bytes / fp32_bytes < 0.36  # what the README says: about 35% of the float32 bytes
    ops = {n.op_type for n in onnx.load(int8_build[0] / "ensemble.onnx").graph.node}
    assert "MatMulNBits" in ops and "Add" in ops  # residual Adds stay; each layer's bias Add is folded


def test_int8_rows_do_not_depend_on_their_batchmates(int8_build, demo_models):
    """Activations are quantized per row block, never per call: a symbol scored alone, or beside a row far
    outside the training range, gets the same numbers (per-call dynamic quantization fails this)."""
    import runtime

    ens = runtime.load(int8_build[0])
    rows = typical_rows(ens, 32, seed=3)
    with_outlier = rows.copy()
    lo, hi = bounds(ens)
    with_outlier[7] = hi - (hi - lo) / 20  # 90 standard deviations out in a 100-deviation domain
    alone = np.vstack([ens.predict_proba(rows[i:i + 1]) for i in range(len(rows))])
    together = ens.predict_proba(rows)
    beside_outlier = ens.predict_proba(with_outlier)
    others = np.arange(len(rows)) != 7
    # Between batch sizes the float32 kernels may round the last bit differently, as in an fp32 build;
    # per-call quantization moves these by ~5e-3. At one batch size a neighbour changes nothing at all.
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(together[others], beside_outlier[others])


def test_int8_build_serves_and_verifies_like_any_build(int8_build, demo_models):
    import runtime

    out, _ = int8_build
    ens = runtime.load(out)
    assert ens.describe()["precision"]["weights"] == "int8"
    (prediction,) = ens.predict(dict(zip(ens.feature_names, [0.1] * len(ens.feature_names), strict=True)))
    assert prediction.action in ens.classes
    result = invoke("verify", out, "--models", demo_models, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["precision"]["weights"] == "int8"


def test_runtime_refuses_an_int8_build_its_onnxruntime_cannot_serve(int8_build, tmp_path):
    import runtime

    out = shutil.copytree(int8_build[0], tmp_path / "artifacts")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["precision"]["min_onnxruntime"] = "99.0"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match=r"'precision'.*onnxruntime>=99.0.*--precision fp32"):
        runtime.load(out)


def _rows_near_ties(models, n_pairs: int = 120, margin: float = 2e-5) -> np.ndarray:
    """Rows whose top two ensemble classes (as the frameworks compute them) are `margin` apart: far above
    float32 rounding (~1e-7), well under the int8 graph's differences (~1e-4). Found by bisecting between
    rows the frameworks label differently (the trees make some segments jump over the tie: those are dropped)."""
    from convert.discover import make_plan
    from convert.reference import Reference

    frameworks = Reference.from_plan(make_plan(models))
    scaler = next(iter(frameworks.scalers.values()))
    rng = np.random.default_rng(7)
    a, b = (scaler.mean + scaler.scale * rng.standard_normal((10 * n_pairs, len(scaler.mean))) for _ in range(2))
    pa, pb = frameworks.predict_proba(a), frameworks.predict_proba(b)
    keep = np.flatnonzero(pa.argmax(1) != pb.argmax(1))[:n_pairs]
    a, b, top, other = a[keep], b[keep], pa[keep].argmax(1), pb[keep].argmax(1)
    lo, hi = np.zeros(len(keep)), np.ones(len(keep))
    for _ in range(60):  # the point where p[top] - p[other] == margin, along each segment
        t = (lo + hi) / 2
        p = frameworks.predict_proba(a + t[:, None] * (b - a))
        above = p[np.arange(len(t)), top] - p[np.arange(len(t)), other] > margin
        lo, hi = np.where(above, t, lo), np.where(above, hi, t)
    rows = a + lo[:, None] * (b - a)
    p = np.sort(frameworks.predict_proba(rows), axis=1)
    near = rows[(p[:, -1] - p[:, -2] > margin / 2) & (p[:, -1] - p[:, -2] < 2 * margin)]
    assert len(near) >= 10, len(near)
    return near


def test_agreement_gate_fails_closed(demo_models, tmp_path):
    """A real int8 build held to full agreement on rows near ties: the float32 export still passes the strict
    gate on them, the int8 graph flips some labels, and the build fails with nothing written."""
    import csv

    from convert.demo import DemoSpec

    rows = _rows_near_ties(demo_models)
    data = tmp_path / "near_ties.csv"
    with open(data, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(DemoSpec().feature_names)
        writer.writerows(rows.tolist())
    out = tmp_path / "out"
    result = invoke("convert", demo_models, "-o", out, "--precision", "int8", "--min-agreement", "1.0",
                    "--parity-data", data)
    assert result.exit_code == 1, result.output
    assert "ensemble (int8)" in result.output and "labels must agree on 100.00%" in result.output
    assert not out.exists()
    report = json.loads((tmp_path / "out.parity-failed.json").read_text())
    assert report["rows"]["recorded"] == len(rows)
    strict = [c for c in report["checks"] if not c["target"].endswith("(int8)")]
    assert strict and all(c["passed"] for c in strict)  # the float32 export agreed on every label
    assert any(not c["passed"] for c in report["checks"] if c["target"] == "ensemble (int8)")


def test_min_agreement_without_a_lowered_precision_is_a_usage_error(demo_models, tmp_path):
    result = invoke("convert", demo_models, "-o", tmp_path / "out", "--min-agreement", "0.95")
    assert result.exit_code == 2 and "--precision int8" in result.output


@pytest.mark.parametrize(("cpuinfo", "warned"), [(AVX2_ONLY, True), (WITH_VNNI, False)])
def test_int8_with_nothing_large_enough_to_lower_is_refused(demo_models, tmp_path, cpuinfo, warned):
    """N-HiTS alone has no Linear layer that large: an "int8" build would be float32 under another name. On
    either host; only the one without 8-bit dot products is warned, on stderr."""
    with as_host(cpuinfo, tmp_path):
        result = invoke("convert", demo_models, "-o", tmp_path / "out", "--only", "nhits", "--precision", "int8")
    assert result.exit_code == 1 and "nothing would be lowered" in result.stderr
    assert (NO_VNNI_WARNING in result.stderr) is warned
    assert not (tmp_path / "out").exists()
