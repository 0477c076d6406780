"""The decision policy, calibration and `verify`, through the real CLI on the real demo models (one build with a
policy, made once for both): success paths, failure paths and exit codes. `bench`:
tests/convert/bench/test_bench_command.py; what every command shares: test_cli_basics.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import main

STAMP = "v20260205_231109_v5"


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def write_ensemble_json(models, decision=None, **member_changes):
    members = {kind: {"kind": kind, "file": f"{kind}_{STAMP}.{'pth' if kind in ('nhits', 'patchtst') else 'pkl'}",
                      "scaler": f"scaler_{STAMP}.pkl", **member_changes.get(kind, {})}
               for kind in ("xgboost", "lightgbm", "nhits", "patchtst")}
    spec = {"members": members, **({"decision": decision} if decision is not None else {})}
    (models / "ensemble.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def policy_build(models_cache, demo_spec, tmp_path_factory):
    """The demo ensemble built with a temperature and a minimum confidence for BUY and SELL."""
    models = shutil.copytree(models_cache(demo_spec), tmp_path_factory.mktemp("policy") / "models")
    write_ensemble_json(models, {"temperature": {"patchtst": 1.5, "xgboost": 0.7},
                                 "min_confidence": {"BUY": 0.55, "SELL": 0.55}})
    out = models.parent / "artifacts"
    result = invoke("convert", models, "-o", out, "--json", "-q")
    assert result.exit_code == 0, result.output
    return models, out, json.loads(result.stdout)


# ------------------------------------------------------------------------------------------- policy

def test_min_confidence_turns_unsure_buys_and_sells_into_hold(policy_build, demo_spec, tmp_path):
    import runtime
    from convert.demo import market_data

    _, artifacts, manifest = policy_build
    assert manifest["decision"]["min_confidence"] == {"BUY": 0.55, "SELL": 0.55}
    ens = runtime.load(artifacts)
    x, _ = market_data(demo_spec, held_out=3000)
    predictions = ens.predict(x)
    probs = np.array([[p.probabilities[c] for c in ens.classes] for p in predictions])
    top = probs.argmax(axis=1)
    unsure = (top != 1) & (probs.max(axis=1) < 0.55)
    assert unsure.any() and (~unsure & (top != 1)).any(), "the sample must hold both unsure and sure BUY/SELL rows"
    actions = np.array([p.action for p in predictions])
    assert (actions[unsure] == "HOLD").all()
    assert (actions[~unsure] == np.array(ens.classes)[top[~unsure]]).all()
    confidence = np.array([p.confidence for p in predictions])
    chosen = np.array([ens.classes.index(a) for a in actions])
    assert np.array_equal(confidence, probs[np.arange(len(probs)), chosen])  # the chosen class's probability


def test_parity_gate_checks_the_policy_labels(policy_build, tmp_path, monkeypatch):
    """A real build whose graph applies another minimum confidence (0.9) than the policy (0.55): every
    probability still agrees with the frameworks, only the policy's labels differ, and the gate fails it at
    every batch size (0.9, not just over 0.55: the batch-1 check's row sample must hold rows in between)."""
    import convert.build
    from convert.decision import Decision
    from convert.errors import ParityError

    models, _, _ = policy_build
    real = convert.build.build_ensemble_graph

    def graph_with_another_policy(members, scalers, n_features, classes, decision, stacker=None):
        return real(members, scalers, n_features, classes, Decision(decision.temperature, {"BUY": 0.9, "SELL": 0.9}),
                    stacker)
    monkeypatch.setattr(convert.build, "build_ensemble_graph", graph_with_another_policy)
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="ensemble label at batch"):
        convert.build.build(models, out)
    assert not out.exists()
    report = json.loads((tmp_path / "out.parity-failed.json").read_text())
    ensemble = [c for c in report["checks"] if c["target"] == "ensemble"]
    assert all(c["passed"] for c in ensemble if c["output"] in ("probabilities", "member_probabilities"))
    assert [c["batch_size"] for c in ensemble if c["output"] == "label" and not c["passed"]] == report["batch_sizes"]


def test_temperature_matches_softmax_of_tempered_logits(policy_build):
    """DESIGN.md: t divides a torch member's logits. Checked against torch's own logits, not our formula."""
    import torch

    import runtime
    from convert.members import MemberSource, patchtst

    models, artifacts, _ = policy_build
    ens = runtime.load(artifacts)
    module, _ = patchtst.rebuild(MemberSource("patchtst", "patchtst", models / f"patchtst_{STAMP}.pth",
                                              models / f"patchtst_{STAMP}_meta.json"),
                                 patchtst.read_architecture, patchtst.build_module)
    from convert.scaler import load_scaler

    x = np.random.default_rng(3).standard_normal((64, len(ens.feature_names)))
    raw = load_scaler(models / f"scaler_{STAMP}.pkl").mean + x * load_scaler(models / f"scaler_{STAMP}.pkl").scale
    scaled = load_scaler(models / f"scaler_{STAMP}.pkl").transform(raw).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(module(torch.from_numpy(scaled)) / 1.5, dim=-1).numpy()
    got = ens.member_probabilities(raw)["patchtst"]
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("decision, message", [
    ({"temperature": {"tabnet": 2.0}}, "not a member"),
    ({"temperature": {"nhits": 0}}, "temperature.nhits must be a number above 0"),
    ({"min_confidence": {"HOLDING": 0.5}}, "'HOLDING', which is not a class"),  # HOLD: tests/convert/test_classes.py
    ({"min_confidence": {"BUY": 1.5}}, "at most 1.0"),
    ({"threshold": 0.5}, "takes only 'temperature', 'min_confidence' and 'fallback'"),
    ({"fallback": "WAIT"}, "decision.fallback is 'WAIT'"),
])
def test_bad_decision_policy_is_refused_by_field(models_copy, tmp_path, decision, message):
    write_ensemble_json(models_copy, decision)
    result = invoke("convert", models_copy, "-o", tmp_path / "out")
    assert result.exit_code == 1 and message in result.output and "ensemble.json" in result.output
    assert not (tmp_path / "out").exists()


def test_calibrate_fits_temperatures_and_reports_before_and_after(models_copy, demo_spec, tmp_path):
    from convert.decision import negative_log_likelihood
    from convert.demo import market_data, write_demo_features

    labelled = write_demo_features(tmp_path / "labelled.csv", demo_spec, n_rows=1500, labelled=True)
    out = tmp_path / "out"
    result = invoke("convert", models_copy, "-o", out, "--calibrate", labelled, "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)["decision"]  # progress and logs go to stderr
    calibration = decision["calibration"]
    assert calibration["rows"] == 1500 and set(decision["temperature"]) == {"xgboost", "lightgbm", "nhits", "patchtst"}
    assert "ensemble_ece_before" in calibration and "ensemble_ece_after" in calibration
    assert calibration["ensemble_nll_after"] < calibration["ensemble_nll_before"]
    # The artifacts score with the fitted temperatures: their NLL on these rows is the reported one.
    import runtime

    x, y = market_data(demo_spec, held_out=1500)
    nll = negative_log_likelihood(runtime.load(out).predict_proba(x).astype(np.float64), y)
    assert nll == pytest.approx(calibration["ensemble_nll_after"], abs=1e-4)


def test_calibrate_refuses_rows_without_labels(models_copy, demo_spec, tmp_path):
    from convert.demo import write_demo_features

    unlabelled = write_demo_features(tmp_path / "rows.csv", demo_spec, n_rows=20)
    result = invoke("convert", models_copy, "-o", tmp_path / "out", "--calibrate", unlabelled)
    assert result.exit_code == 1 and "rows.csv" in result.output and "'label'" in result.output


# ------------------------------------------------------------------------------------------- verify

def test_verify_passes_on_the_build_and_reports_json(demo_models, demo_artifacts):
    result = invoke("verify", demo_artifacts, "--models", demo_models, "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["sources"] >= 5 and report["parity"]["rows"] > 1000


def test_verify_covers_the_policy_and_recorded_rows(policy_build, demo_spec, tmp_path):
    from convert.demo import write_demo_features

    models, artifacts, _ = policy_build
    rows = write_demo_features(tmp_path / "recorded.csv", demo_spec, n_rows=40)
    result = invoke("verify", artifacts, "--models", models, "--data", rows, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["rows"] == json.loads((artifacts / "parity.json").read_text())[
        "rows"]["total"] + 40


def test_verify_refuses_changed_model_files_by_name(models_copy, demo_artifacts):
    target = models_copy / f"lightgbm_{STAMP}.pkl"
    target.write_bytes(target.read_bytes() + b"\0")
    result = invoke("verify", demo_artifacts, "--models", models_copy)
    assert result.exit_code == 1 and target.name in result.output and "sha256" in result.output
    (models_copy / f"scaler_{STAMP}.pkl").unlink()
    assert f"scaler_{STAMP}.pkl: missing" in invoke("verify", demo_artifacts, "--models", models_copy).output


def test_verify_fails_when_the_onnx_no_longer_agrees(demo_models, artifacts_copy):
    """Swap in another member's graph and re-sign the folder consistently: the hashes pass, the numbers must not."""
    import hashlib

    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    bad = (artifacts_copy / "members" / "nhits.onnx").read_bytes()
    (artifacts_copy / "members" / "patchtst.onnx").write_bytes(bad)
    manifest["files"]["members/patchtst.onnx"] = hashlib.sha256(bad).hexdigest()
    manifest["members"]["patchtst"]["onnx"]["sha256"] = manifest["files"]["members/patchtst.onnx"]
    # ensemble.onnx carries the manifest it was built for: a consistent forger re-embeds it there too.
    import onnx

    from runtime import contract
    model = onnx.load(artifacts_copy / "ensemble.onnx")
    bound = contract.bound_part(manifest)
    onnx.helper.set_model_props(model, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                        contract.META_DIGEST: contract.manifest_digest(bound)})
    (artifacts_copy / "ensemble.onnx").write_bytes(model.SerializeToString())
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(model.SerializeToString()).hexdigest()
    (artifacts_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", artifacts_copy, "--models", demo_models)
    assert result.exit_code == 1 and "member patchtst" in result.output and "no longer passes" in result.output


def _served_graph_swapped_and_rehashed(artifacts_copy, policy_build):
    """ensemble.onnx replaced by another build's (same inputs and outputs, other temperatures and policy), its
    sha256 fixed in manifest.json: every hash checks out, and the folder now serves something else."""
    import hashlib

    other = (policy_build[1] / "ensemble.onnx").read_bytes()
    assert other != (artifacts_copy / "ensemble.onnx").read_bytes()
    (artifacts_copy / "ensemble.onnx").write_bytes(other)
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(other).hexdigest()
    (artifacts_copy / "manifest.json").write_text(json.dumps(manifest))
    return artifacts_copy


def test_verify_fails_when_the_served_graph_is_swapped_and_rehashed(demo_models, artifacts_copy, policy_build):
    folder = _served_graph_swapped_and_rehashed(artifacts_copy, policy_build)
    result = invoke("verify", folder, "--models", demo_models)
    # The swapped graph carries the manifest it was built for: refused at the binding, before any parity.
    assert result.exit_code == 1 and "ensemble.onnx" in result.output


def test_runtime_refuses_a_served_graph_swapped_and_rehashed(artifacts_copy, policy_build):
    import runtime

    folder = _served_graph_swapped_and_rehashed(artifacts_copy, policy_build)
    with pytest.raises(runtime.ArtifactError):
        runtime.load(folder)


def test_verify_refuses_tampered_artifacts(demo_models, artifacts_copy):
    (artifacts_copy / "ensemble.onnx").write_bytes(b"not a graph")
    result = invoke("verify", artifacts_copy, "--models", demo_models)
    assert result.exit_code == 1 and "ensemble.onnx" in result.output


def test_verify_usage_errors_exit_2(demo_artifacts):
    assert invoke("verify", demo_artifacts).exit_code == 2            # --models is required
    assert invoke("bench", demo_artifacts).exit_code == 2
    assert invoke("verify", demo_artifacts, "--models", "/nonexistent").exit_code == 2
