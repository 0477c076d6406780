"""Issue #23, the tree side: the gate compares with what the framework's own predict computes on the user's
file, called as the service called it. Each case is a tiny model trained the way users train it, alone in a
models folder with its ensemble.json, converted by the real CLI; the build's member probabilities are then
held to the framework's own predict on the saved file, computed here (never by convert's code)."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from click.testing import CliRunner
from scipy.special import expit

import runtime
from convert.cli import main

N_FEATURES, SENTINEL = 8, -999.0
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
SPACED = [f"feature {i}" for i in range(N_FEATURES)]


def _data(seed: int = 0, separable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, N_FEATURES))
    score = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 7]
    if not separable:
        score = score + 0.5 * rng.standard_normal(400)
    return x, (score > 0).astype(int)


def _rows() -> np.ndarray:
    """Rows the frameworks and the build are compared on: fresh draws, plus far-out ones (confident rows)."""
    rng = np.random.default_rng(7)
    return np.vstack([rng.standard_normal((200, N_FEATURES)), 3 * rng.standard_normal((100, N_FEATURES))])


def _with_sentinel(x: np.ndarray, seed: int = 1) -> np.ndarray:
    x = x.copy()
    x[np.random.default_rng(seed).random(x.shape) < 0.2] = SENTINEL
    return x


def _binary(p1: np.ndarray) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.column_stack([1.0 - p1, p1])


def _folder(root: Path, name: str, files: dict[str, Any], members: dict[str, dict[str, Any]],
            decision: dict[str, Any] | None = None, features: list[str] = FEATURES) -> Path:
    folder = root / name / "models"
    folder.mkdir(parents=True)
    for file, write in files.items():
        write(folder / file)
    spec = {"feature_names": features, "classes": ["DOWN", "UP"], "members": members,
            **({"decision": decision} if decision else {})}
    (folder / "ensemble.json").write_text(json.dumps(spec))
    return folder


def _pickle(model: Any) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(pickle.dumps(model))


class Case:
    """A models folder and the framework's own answer on its file, as the service called it."""

    def __init__(self, folder: Path, expected: Callable[[np.ndarray], np.ndarray], rows: np.ndarray | None = None,
                 note: str = "") -> None:
        self.folder, self.expected, self.rows, self.note = folder, expected, rows if rows is not None else _rows(), note


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    """Every model trained once for the module."""
    root = tmp_path_factory.mktemp("treeref")
    out: dict[str, Case] = {}
    x, y = _data()
    warnings.simplefilter("ignore")

    # XGBoost native: xgb.train with early stopping, saved with Booster.save_model: Booster.predict uses every
    # round (issue item 2: the build used best_iteration).
    native = xgb.train({"objective": "binary:logistic", "eta": 0.5, "max_depth": 3, "seed": 0},
                       xgb.DMatrix(x[:300], y[:300]), 200, evals=[(xgb.DMatrix(x[300:], y[300:]), "valid")],
                       early_stopping_rounds=8, verbose_eval=False)
    assert native.best_iteration + 1 < native.num_boosted_rounds(), "the model must hold rounds past its best"
    best = native.best_iteration + 1
    for suffix in ("json", "ubj"):
        file = f"booster.{suffix}"
        folder = _folder(root, f"xgb-native-{suffix}", {file: native.save_model},
                         {"m": {"kind": "xgboost", "file": file, "scaler": None}})
        out[f"xgb-native-{suffix}"] = Case(folder, lambda r, f=folder / file: _binary(
            xgb.Booster(model_file=f).predict(xgb.DMatrix(r.astype(np.float32)))),
            note="Booster.predict uses every round")
    folder = _folder(root, "xgb-native-rounds", {"booster.json": native.save_model},
                     {"m": {"kind": "xgboost", "file": "booster.json", "scaler": None, "rounds": best}})
    out["xgb-native-rounds"] = Case(folder, lambda r, f=folder / "booster.json": _binary(
        xgb.Booster(model_file=f).predict(xgb.DMatrix(r.astype(np.float32)), iteration_range=(0, best))),
        note=f"{best} of {native.num_boosted_rounds()} boosting rounds")

    # XGBoost through the scikit-learn wrapper: its predict_proba stops at best_iteration.
    wrapper = xgb.XGBClassifier(n_estimators=200, learning_rate=0.5, max_depth=3, early_stopping_rounds=8,
                                random_state=0, n_jobs=1)
    wrapper.fit(x[:300], y[:300], eval_set=[(x[300:], y[300:])], verbose=False)
    assert wrapper.best_iteration + 1 < wrapper.get_booster().num_boosted_rounds()
    folder = _folder(root, "xgb-wrapper-json", {"clf.json": wrapper.save_model},
                     {"m": {"kind": "xgboost", "file": "clf.json", "scaler": None}})

    def wrapper_file(r: np.ndarray, f: Path = folder / "clf.json") -> np.ndarray:
        model = xgb.XGBClassifier()
        model.load_model(f)
        return model.predict_proba(r.astype(np.float32))
    out["xgb-wrapper-json"] = Case(folder, wrapper_file, note="best_iteration")

    # XGBoost trained on DMatrix(missing=-999): the file does not say so; ensemble.json does (issue item 3).
    xs = _with_sentinel(x)
    sentinel_model = xgb.train({"objective": "binary:logistic", "eta": 0.5, "max_depth": 3},
                               xgb.DMatrix(xs, y, missing=SENTINEL), 20)
    rows = _with_sentinel(_rows(), seed=2)
    folder = _folder(root, "xgb-missing-json", {"booster.json": sentinel_model.save_model},
                     {"m": {"kind": "xgboost", "file": "booster.json", "scaler": None, "missing": SENTINEL}})
    out["xgb-missing-json"] = Case(folder, lambda r, f=folder / "booster.json": _binary(
        xgb.Booster(model_file=f).predict(xgb.DMatrix(r.astype(np.float32), missing=SENTINEL))), rows,
        note="missing=-999 read as absent")
    # ... and through the wrapper, whose pickle keeps `missing` itself.
    sentinel_wrapper = xgb.XGBClassifier(n_estimators=20, max_depth=3, missing=SENTINEL, n_jobs=1).fit(xs, y)
    folder = _folder(root, "xgb-missing-pkl", {"clf.pkl": _pickle(sentinel_wrapper)},
                     {"m": {"kind": "xgboost", "file": "clf.pkl", "scaler": None}})
    out["xgb-missing-pkl"] = Case(folder, lambda r, f=folder / "clf.pkl": pickle.loads(f.read_bytes()).predict_proba(
        r.astype(np.float32)), rows, note="the XGBClassifier's missing")

    # LightGBM binary with sigmoid=2.0 (issue item 6), as a text file and as a pickle.
    sig = lgb.train({"objective": "binary", "sigmoid": 2.0, "verbose": -1, "num_leaves": 7, "seed": 0},
                    lgb.Dataset(x, y), 15)
    folder = _folder(root, "lgb-sigmoid-txt", {"model.txt": lambda p: sig.save_model(str(p))},
                     {"m": {"kind": "lightgbm", "file": "model.txt", "scaler": None}})
    out["lgb-sigmoid-txt"] = Case(folder, lambda r, f=folder / "model.txt": _binary(
        lgb.Booster(model_file=str(f)).predict(r.astype(np.float32))), note="binary sigmoid 2")
    sig_wrapper = lgb.LGBMClassifier(n_estimators=15, num_leaves=7, sigmoid=2.0, verbose=-1, n_jobs=1).fit(x, y)
    folder = _folder(root, "lgb-sigmoid-pkl", {"clf.pkl": _pickle(sig_wrapper)},
                     {"m": {"kind": "lightgbm", "file": "clf.pkl", "scaler": None}})
    out["lgb-sigmoid-pkl"] = Case(folder, lambda r, f=folder / "clf.pkl": pickle.loads(f.read_bytes()).predict_proba(
        r.astype(np.float32)), note="binary sigmoid 2")

    # LightGBM kept training past its best iteration and saved every iteration: Booster(model_file).predict
    # uses all of them; "rounds" is num_iteration.
    kept = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7, "learning_rate": 0.5, "seed": 0},
                     lgb.Dataset(x[:300], y[:300]), 200, valid_sets=[lgb.Dataset(x[300:], y[300:])],
                     callbacks=[lgb.early_stopping(5, verbose=False)], keep_training_booster=True)
    assert kept.best_iteration < kept.current_iteration()
    for name, entry, expected in (
            ("lgb-all-txt", {}, lambda r, f: lgb.Booster(model_file=str(f)).predict(r.astype(np.float32))),
            ("lgb-rounds-txt", {"rounds": 2}, lambda r, f: lgb.Booster(model_file=str(f)).predict(
                r.astype(np.float32), num_iteration=2))):
        folder = _folder(root, name, {"model.txt": lambda p: kept.save_model(str(p), num_iteration=-1)},
                         {"m": {"kind": "lightgbm", "file": "model.txt", "scaler": None, **entry}})
        out[name] = Case(folder, lambda r, f=folder / "model.txt", e=expected: _binary(e(r, f)),
                         note=f"{entry.get('rounds', kept.current_iteration())} of {kept.current_iteration()} "
                              f"boosting rounds")

    # Feature names with spaces: LightGBM writes them with underscores, XGBoost as given (issue item 7).
    import pandas as pd
    frame = pd.DataFrame(x, columns=SPACED)
    spaced_lgb = lgb.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1, n_jobs=1).fit(frame, y)
    spaced_xgb = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(frame, y)
    assert spaced_lgb.booster_.feature_name()[0] == "feature_0"
    folder = _folder(root, "spaced-names", {"lgb.txt": lambda p: spaced_lgb.booster_.save_model(str(p)),
                                            "xgb.json": spaced_xgb.save_model},
                     {"l": {"kind": "lightgbm", "file": "lgb.txt", "scaler": None},
                      "x": {"kind": "xgboost", "file": "xgb.json", "scaler": None}}, features=SPACED)
    out["spaced-names"] = Case(folder, lambda r: 0.5 * spaced_lgb.predict_proba(r.astype(np.float32))
                               + 0.5 * spaced_xgb.predict_proba(r.astype(np.float32)))
    return out


def convert(folder: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), *extra])


@pytest.mark.parametrize(("case", "members"), [
    ("xgb-native-json", None), ("xgb-native-ubj", None), ("xgb-native-rounds", None), ("xgb-wrapper-json", None),
    ("xgb-missing-json", None), ("xgb-missing-pkl", None), ("lgb-sigmoid-txt", None), ("lgb-sigmoid-pkl", None),
    ("lgb-all-txt", None), ("lgb-rounds-txt", None), ("spaced-names", "ensemble")])
def test_the_build_computes_what_the_frameworks_own_predict_computes_on_the_file(cases, tmp_path, case, members):
    c = cases[case]
    result = convert(c.folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert c.note in result.output  # the plan says which rounds / sentinel / sigmoid, and why
    served = runtime.load(tmp_path / "out")
    got = served.predict_proba(c.rows) if members == "ensemble" else served.member_probabilities(c.rows)["m"]
    expected = c.expected(c.rows)
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_the_old_answers_were_wrong_on_these_files(cases):
    """The cases above can fail: best_iteration, a sentinel read as a value, sigmoid 1 are far off."""
    r = cases["xgb-native-json"].rows.astype(np.float32)
    booster = xgb.Booster(model_file=cases["xgb-native-json"].folder / "booster.json")
    best = int(booster.attr("best_iteration")) + 1
    assert np.abs(booster.predict(xgb.DMatrix(r)) - booster.predict(xgb.DMatrix(r), iteration_range=(0, best))
                  ).max() > 0.01
    rows = cases["xgb-missing-json"].rows.astype(np.float32)
    sentinel = xgb.Booster(model_file=cases["xgb-missing-json"].folder / "booster.json")
    assert np.abs(sentinel.predict(xgb.DMatrix(rows)) - sentinel.predict(xgb.DMatrix(rows, missing=SENTINEL))
                  ).max() > 0.1
    sig = lgb.Booster(model_file=str(cases["lgb-sigmoid-txt"].folder / "model.txt"))
    assert np.abs(sig.predict(r) - expit(sig.predict(r, raw_score=True))).max() > 0.05


def test_the_manifest_records_the_rounds_and_the_options_and_verify_rebuilds_with_them(cases, tmp_path):
    out = tmp_path / "out"
    assert convert(cases["xgb-native-rounds"].folder, out, "-q").exit_code == 0
    member = json.loads((out / "manifest.json").read_text())["members"]["m"]["hyperparameters"]
    booster = xgb.Booster(model_file=cases["xgb-native-rounds"].folder / "booster.json")
    assert member["rounds"] == int(booster.attr("best_iteration")) + 1 < member["boosted_rounds"]
    assert member["options"] == {"rounds": member["rounds"]} and member["loaded_as"] == "Booster"
    verified = CliRunner().invoke(main, ["verify", str(out), "--models", str(cases["xgb-native-rounds"].folder)])
    assert verified.exit_code == 0, verified.output
    changed = _edit(cases["xgb-native-rounds"], tmp_path, lambda m: m["m"].update(rounds=member["rounds"] + 1))
    verified = CliRunner().invoke(main, ["verify", str(out), "--models", str(changed)])
    assert verified.exit_code == 1 and "members.m.hyperparameters.options" in verified.output, verified.output
    out2 = tmp_path / "out2"
    assert convert(cases["xgb-missing-json"].folder, out2, "-q").exit_code == 0
    member = json.loads((out2 / "manifest.json").read_text())["members"]["m"]["hyperparameters"]
    assert member["missing"] == SENTINEL
    verified = CliRunner().invoke(main, ["verify", str(out2), "--models", str(cases["xgb-missing-json"].folder)])
    assert verified.exit_code == 0, verified.output
    plan = CliRunner().invoke(main, ["inspect", str(cases["xgb-missing-json"].folder)])
    assert "missing -999" in plan.output


def test_the_gate_holds_rows_that_carry_the_sentinel(cases, tmp_path):
    """The sentinel is on every feature's threshold list, so the gate's rows hold it (and one ulp either side)."""
    from convert.members import MemberSource, get_kind

    folder = cases["xgb-missing-json"].folder
    loaded = get_kind("xgboost").load(MemberSource("m", "xgboost", folder / "booster.json",
                                                   options={"missing": SENTINEL}))
    assert {(f, SENTINEL) for f in range(N_FEATURES)} <= set(loaded.thresholds)
    assert convert(folder, tmp_path / "out", "-q").exit_code == 0
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["passed"] and report["rows"]["threshold"] >= 3 * N_FEATURES


# ------------------------------------------------------------------------------ temperature from margins

def _confident(root: Path, kind: str) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
    """A member so confident that float32 1 - p is 0 on many rows, and its own margin as a function."""
    from sklearn.linear_model import LogisticRegression

    x, y = _data(separable=True)
    if kind == "xgboost":
        model = xgb.XGBClassifier(n_estimators=60, learning_rate=1.0, max_depth=3, reg_lambda=0.0, min_child_weight=0,
                                  n_jobs=1).fit(x, y)
        file, write = "m.json", model.save_model

        def margin(r: np.ndarray) -> np.ndarray:
            return model.predict(r.astype(np.float32), output_margin=True).astype(np.float64)
    elif kind == "lightgbm":
        model = lgb.LGBMClassifier(n_estimators=80, learning_rate=1.0, num_leaves=7, min_child_samples=3,
                                   verbose=-1, n_jobs=1).fit(x, y)
        file, write = "m.pkl", _pickle(model)

        def margin(r: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(r.astype(np.float32), raw_score=True), dtype=np.float64)
    elif kind == "histgradientboosting":
        from sklearn.ensemble import HistGradientBoostingClassifier
        model = HistGradientBoostingClassifier(max_iter=100, learning_rate=1.0, l2_regularization=0.0).fit(x, y)
        file, write = "m.pkl", _pickle(model)

        def margin(r: np.ndarray) -> np.ndarray:
            return model.decision_function(r.astype(np.float32)).astype(np.float64)
    else:
        model = LogisticRegression(C=1e4, max_iter=5000).fit(x, y)
        file, write = "m.pkl", _pickle(model)

        def margin(r: np.ndarray) -> np.ndarray:
            return model.decision_function(r.astype(np.float32)).astype(np.float64)
    folder = _folder(root / kind, "t3", {file: write},
                     {"m": {"kind": "sklearn" if kind in ("logistic", "histgradientboosting") else kind,
                            "file": file, "scaler": None}},
                     decision={"temperature": {"m": 3}})
    return folder, margin


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "logistic", "histgradientboosting"])
def test_temperature_on_a_confident_binary_member_is_computed_from_its_margin(tmp_path, kind):
    """With t = 3 the tempered probability is sigmoid(m / 3), m the framework's own margin (output_margin,
    raw_score, decision_function), in float64; float32 1 - p was 0 on confident rows (gate off by 0.003)."""
    folder, margin = _confident(tmp_path, kind)
    rows = _rows()
    m = margin(rows)
    assert (np.float32(1) - np.float32(expit(np.abs(m))) == 0).sum() > 10, "the member must be confident"
    result = convert(folder, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    got = runtime.load(tmp_path / "out").predict_proba(rows)
    expected = np.column_stack([expit(-m / 3), expit(m / 3)])
    assert np.abs(got - expected).max() <= 1e-5


# ------------------------------------------------------------------------------------------ refusals

def _edit(case: Case, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    import shutil
    folder = shutil.copytree(case.folder, tmp_path / "models")
    spec = json.loads((folder / "ensemble.json").read_text())
    change(spec["members"])
    (folder / "ensemble.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize(("case", "change", "error", "words"), [
    ("xgb-missing-json", lambda m: m["m"].update(scaler="scaler.json"), "MetadataError",
     ["members.m.missing", "scaler.json", "\"scaler\": null"]),
    ("lgb-all-txt", lambda m: m["m"].update(missing=-999), "MetadataError", ["members.m.missing", "xgboost"]),
    ("lgb-all-txt", lambda m: m["m"].update(rounds=10_000), "UnsupportedModelError", ["\"rounds\": 10000"]),
    ("xgb-native-json", lambda m: m["m"].update(rounds=10_000), "UnsupportedModelError", ["\"rounds\": 10000"]),
    ("xgb-native-json", lambda m: m["m"].update(rounds=0), "MetadataError", ["members.m.rounds"]),
    ("xgb-native-json", lambda m: m["m"].update(rounds=True), "MetadataError", ["members.m.rounds"]),
    ("xgb-native-json", lambda m: m["m"].update(rounds=2.5), "MetadataError", ["members.m.rounds"]),
    ("xgb-native-json", lambda m: m["m"].update(missing="-999"), "MetadataError", ["members.m.missing"]),
    ("xgb-native-json", lambda m: m["m"].update(missing=1e39), "MetadataError", ["members.m.missing"]),
    ("xgb-missing-pkl", lambda m: m["m"].update(missing=0), "UnsupportedModelError", ["missing=-999"]),
])
def test_options_the_build_cannot_honour_are_refused_by_name(cases, tmp_path, case, change, error, words):
    folder = _edit(cases[case], tmp_path, change)
    (folder / "scaler.json").write_text(json.dumps({"mean": [0.0] * N_FEATURES, "scale": [1.0] * N_FEATURES,
                                                    "feature_names": FEATURES}))
    result = convert(folder, tmp_path / "out", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{error}: " in result.output and all(w in result.output for w in words), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("objective", "expect"), [
    ("binary sigmoid:2", ("binary", 2.0)), ("binary sigmoid:1", ("binary", 1.0)),
    ("multiclass num_class:3", ("multiclass", 1.0)),
    ("binary sigmoid:2 scale:3", "'scale:3'"), ("binary sigmoid:-1", "'sigmoid:-1'"),
    ("binary sigmoid:nan", "'sigmoid:nan'"), ("multiclass num_class:3 sigmoid:2", "'sigmoid:2'")])
def test_every_objective_parameter_is_exported_or_refused_by_name(objective, expect):
    """What LightGBM 4 writes after the objective's name is `sigmoid` (binary) or `num_class`; anything else a
    model file could carry is refused naming it, not dropped."""
    from convert.errors import UnsupportedModelError
    from convert.members.lightgbm import objective_of

    if isinstance(expect, tuple):
        assert objective_of({"objective": objective}, "model.txt") == expect
    else:
        with pytest.raises(UnsupportedModelError, match=expect):
            objective_of({"objective": objective}, "model.txt")


def test_categorical_histgradientboosting_is_refused_naming_categorical_features(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = _data()
    x[:, 2] = np.random.default_rng(0).integers(0, 4, len(x))
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features=[2]).fit(x, y)
    folder = _folder(tmp_path, "hgb", {"hgb.pkl": _pickle(model)},
                     {"m": {"kind": "sklearn", "file": "hgb.pkl", "scaler": None}})
    result = convert(folder, tmp_path / "out", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "UnsupportedModelError" in result.output and "categorical_features" in result.output
    assert "ColumnTransformer'" not in result.output  # not the allowlist's word for it


def test_lightgbm_names_are_compared_as_lightgbm_writes_them(cases, tmp_path):
    """An underscore LightGBM wrote for a space matches; a name that differs otherwise is still refused."""
    folder = _edit(cases["spaced-names"], tmp_path, lambda m: m.pop("x"))
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["feature_names"] = [*SPACED[:-1], "other name"]
    (folder / "ensemble.json").write_text(json.dumps(spec))
    result = convert(folder, tmp_path / "out", "-q")
    assert result.exit_code == 1 and "position 7" in result.output and "underscores" in result.output


@pytest.mark.parametrize(("kind", "entry", "scaler", "words"), [
    ("sklearn", {"rounds": 3}, None, "only a xgboost or lightgbm member takes 'rounds'"),
    ("nhits", {"missing": -1}, None, "only a xgboost member takes 'missing'"),
    ("xgboost", {"rounds": 10 ** 8}, None, "members.m.rounds"),
    ("xgboost", {"missing": 10 ** 400}, None, "members.m.missing"),
    ("xgboost", {"missing": -1}, Path("scaler.pkl"), "scaler.pkl"),
])
def test_member_options_are_checked_before_any_model_is_read(kind, entry, scaler, words):
    from convert.errors import MetadataError
    from convert.members.trees import parse_options

    with pytest.raises(MetadataError, match=re.escape(words)):
        parse_options(kind, entry, scaler, "ensemble.json: members.m")


@pytest.mark.parametrize(("kind", "entry", "expect"), [
    ("xgboost", {"rounds": 3, "missing": -999}, {"rounds": 3, "missing": -999.0}),
    ("lightgbm", {"rounds": 1}, {"rounds": 1}), ("xgboost", {"missing": 0}, {"missing": 0.0})])
def test_member_options_that_are_honoured(kind, entry, expect):
    from convert.members.trees import parse_options

    assert parse_options(kind, entry, None, "ensemble.json: members.m") == expect


@pytest.mark.parametrize(("missing", "error", "words"), [
    (10 ** 400, "ModelFileError", "missing is 1000"), ("x", "ModelFileError", "missing is x"),
    (float("inf"), "UnsupportedModelError", "missing=inf"), (1e39, "UnsupportedModelError", "missing=1e+39")])
def test_a_pickled_missing_no_float32_sentinel_can_hold_is_refused_by_name(tmp_path, missing, error, words):
    x, y = _data()
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x, y)
    model.missing = missing  # as a pickle edited by hand, or saved by another version, would carry it
    folder = _folder(tmp_path, "m", {"m.pkl": _pickle(model)}, {"m": {"kind": "xgboost", "file": "m.pkl",
                                                                       "scaler": None}})
    result = convert(folder, tmp_path / "out", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output and "internal error" not in result.output
    assert f"{error}: " in result.output and words in result.output, result.output


@pytest.mark.parametrize(("best", "refused"), [(10 ** 9, False), (-5, False), ("abc", True), (2.5, True)])
def test_a_lightgbm_pickle_predicts_with_its_own_best_iteration_or_is_refused(tmp_path, best, refused):
    """A best_iteration past the model or below 1 means every iteration to LightGBM's predict, and so to the
    build; one that is no count at all is refused by name."""
    x, y = _data()
    model = lgb.LGBMClassifier(n_estimators=6, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y)
    model.booster_.best_iteration = best
    folder = _folder(tmp_path, "m", {"m.pkl": _pickle(model)}, {"m": {"kind": "lightgbm", "file": "m.pkl",
                                                                       "scaler": None}})
    result = convert(folder, tmp_path / "out", "-q")
    assert "Traceback" not in result.output and "internal error" not in result.output
    if refused:
        assert result.exit_code == 1 and "ModelFileError: " in result.output and "best_iteration" in result.output
        return
    assert result.exit_code == 0, result.output
    rows = _rows()
    expected = pickle.loads((folder / "m.pkl").read_bytes()).predict_proba(rows.astype(np.float32))
    got = runtime.load(tmp_path / "out").member_probabilities(rows)["m"]
    assert np.abs(got - expected).max() <= 1e-5
