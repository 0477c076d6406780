"""Member kinds, the registry, discovery and the safe loaders, one piece at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.demo import DemoSpec
from convert.discover import make_plan
from convert.errors import MetadataError, PlanError, StateDictError, UnsafeFileError
from convert.loaders import load_pickle
from convert.members import MemberKind, MemberSource, get_kind, known_kinds, register

STAMP = DemoSpec().stamp


def test_registry_names_known_kinds_and_refuses_overwrite():
    assert known_kinds() == ["catboost", "lightgbm", "nhits", "patchtst", "sklearn", "torch", "xgboost"]
    with pytest.raises(PlanError, match="known kinds: catboost, lightgbm, nhits, patchtst, sklearn, torch, xgboost"):
        get_kind("tabnet")
    with pytest.raises(ValueError, match="already registered"):
        register(MemberKind("nhits", (".pth",), get_kind("nhits").load, get_kind("nhits").reference))


@pytest.mark.parametrize("kind", ["nhits", "patchtst"])
def test_rebuilt_torch_module_equals_the_training_sides(demo_models, kind):
    """The converter's rebuild, loaded from the bare state_dict, computes what the trained class computes."""
    import torch

    from convert.demo import build_torch_model

    path = demo_models / f"{kind}_{STAMP}.pth"
    member = get_kind(kind).load(MemberSource(kind, kind, path, path.with_name(f"{path.stem}_meta.json")))
    original = build_torch_model(kind, DemoSpec())
    original.load_state_dict(torch.load(path, weights_only=True))
    x = np.random.default_rng(0).standard_normal((64, 18)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(original.eval()(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(member.reference(x), want, atol=1e-6)


def test_metadata_may_omit_what_shapes_tell_and_n_heads_defaults(demo_models, tmp_path):
    path = Path(shutil.copy(demo_models / f"patchtst_{STAMP}.pth", tmp_path))
    member = get_kind("patchtst").load(MemberSource("p", "patchtst", path, None))
    assert member.hyperparameters["n_heads"] == 8
    assert "n_heads=8 (v5 default, not in metadata)" in member.notes


def test_n_heads_that_does_not_divide_d_model_is_refused(demo_models, tmp_path):
    path = Path(shutil.copy(demo_models / f"patchtst_{STAMP}.pth", tmp_path))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"architecture": {"n_heads": 5}}))
    with pytest.raises(MetadataError, match="n_heads=5"):
        get_kind("patchtst").load(MemberSource("p", "patchtst", path, meta))


def test_unexpected_and_misshapen_tensors_are_named(demo_models, tmp_path):
    import torch
    state = torch.load(demo_models / f"nhits_{STAMP}.pth", weights_only=True)
    state["fc.9.weight"] = torch.zeros(1)
    state["fc.0.bias"] = torch.zeros(7)
    path = tmp_path / "nhits.pth"
    torch.save(state, path)
    with pytest.raises(StateDictError) as err:
        get_kind("nhits").load(MemberSource("n", "nhits", path))
    assert "unexpected tensor 'fc.9.weight'" in str(err.value) and "fc.0.bias" in str(err.value)


def test_lightgbm_thresholds_are_exact_for_float32_inputs(demo_models):
    """LightGBM compares float32 inputs with double thresholds; the export must agree at every boundary."""
    from convert.members.lightgbm import onnx_threshold
    from convert.members.trees import floor_float32

    member = get_kind("lightgbm").load(MemberSource("l", "lightgbm", demo_models / f"lightgbm_{STAMP}.pkl"))
    dump = load_pickle(demo_models / f"lightgbm_{STAMP}.pkl", "lightgbm").booster_.dump_model()
    doubles = [n["threshold"] for t in dump["tree_info"] for n in _splits(t["tree_structure"])]
    rounded_up = [t for t in doubles if float(np.float32(t)) > t]
    assert rounded_up, "the demo model should have thresholds that float32 rounding moves up"
    for t in rounded_up[:50]:
        v = np.float32(floor_float32(t))
        assert float(v) <= t < float(np.nextafter(v, np.float32(np.inf)))
    assert {(n["split_feature"], onnx_threshold(n["threshold"])) for t in dump["tree_info"]
            for n in _splits(t["tree_structure"])} == set(member.thresholds)


def _splits(node):
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


# --- discovery ---------------------------------------------------------------------------------------------

def test_discovery_takes_newest_stamp_and_shares_the_scaler(models_copy):
    older = models_copy / "xgboost_v20250101_000000_v9.pkl"
    shutil.copy(models_copy / f"xgboost_{STAMP}.pkl", older)
    newer = models_copy / "nhits_v20260205_231109_v6.pth"
    shutil.copy(models_copy / f"nhits_{STAMP}.pth", newer)
    plan = make_plan(models_copy)
    files = {m.name: m.file.name for m in plan.members}
    assert files["xgboost"] == f"xgboost_{STAMP}.pkl" and files["nhits"] == newer.name
    assert plan.members[2].metadata is None  # v6 has no _meta.json of its own
    assert {m.scaler.name for m in plan.members} == {f"scaler_{STAMP}.pkl"}
    assert [m.weight for m in plan.members] == [0.25, 0.25, 0.30, 0.20]


def test_discovery_refuses_ties_and_missing_kinds_and_subsets_on_request(models_copy):
    (models_copy / f"lightgbm_{STAMP}.pkl").unlink()
    with pytest.raises(PlanError, match="no lightgbm file"):
        make_plan(models_copy)
    plan = make_plan(models_copy, only=["xgboost", "nhits"])
    assert [m.name for m in plan.members] == ["xgboost", "nhits"]
    assert [m.weight for m in plan.members] == pytest.approx([0.25 / 0.55, 0.30 / 0.55])
    shutil.copy(models_copy / f"xgboost_{STAMP}.pkl", models_copy / f"xgboost_{STAMP}.joblib")
    with pytest.raises(PlanError, match="share the newest xgboost stamp"):
        make_plan(models_copy, only=["xgboost"])


@pytest.mark.parametrize("spec, match", [
    ({"members": {"a": {"kind": "nhits", "file": f"nhits_{STAMP}.pth", "scaler": None, "wieght": 1}}}, "wieght"),
    ({"members": {"a": {"kind": "tabnet", "file": f"nhits_{STAMP}.pth", "scaler": None}}}, "known kinds"),
    ({"members": {"a": {"kind": "nhits", "file": "nope.pth", "scaler": None}}}, "nope.pth"),
    ({"members": {"a": {"kind": "nhits", "file": f"nhits_{STAMP}.pth"}}}, "'scaler' is required"),
    ({"members": {"a": {"kind": "nhits", "file": f"nhits_{STAMP}.pth", "scaler": None, "weight": -1}}}, "weight"),
    ({"classes": ["UP", "UP"], "members": {}}, "at least two distinct class names"),  # any K >= 2 (issue #12)
    ({"classes": ["UP"], "members": {}}, "at least two distinct class names"),
], ids=["typo", "unknown-kind", "missing-file", "no-scaler-field", "negative-weight", "class-duplicate",
        "class-single"])
def test_ensemble_json_is_validated(models_copy, spec, match):
    (models_copy / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises((MetadataError, PlanError), match=match):
        make_plan(models_copy)


# --- loaders -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "exec"), ("os", "system"),
                                          ("numpy", "load"), ("sklearn.preprocessing._data", "minmax_scale")])
def test_globals_outside_the_allowlist_are_refused(tmp_path, module, name):
    path = tmp_path / "x.pkl"
    # protocol-0 GLOBAL + REDUCE: would call module.name("1") if the global were resolved
    path.write_bytes(f"c{module}\n{name}\n(S'1'\ntR.".encode())
    with pytest.raises(UnsafeFileError, match=f"{module}.{name}"):
        load_pickle(path, "scaler")


def test_oversized_and_malformed_metadata_is_refused(tmp_path):
    from convert.loaders import load_json

    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "a" * (2 << 20) + '"}')
    with pytest.raises(MetadataError, match="limit"):
        load_json(big)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(MetadataError, match="not valid JSON"):
        load_json(bad)
