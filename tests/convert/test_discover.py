"""The registry of member kinds and discovery: a models folder becomes a plan, one piece at a time."""

from __future__ import annotations

import json
import shutil

import pytest

from convert.demo import DemoSpec
from convert.discover import make_plan
from convert.errors import MetadataError, PlanError
from convert.members import MemberKind, get_kind, known_kinds, register

STAMP = DemoSpec().stamp


def test_registry_names_known_kinds_and_refuses_overwrite():
    assert known_kinds() == ["catboost", "lightgbm", "nhits", "patchtst", "sklearn", "torch", "xgboost"]
    with pytest.raises(PlanError, match="known kinds: catboost, lightgbm, nhits, patchtst, sklearn, torch, xgboost"):
        get_kind("tabnet")
    with pytest.raises(ValueError, match="already registered"):
        register(MemberKind("nhits", (".pth",), get_kind("nhits").load, get_kind("nhits").reference))


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
