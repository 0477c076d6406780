"""The convert stage end to end, on real models the demo generator trains, with the real frameworks."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from convert.build import build
from convert.cli import main
from convert.demo import DemoSpec, write_demo_features
from convert.errors import ParityError, UnsafeFileError
from convert.loaders import load_pickle

STAMP = DemoSpec().stamp


def convert_and_check(models: Path, out: Path, **kwargs):
    result = build(models, out, **kwargs)
    assert result.report["passed"], result.report["failures"]
    for target, figures in result.manifest["parity"]["targets"].items():
        assert figures["max_abs_diff"] <= 1e-5 and figures["label_agreement"] == 1.0, target
    return result


def test_demo_converts_with_every_member_within_tolerance(demo_models, demo_artifacts):
    """What parity.json claims, and then the same claim checked here: each members/NAME.onnx file against its
    own framework on rows the gate never saw, at batch sizes 1, 7 and 512."""
    import onnxruntime as ort

    from convert.discover import make_plan
    from convert.reference import Reference

    frameworks = Reference.from_plan(make_plan(demo_models))
    scaler = next(iter(frameworks.scalers.values()))
    raw = scaler.mean + scaler.scale * np.random.default_rng(99).standard_normal((512, 18)) * 1.5
    for member in frameworks.plan.members:
        x32 = frameworks.member_input(member.scaler, raw)
        want = frameworks.predictors[member.name](x32)
        session = ort.InferenceSession(str(demo_artifacts / "members" / f"{member.name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        for batch in (1, 7, 512):
            x = x32 if session.get_inputs()[0].type == "tensor(double)" else x32.astype(np.float32)  # as it reads
            got = np.vstack([session.run(None, {"input": x[i:i + batch]})[0] for i in range(0, 64 if batch == 1
                                                                                        else 512, batch)])
            assert np.abs(got - want[:len(got)]).max() <= 1e-5, (member.name, batch)
            assert (got.argmax(1) == want[:len(got)].argmax(1)).all(), (member.name, batch)
    manifest = json.loads((demo_artifacts / "manifest.json").read_text())
    assert manifest["ensemble"]["members"] == ["xgboost", "lightgbm", "nhits", "patchtst"]
    assert manifest["opsets"] == {"ai.onnx": 17, "ai.onnx.ml": 3}
    report = json.loads((demo_artifacts / "parity.json").read_text())
    assert report["passed"] and report["rows"]["threshold"] > 1000
    checked = {(c["target"], c["batch_size"]) for c in report["checks"]}
    for target in ("member xgboost", "member lightgbm", "member nhits", "member patchtst", "ensemble"):
        assert {(target, 1), (target, 7), (target, 512)} <= checked
    assert all(c["max_abs_diff"] <= 1e-5 and c["label_mismatches"] == 0 for c in report["checks"])
    hp = manifest["members"]["patchtst"]["hyperparameters"]
    assert hp == {"input_size": 18, "d_model": 128, "n_heads": 8, "n_layers": 4, "dim_feedforward": 2048,
                  "num_classes": 3, "norm_first": False, "activation": "relu", "layer_norm_eps": 1e-5,
                  "encoder_norm": False}


def test_ensemble_graph_matches_frameworks_on_threshold_rows(demo_models, demo_artifacts):
    """Independent of the gate's own code: rebuild the service's pipeline by hand and compare."""
    import torch
    import xgboost  # noqa: F401  (unpickled below)

    from convert.demo import build_torch_model

    # Read through the allowlisted unpickler like everything else; the predictions below are the frameworks'.
    scaler = load_pickle(demo_models / f"scaler_{STAMP}.pkl", "scaler")
    xgb = load_pickle(demo_models / f"xgboost_{STAMP}.pkl", "xgboost")
    lgbm = load_pickle(demo_models / f"lightgbm_{STAMP}.pkl", "lightgbm")
    spec = DemoSpec()
    torch_models = {}
    for kind in ("nhits", "patchtst"):
        module = build_torch_model(kind, spec)  # the training side's own class, not the converter's
        module.load_state_dict(torch.load(demo_models / f"{kind}_{STAMP}.pth", weights_only=True))
        torch_models[kind] = module.eval()
    rng = np.random.default_rng(11)
    # LightGBM sends x <= t left, t a double. Where float32(t) rounded *up*, a float32 input equal to float32(t)
    # is above t and goes right; a converter that rounds thresholds to nearest sends it left. One row per
    # such split, its scaled float32 value placed exactly on float32(t), plus 100 ordinary rows.
    splits = [(n["split_feature"], n["threshold"]) for t in lgbm.booster_.dump_model()["tree_info"]
              for n in _splits(t["tree_structure"]) if float(np.float32(n["threshold"])) > n["threshold"]]
    assert len(splits) > 20
    raw = scaler.mean_ + scaler.scale_ * rng.standard_normal((100 + len(splits), 18))
    for row, (feature, threshold) in enumerate(splits, 100):
        target = np.float32(threshold)
        value = float(target) * scaler.scale_[feature] + scaler.mean_[feature]
        for _ in range(64):  # nudge the raw value until the scaler's float64 result casts to the target exactly
            got = np.float32((value - scaler.mean_[feature]) / scaler.scale_[feature])
            if got == target:
                break
            value = np.nextafter(value, np.inf if got < target else -np.inf)
        raw[row, feature] = value
    x32 = scaler.transform(raw).astype(np.float32)
    placed = x32[np.arange(100, len(raw)), [f for f, _ in splits]]
    assert (placed == np.float32([t for _, t in splits])).mean() > 0.9  # on float32(t), above the double t
    with torch.no_grad():
        refs = {"xgboost": xgb.predict_proba(x32), "lightgbm": lgbm.predict_proba(x32),
                **{k: torch.softmax(m(torch.from_numpy(x32)), -1).numpy() for k, m in torch_models.items()}}
    want = 0.25 * refs["xgboost"] + 0.25 * refs["lightgbm"] + 0.30 * refs["nhits"] + 0.20 * refs["patchtst"]
    ens = runtime.load(demo_artifacts)
    got = ens.predict_proba(raw)
    assert np.abs(got - want).max() < 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()
    for name, probs in ens.member_probabilities(raw).items():
        assert np.abs(probs - refs[name]).max() < 1e-5, name


def _splits(node):
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


@pytest.mark.parametrize("spec", [
    DemoSpec(tree_format="native", scaler_format="joblib", early_stopping=True, n_trees=200),
    DemoSpec(tree_format="ubj", scaler_format="json", full_metadata=False, n_features=12, seed=3,
             nhits_hidden=64, nhits_stacks=3, patchtst_d_model=64, patchtst_heads=4, patchtst_layers=2,
             patchtst_ff=256, epochs=1),
], ids=["native-joblib-early-stopping", "ubj-json-12-features-small-widths-minimal-metadata"])
def test_other_model_folders_convert(models_cache, spec, tmp_path):
    models = models_cache(spec)
    result = convert_and_check(models, tmp_path / "out")
    members = result.manifest["members"]
    if spec.n_features == 12:
        assert members["nhits"]["hyperparameters"] == {"input_size": 12, "hidden_size": 64, "num_stacks": 3,
                                                       "num_classes": 3}
        assert members["patchtst"]["hyperparameters"]["dim_feedforward"] == 256
        assert members["patchtst"]["hyperparameters"]["n_layers"] == 2
    else:
        assert members["xgboost"]["hyperparameters"]["best_iteration"] < 199  # early stopping took effect
    ens = runtime.load(tmp_path / "out")
    assert len(ens.feature_names) == spec.n_features


def test_same_inputs_convert_to_byte_identical_files(demo_models, demo_artifacts, tmp_path):
    build(demo_models, tmp_path / "again")
    for rel in ("ensemble.onnx", "manifest.json", "parity.json", "README.md", "members/patchtst.onnx",
                "members/nhits.onnx", "members/xgboost.onnx", "members/lightgbm.onnx"):
        assert (tmp_path / "again" / rel).read_bytes() == (demo_artifacts / rel).read_bytes(), rel


def test_another_process_with_another_thread_count_converts_to_the_same_bytes(demo_models, demo_artifacts, tmp_path):
    """torch and onnxruntime split reductions by thread count; the build must not let that reach its bytes."""
    import os
    import subprocess
    import sys

    import torch

    threads = torch.get_num_threads() + 2  # whatever this process uses, the child uses another count
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[3])); from pathlib import Path; "
            "from convert.build import build; build(Path(sys.argv[1]), Path(sys.argv[2]))")
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    subprocess.run([sys.executable, "-c", code, demo_models, tmp_path / "child", str(threads)], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[2], capture_output=True)
    files = sorted(p.relative_to(demo_artifacts).as_posix() for p in demo_artifacts.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "child").as_posix()
                           for p in (tmp_path / "child").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "child" / rel).read_bytes() == (demo_artifacts / rel).read_bytes(), rel


def test_artifacts_readme_in_repo_is_the_one_convert_writes(demo_artifacts):
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "artifacts" / "README.md").read_bytes() == (demo_artifacts / "README.md").read_bytes()


def test_recorded_parity_data_is_added(demo_models, tmp_path):
    data = write_demo_features(tmp_path / "recorded.csv", n_rows=20)
    result = convert_and_check(demo_models, tmp_path / "out", parity_data=data)
    assert result.report["rows"]["recorded"] == 20


def test_bad_recorded_parity_data_is_refused_by_line(demo_models, tmp_path):
    from convert.errors import MetadataError

    data = write_demo_features(tmp_path / "recorded.csv", n_rows=3)
    lines = data.read_text().splitlines()
    lines[2] = "nan," + lines[2].split(",", 1)[1]
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetadataError, match=r"(?s)recorded.csv: .*line 3: .*rsi_14"):
        build(demo_models, tmp_path / "out", parity_data=data)
    assert not (tmp_path / "out").exists()


# --- ensemble.json -----------------------------------------------------------------------------------------

def test_ensemble_json_with_other_weights_and_a_raw_feature_member(models_cache, tmp_path):
    import lightgbm

    from convert.demo import market_data

    spec = DemoSpec()
    models = Path(shutil.copytree(models_cache(spec), tmp_path / "models"))
    x, y = market_data(spec)
    raw_model = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1, n_jobs=1, random_state=1).fit(x, y)
    raw_model.booster_.save_model(str(models / "lgbm_raw.txt"))
    (models / "ensemble.json").write_text(json.dumps({
        "feature_names": spec.feature_names,
        "members": {
            "trees": {"kind": "xgboost", "file": f"xgboost_{STAMP}.pkl", "scaler": f"scaler_{STAMP}.pkl", "weight": 2},
            "raw_gbm": {"kind": "lightgbm", "file": "lgbm_raw.txt", "scaler": None, "weight": 1},
            "mlp": {"kind": "nhits", "file": f"nhits_{STAMP}.pth", "scaler": f"scaler_{STAMP}.pkl", "weight": 1}},
        "combine": {"method": "weighted"}}))
    result = convert_and_check(models, tmp_path / "out")
    assert result.manifest["members"]["raw_gbm"]["scaler"] is None
    ens = runtime.load(tmp_path / "out")
    assert ens.members == pytest.approx({"trees": 0.5, "raw_gbm": 0.25, "mlp": 0.25})
    raw = x[:50]
    want = raw_model.predict_proba(raw.astype(np.float32))
    np.testing.assert_allclose(ens.member_probabilities(raw)["raw_gbm"], want, atol=1e-5)


def test_stacked_ensemble(models_cache, tmp_path):
    from sklearn.linear_model import LogisticRegression

    spec = DemoSpec()
    models = Path(shutil.copytree(models_cache(spec), tmp_path / "models"))
    rng = np.random.default_rng(5)
    probs = rng.dirichlet([1, 1, 1], size=(400, 2)).reshape(400, 6)
    stacker = LogisticRegression(max_iter=500).fit(probs, probs[:, :3].argmax(1))
    (models / "stacker.pkl").write_bytes(pickle.dumps(stacker))
    (models / "ensemble.json").write_text(json.dumps({
        "members": {k: {"kind": k, "file": f"{k}_{STAMP}.{ext}", "scaler": f"scaler_{STAMP}.pkl"}
                    for k, ext in (("nhits", "pth"), ("xgboost", "pkl"))},
        "combine": {"method": "stacking", "file": "stacker.pkl"}}))
    result = convert_and_check(models, tmp_path / "out")
    assert result.manifest["combine"]["method"] == "stacking"
    ens = runtime.load(tmp_path / "out")
    domain = ens.manifest["domain"]  # the stacker moves past 1e-5 from 100 standard deviations out: 20 it is
    x = np.clip(rng.standard_normal((30, 18)), domain["lo"], domain["hi"])
    per = ens.member_probabilities(x)
    want = stacker.predict_proba(np.concatenate([per["nhits"], per["xgboost"]], axis=1))
    np.testing.assert_allclose(ens.predict_proba(x), want, atol=1e-5)


# --- refusals: exit 1, a message naming the problem, an untouched output folder ----------------------------

def _break_missing_tensor(models):
    import torch
    path = models / f"nhits_{STAMP}.pth"
    state = torch.load(path, weights_only=True)
    del state["stacks.2.3.bias"]
    torch.save(state, path)
    return "stacks.2.3.bias"


def _break_metadata(models):
    path = models / f"nhits_{STAMP}_meta.json"
    meta = json.loads(path.read_text())
    meta["architecture"]["hidden_size"] = 256
    path.write_text(json.dumps(meta))
    return "hidden_size=256"


def _break_truncated_pth(models):
    path = models / f"patchtst_{STAMP}.pth"
    path.write_bytes(path.read_bytes()[:100_000])
    return "patchtst_"


def _break_tree_width(models):
    import xgboost

    from convert.demo import market_data
    x, y = market_data(DemoSpec())
    small = xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x[:, :17], y)
    (models / f"xgboost_{STAMP}.pkl").write_bytes(pickle.dumps(small))
    return "trained on 17 features"


def _break_feature_names(models):
    path = models / f"nhits_{STAMP}_meta.json"
    meta = json.loads(path.read_text())
    meta["feature_names"][0], meta["feature_names"][1] = meta["feature_names"][1], meta["feature_names"][0]
    (models / "ensemble.json").write_text(json.dumps({"feature_names": DemoSpec().feature_names, "members": {
        "nhits": {"kind": "nhits", "file": f"nhits_{STAMP}.pth", "scaler": f"scaler_{STAMP}.pkl"}}}))
    path.write_text(json.dumps(meta))
    return "differ at position 0"


def _break_shell_pickle(models):
    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {models / 'PWNED'}",))
    (models / f"scaler_{STAMP}.pkl").write_bytes(pickle.dumps(Payload()))
    return "posix.system"


@pytest.mark.parametrize("breaker", [_break_missing_tensor, _break_metadata, _break_truncated_pth,
                                     _break_tree_width, _break_feature_names, _break_shell_pickle],
                         ids=lambda f: f.__name__.removeprefix("_break_"))
def test_refused_builds_exit_1_and_leave_output_untouched(models_copy, demo_artifacts, tmp_path, breaker):
    out = Path(shutil.copytree(demo_artifacts, tmp_path / "out"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = breaker(models_copy)
    result = CliRunner().invoke(main, ["convert", str(models_copy), "-o", str(out)])
    assert result.exit_code == 1, result.output
    # The refusal itself names it (the plan printed before it lists every file name too).
    refusal = result.output[re.search(r"(?m)^Error: ", result.output).start():]
    assert expected in refusal, refusal
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (models_copy / "PWNED").exists()  # the payload never ran
    runtime.load(out)


def test_pickle_payload_is_refused_before_it_runs(tmp_path):
    from convert.loaders import load_pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import subprocess
            return (subprocess.call, (["touch", str(marker)],))
    path = tmp_path / "scaler.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeFileError, match="subprocess.call"):
        load_pickle(path, "scaler")
    assert not marker.exists()


def test_whole_module_pth_is_refused(tmp_path):
    import torch

    from convert.loaders import load_state_dict

    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeFileError, match="weights_only"):
        load_state_dict(path)


def test_parity_failure_fails_the_build(demo_models, tmp_path, monkeypatch):
    """A member whose export is wrong by more than the tolerance is caught, and nothing is written."""
    import dataclasses

    import convert.members as members

    real = members.get_kind("nhits")

    def skewed(source):
        member = real.load(source)
        reference = member.reference
        member.reference = lambda x: reference(x) * (1 + 1e-3)  # the export no longer matches
        return member
    # The registry holds each kind's functions as the kind module registered them: swap the entry.
    monkeypatch.setitem(members._REGISTRY, "nhits", dataclasses.replace(real, load=skewed))
    with pytest.raises(ParityError, match="member nhits"):
        build(demo_models, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "out.parity-failed.json").read_text())["passed"] is False


# --- command line ------------------------------------------------------------------------------------------

def test_cli_convert_prints_plan_and_parity_table(demo_models, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(demo_models), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for text in ("plan for", f"xgboost_{STAMP}.pkl", "n_heads=8 (from metadata)", "PASSED"):
        assert text in result.output


def test_cli_inspect_state_dict_and_folders(demo_models, demo_artifacts):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(demo_models / f"patchtst_{STAMP}.pth"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "patchtst" and len(info["tensors"]) == 54 and info["architecture"]["n_layers"] == 4
    info = json.loads(runner.invoke(main, ["inspect", str(demo_models / f"nhits_{STAMP}.pth"), "--json"]).stdout)
    assert info["kind"] == "nhits" and len(info["tensors"]) == 20
    assert "plan for" in runner.invoke(main, ["inspect", str(demo_models)]).output
    assert runner.invoke(main, ["inspect", str(demo_artifacts)]).exit_code == 0


def test_cli_usage_error_exits_2(tmp_path):
    assert CliRunner().invoke(main, ["convert"]).exit_code == 2
    assert CliRunner().invoke(main, ["frobnicate"]).exit_code == 2


def test_cli_predict_jsonl_and_csv(demo_artifacts, tmp_path):
    ens = runtime.load(demo_artifacts)
    rows = [dict(zip(ens.feature_names, [0.1 * i] * 18, strict=True), symbol=f"S{i}") for i in range(3)]
    text = "\n".join(json.dumps(r) for r in rows)
    result = CliRunner().invoke(main, ["predict", str(demo_artifacts)], input=text)
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.output.splitlines()]
    assert [o["symbol"] for o in out] == ["S0", "S1", "S2"]
    assert out[1]["action"] == ens.predict(rows[1])[0].action
    header = ",".join(reversed(ens.feature_names))
    csv_text = header + "\n" + ",".join(str(0.2) for _ in ens.feature_names) + "\n"  # inside the domain
    result = CliRunner().invoke(main, ["predict", str(demo_artifacts), "--format", "csv"], input=csv_text)
    assert result.exit_code == 0 and result.output.startswith("symbol,action,confidence,SELL")
    bad = text + "\n" + json.dumps({**rows[0], "rsi_14": "high"})
    result = CliRunner().invoke(main, ["predict", str(demo_artifacts)], input=bad)
    assert result.exit_code == 1 and "line 4" in result.output and "rsi_14" in result.output
    assert '"action"' not in result.output
