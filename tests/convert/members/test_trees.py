"""The tree-model failures of issue #12, each reproduced on a real tiny model: what the frameworks predict
against what the member export computes, and what `convert` says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import main
from convert.members import MemberSource, get_kind
from tests.variants import by_id, cached_folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trees")


def member(folder: Path, name: str | None = None):
    spec = json.loads((folder / "ensemble.json").read_text())
    name = name or next(iter(spec["members"]))
    entry = spec["members"][name]
    return get_kind(entry["kind"]).load(MemberSource(name, entry["kind"], folder / entry["file"]))


def onnx_probabilities(loaded, x32: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    double = session.get_inputs()[0].type == "tensor(double)"  # a member that compares in double reads float64
    return session.run(None, {"input": x32.astype(np.float64) if double else x32})[0]


def convert(folder: Path, out: Path):
    return CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q", "--json"])


def test_nan_trained_lightgbm_beside_scaled_members_has_no_gate_row_at_infinity(root, tmp_path):
    """LightGBM writes 1e300 for a split that parts NaN from every value; its gate rows were +-inf, pushed
    through the other member's StandardScaler (sklearn: 'Input X contains infinity')."""
    folder = cached_folder(by_id("lightgbm-nan_in_training,_scaled_members-txt"), root)
    dump = member(folder, "lightgbm")
    assert any(t > 1e38 for _, t in dump.thresholds), "the model must hold a split past float32"
    result = convert(folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["passed"] and report["left_out"]["threshold_not_finite"]["rows"] > 0
    assert "inf" in report["left_out"]["threshold_not_finite"]["why"]


@pytest.mark.parametrize("variant_id", ["lightgbm-subsampling-txt", "lightgbm-goss_extra_trees-txt",
                                        "lightgbm-default-txt"])
def test_lightgbm_reads_inputs_within_1e_35_as_zero_and_so_does_the_export(root, variant_id):
    """The 0.004 / 0.010 gate failures: LightGBM reads |x| <= 1e-35 as 0.0 and splits at -1e-35; the export
    compared x itself. The gate's row one ulp over -1e-35 found it; here every tiny value is tried."""
    loaded = member(cached_folder(by_id(variant_id), root))
    assert any(abs(t) < 1e-30 for _, t in loaded.thresholds), "the model must split between the zero bins"
    tiny = np.float32(1e-35)
    values = np.array([0.0, tiny, -tiny, np.nextafter(tiny, 1), np.nextafter(-tiny, -1), 1e-40, -1e-40,
                       np.nextafter(tiny, 0), np.nextafter(-tiny, 0)], dtype=np.float32)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((len(values) * 8 * 4, 8)).astype(np.float32)
    for i in range(len(x)):
        x[i, (i // len(values)) % 8] = values[i % len(values)]
    np.testing.assert_allclose(onnx_probabilities(loaded, x), loaded.reference(x), atol=1e-6)


@pytest.mark.parametrize("variant_id", ["xgboost-random_forest-pkl", "xgboost-XGBRFClassifier-json",
                                        "xgboost-XGBRFClassifier-pkl", "lightgbm-random_forest-txt",
                                        "xgboost-dart-json", "xgboost-dart-ubj", "lightgbm-dart-txt",
                                        "xgboost-binary-k2-json", "lightgbm-binary-k2-txt",
                                        "xgboost-base_score-k2-json", "xgboost-5_classes-k5-ubj",
                                        "lightgbm-nan_in_training-txt", "xgboost-early_stopping-json"])
def test_member_export_matches_the_framework_off_the_gate(root, variant_id):
    """Random forests average (LightGBM) or lay out several trees per class (XGBoost); dart weighs each
    tree: on rows the gate does not choose, the export computes what the framework predicts."""
    loaded = member(cached_folder(by_id(variant_id), root))
    x = np.random.default_rng(2).standard_normal((2000, 8)).astype(np.float32) * 1.5
    want = loaded.reference(x)
    got = onnx_probabilities(loaded, x)
    assert got.shape == want.shape == (2000, loaded.n_classes)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


@pytest.mark.parametrize(("variant_id", "words"), [
    ("xgboost-gblinear-pkl", "gblinear"), ("xgboost-gblinear-json", "gblinear"),
    ("xgboost-multi_output_tree-json", "multi_output_tree"), ("xgboost-categorical-json", "categorical")])
def test_what_onnx_cannot_express_is_refused_by_name(root, tmp_path, variant_id, words):
    folder = cached_folder(by_id(variant_id), root)
    result = convert(folder, tmp_path / "out")
    assert result.exit_code == 1 and not isinstance(result.exception, (KeyError, ValueError))
    assert "UnsupportedModelError" in result.output and words in result.output
    named = json.loads((folder / "ensemble.json").read_text())["members"]["xgboost"]["file"]
    assert str(folder / named) in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
