"""The sixth kind, CatBoost: binary and 3-class CatBoostClassifiers, as .cbm and as allowlisted pickles, through
the real `convert` and its parity gate, alone and beside the demo members; what the export cannot reproduce is
refused by name. The reference here is CatBoost's own predict_proba on the file as `load_model` reads it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

catboost = pytest.importorskip("catboost")

from convert.cli import main  # noqa: E402

N_FEATURES = 6
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def _data(classes: int, seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    score = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 4] + 0.3 * rng.standard_normal(n)
    return x, np.searchsorted(np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]), score)


def _fit(classes: int, **params) -> object:
    x, y = _data(classes)
    return catboost.CatBoostClassifier(iterations=15, depth=3, random_seed=0, thread_count=1, verbose=False,
                                       allow_writing_files=False, **params).fit(x, y)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One binary and one 3-class model, each as .cbm, .pkl and .joblib (trained once for the module)."""
    import joblib

    root = tmp_path_factory.mktemp("catboost")
    for classes in (2, 3):
        model = _fit(classes)
        model.save_model(str(root / f"cb{classes}.cbm"))
        (root / f"cb{classes}.pkl").write_bytes(pickle.dumps(model))
        joblib.dump(model, root / f"cb{classes}.joblib")
    return root


def _folder(tmp_path: Path, files: dict[str, Path], classes: int) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    members = {}
    for name, file in files.items():
        shutil.copy(file, folder / file.name)
        members[name] = {"kind": "catboost", "file": file.name, "scaler": None}
    (folder / "ensemble.json").write_text(json.dumps({"feature_names": FEATURES, "members": members,
                                                      "classes": [f"c{i}" for i in range(classes)]}))
    return folder


def _convert(folder: Path, out: Path) -> object:
    return CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q"])


@pytest.mark.parametrize(("classes", "suffix"), [(2, "cbm"), (2, "pkl"), (3, "cbm"), (3, "joblib")])
def test_catboost_converts_within_1e5_with_identical_labels(trained, tmp_path, classes, suffix):
    import runtime

    file = trained / f"cb{classes}.{suffix}"
    folder = _folder(tmp_path, {"cb": file}, classes)
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["rows"]["threshold"] > 0
    assert all(c["max_abs_diff"] <= 1e-5 and c["label_mismatches"] == 0 for c in report["checks"])
    # Independently of the gate: the served probabilities against CatBoost's own, on fresh rows.
    reference = catboost.CatBoostClassifier()
    reference.load_model(str(trained / f"cb{classes}.cbm"))
    x, _ = _data(classes, seed=7, n=300)
    expected = reference.predict_proba(x)
    served = runtime.load(out).predict_proba(x)
    assert served.shape == (300, classes)
    assert np.abs(served - expected).max() <= 1e-5
    assert (served.argmax(1) == expected.argmax(1)).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"]["cb"]["kind"] == "catboost"
    assert manifest["libraries"]["catboost"] == catboost.__version__
    if suffix == "pkl":  # `verify` rebuilds CatBoost's answers from the source file and re-runs the gate
        verified = CliRunner().invoke(main, ["verify", str(out), "--models", str(folder), "-q"])
        assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize(("classes", "nan_mode", "takes_nan"), [
    (2, "Min", True), (3, "Min", True), (2, "Max", True), (3, "Max", True),
    (2, "Forbidden", False), (3, "Forbidden", False),
])
def test_nan_is_taken_where_the_nan_mode_defines_it_and_the_gate_proves_it(tmp_path, classes, nan_mode, takes_nan):
    """Min / Max say where a missing value goes: the build takes NaN, its gate runs NaN rows, and the served
    answers match CatBoost's own on rows full of NaN. Forbidden defines nothing: NaN is refused naming the member."""
    import runtime
    from runtime.errors import InputError

    x, y = _data(classes)
    if takes_nan:
        x[np.random.default_rng(1).random(x.shape) < 0.15] = np.nan  # trained with missing values
    model = catboost.CatBoostClassifier(iterations=15, depth=3, random_seed=0, thread_count=1, verbose=False,
                                        allow_writing_files=False, nan_mode=nan_mode).fit(x, y)
    model.save_model(str(tmp_path / "cb.cbm"))
    folder = _folder(tmp_path, {"cb": tmp_path / "cb.cbm"}, classes)
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 0, result.output
    domain = json.loads((out / "manifest.json").read_text())["domain"]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"]
    assert domain["nan"] == [takes_nan] * N_FEATURES
    assert domain["nan_refused_by"] == ([] if takes_nan else ["cb"])
    assert (report["rows"]["nan"] > 0) == takes_nan
    rows = _data(classes, seed=9, n=200)[0].astype(np.float64)
    rows[np.random.default_rng(2).random(rows.shape) < 0.3] = np.nan
    rows[:N_FEATURES] = 0.0
    rows[np.arange(N_FEATURES), np.arange(N_FEATURES)] = np.nan  # NaN alone in each feature
    ens = runtime.load(out)
    if not takes_nan:
        with pytest.raises(InputError, match="row 0, feature 'f0'.*'cb' define no missing value"):
            ens.predict_proba(rows)
        return
    expected = model.predict_proba(rows.astype(np.float32))
    served = ens.predict_proba(rows)
    assert np.abs(served - expected).max() <= 1e-5
    assert (served.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize(("option", "value"), [("rounds", 5), ("missing", -999.0)])
def test_tree_options_are_refused_for_catboost_by_name(trained, tmp_path, option, value):
    folder = _folder(tmp_path, {"cb": trained / "cb2.cbm"}, 2)
    plan = json.loads((folder / "ensemble.json").read_text())
    plan["members"]["cb"][option] = value
    (folder / "ensemble.json").write_text(json.dumps(plan))
    result = _convert(folder, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert f"members.cb.{option}: only a xgboost" in result.output and "'catboost'" in result.output
    assert not (tmp_path / "out").exists()


def test_catboost_beside_the_demo_members(demo_models, demo_spec, tmp_path):
    """A mixed ensemble: the demo's XGBoost and LightGBM on its scaler, a CatBoost member on raw features."""
    stamp = demo_spec.stamp
    folder = tmp_path / "models"
    shutil.copytree(demo_models, folder)
    names = demo_spec.feature_names
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, len(names))).astype(np.float32)
    y = np.searchsorted([-0.4, 0.4], x[:, 0] + 0.5 * x[:, 1])
    catboost.CatBoostClassifier(iterations=10, depth=3, random_seed=0, thread_count=1, verbose=False,
                                allow_writing_files=False).fit(x, y).save_model(str(folder / "cb.cbm"))
    scaler = f"scaler_{stamp}.pkl"
    (folder / "ensemble.json").write_text(json.dumps({"feature_names": names, "members": {
        "xgb": {"kind": "xgboost", "file": f"xgboost_{stamp}.pkl", "scaler": scaler},
        "lgbm": {"kind": "lightgbm", "file": f"lightgbm_{stamp}.pkl", "scaler": scaler},
        "cb": {"kind": "catboost", "file": "cb.cbm", "scaler": None}}}))
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and all(c["max_abs_diff"] <= 1e-5 and c["label_mismatches"] == 0
                                    for c in report["checks"])
    assert set(json.loads((out / "manifest.json").read_text())["members"]) == {"xgb", "lgbm", "cb"}


def _categorical(path: Path) -> None:
    import pandas as pd

    x, y = _data(2)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["f2"] = (x[:, 2] > 0).astype(int).astype(str)
    catboost.CatBoostClassifier(iterations=5, depth=2, thread_count=1, verbose=False, allow_writing_files=False,
                                cat_features=["f2"]).fit(frame, y).save_model(str(path))


def _one_vs_all(path: Path) -> None:
    _fit(3, loss_function="MultiClassOneVsAll").save_model(str(path))


def _regressor_pickle(path: Path) -> None:
    x, y = _data(2)
    model = catboost.CatBoostRegressor(iterations=5, depth=2, thread_count=1, verbose=False, allow_writing_files=False)
    path.write_bytes(pickle.dumps(model.fit(x, y)))


def _truncated(path: Path) -> None:
    _fit(2).save_model(str(path))
    path.write_bytes(path.read_bytes()[:200])


def _hostile_pickle(path: Path) -> None:
    class Boom:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))
    path.write_bytes(pickle.dumps(Boom()))


class _State:
    """Pickles as a CatBoostClassifier rebuilt from `state` (the one global the allowlist admits)."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __reduce__(self):
        return (catboost.CatBoostClassifier, (), self.state)


def _junk_model_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(_State({"__model": b"CBM1" + b"\x07" * 300})))


def _unfitted_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(catboost.CatBoostClassifier(iterations=3)))


def _string_labels(path: Path) -> None:
    x, y = _data(2)
    catboost.CatBoostClassifier(iterations=5, depth=2, thread_count=1, verbose=False, allow_writing_files=False).fit(
        x, np.array(["down", "up"])[y]).save_model(str(path))


@pytest.mark.parametrize(("name", "make", "classes", "expect"), [
    ("junk.pkl", _junk_model_pickle, 2, ["ModelFileError", "junk.pkl"]),
    ("unfitted.pkl", _unfitted_pickle, 2, ["ModelFileError", "saved before it was fitted"]),
    ("labels.cbm", _string_labels, 2, ["UnsupportedModelError", "Retrain with encoded labels"]),
    ("cat.cbm", _categorical, 2, ["UnsupportedModelError", "categorical features", "columns [2]"]),
    ("ova.cbm", _one_vs_all, 3, ["UnsupportedModelError", "loss_function 'MultiClassOneVsAll'"]),
    ("reg.pkl", _regressor_pickle, 2, ["UnsafeFileError", "catboost.core.CatBoostRegressor"]),
    ("cut.cbm", _truncated, 2, ["ModelFileError", "Re-save the model with save_model"]),  # libcatboost: SIGSEGV
    ("evil.pkl", _hostile_pickle, 2, ["UnsafeFileError", "system"]),
])
def test_what_catboost_cannot_export_is_refused_by_name(tmp_path, name, make, classes, expect):
    file = tmp_path / name
    make(file)
    folder = _folder(tmp_path, {"cb": file}, classes)
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and str(folder / name) in result.output
    assert all(word in result.output for word in expect), result.output
    assert not out.exists()


def test_discovery_by_stamp_leaves_catboost_to_ensemble_json_or_only(demo_models, demo_spec, tmp_path, trained):
    """catboost_<stamp>.cbm is not one of the service's kinds: plain discovery keeps the four and their
    weights; `--only catboost` takes the newest stamped CatBoost file."""
    from convert.discover import discover

    stamp = demo_spec.stamp

    folder = tmp_path / "models"
    shutil.copytree(demo_models, folder)
    (folder / "ensemble.json").unlink(missing_ok=True)
    shutil.copy(trained / "cb3.cbm", folder / f"catboost_{stamp}.cbm")
    plan = discover(folder)
    assert [m.kind for m in plan.members] == ["xgboost", "lightgbm", "nhits", "patchtst"]
    assert [round(m.weight, 6) for m in plan.members] == [0.25, 0.25, 0.3, 0.2]
    only = discover(folder, only=["catboost"])
    assert [(m.kind, m.file.name, m.weight) for m in only.members] == [("catboost", f"catboost_{stamp}.cbm",
                                                                         1.0)]


def test_an_error_catboost_raises_is_a_framework_error_naming_catboost(tmp_path):
    from convert.errors import FrameworkError, member_step

    with pytest.raises(FrameworkError, match=r"member cb \(m.cbm\): catboost raised while predicting"):
        with member_step("cb", "m.cbm", "predicting"):
            catboost.CatBoostClassifier().predict_proba(np.zeros((1, 3), np.float32))  # not fitted
