"""Fail closed under hostile files, models ONNX cannot express, hostile inputs and killed builds.
Each case names what it tried; each proves nothing ran, nothing was converted wrongly, nothing was returned."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import runtime
from convert.demo import DemoSpec, market_data
from convert.errors import UnsafeFileError, UnsupportedModelError
from convert.loaders import load_pickle
from convert.members import MemberSource, get_kind

MARKER = "ensemble_onnx_payload_ran"


def _payloads(marker: Path) -> dict[str, object]:
    cmd = f"touch {marker}"

    class OsSystem:
        def __reduce__(self):
            return (os.system, (cmd,))

    class Subprocess:
        def __reduce__(self):
            return (subprocess.check_call, (["touch", str(marker)],))

    class Eval:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    class ReduceEx:
        def __reduce_ex__(self, protocol):
            return (os.system, (cmd,))

    from sklearn.preprocessing import StandardScaler
    nested = StandardScaler().fit(np.random.default_rng(0).standard_normal((10, 3)))
    nested.mean_ = OsSystem()  # a payload hidden inside an allowed object

    return {"os.system": OsSystem(), "subprocess": Subprocess(), "builtins.eval": Eval(), "builtins.exec": Exec(),
            "__reduce_ex__": ReduceEx(), "nested-in-allowed-object": nested}


def _joblib(compress: int):
    def write(payload: object, path: Path) -> None:
        import joblib

        joblib.dump(payload, path, compress=compress)
    return write


@pytest.mark.parametrize("case", ["os.system", "subprocess", "builtins.eval", "builtins.exec", "__reduce_ex__",
                                  "nested-in-allowed-object"])
@pytest.mark.parametrize(("container", "file", "write"), [
    ("pickle", "model.pkl", lambda payload, path: path.write_bytes(pickle.dumps(payload))),
    ("joblib", "model.joblib", _joblib(0)),
    ("joblib-compressed", "model.joblib", _joblib(3)),
], ids=["pickle", "joblib", "joblib-compressed"])
def test_hostile_pickle_is_refused_before_anything_runs(tmp_path, case, container, file, write):
    marker = tmp_path / MARKER
    path = tmp_path / file
    write(_payloads(marker)[case], path)
    for role in ("scaler", "xgboost", "lightgbm", "stacker"):
        with pytest.raises(UnsafeFileError, match="refused to unpickle global"):
            load_pickle(path, role)
    assert not marker.exists(), f"{case} in a {container} ran"


def test_allowed_module_but_not_allowed_global_is_refused(tmp_path):
    # numpy.ndarray is allowed; numpy.testing's runstring is not, though it lives in an allowed package.
    path = tmp_path / "x.pkl"
    path.write_bytes(b"cnumpy.testing._private.utils\nrunstring\n(S'1'\ntR.")
    with pytest.raises(UnsafeFileError, match="runstring"):
        load_pickle(path, "scaler")


# --- tree models ONNX cannot express are refused, not converted wrongly ------------------------------------

def _lightgbm_file(tmp_path: Path, categorical: bool = False, **params) -> Path:
    import lightgbm

    x, y = market_data(DemoSpec(n_rows=800))
    x = x.copy()
    if categorical:
        x[:, 0] = 2 * y + np.random.default_rng(0).integers(0, 2, len(x))  # informative categories
    if params.get("zero_as_missing"):
        x[::3, 1] = 0.0
    data = lightgbm.Dataset(x, y, categorical_feature=[0] if categorical else "auto", params={"verbose": -1})
    booster = lightgbm.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 7,
                              "min_data_in_leaf": 5, "cat_smooth": 1, "min_data_per_group": 5, **params},
                             data, num_boost_round=5)
    path = tmp_path / "lightgbm_v20260101_000000_v1.txt"
    booster.save_model(str(path))
    return path


@pytest.mark.parametrize("params, match", [
    ({"categorical": True}, "categorical split"),
    ({"linear_tree": True}, "linear trees"),
    ({"objective": "multiclassova"}, "multiclassova"),
], ids=["categorical-split", "linear-tree", "one-vs-all-objective"])
def test_inexpressible_lightgbm_is_refused(tmp_path, params, match):
    path = _lightgbm_file(tmp_path, **params)
    with pytest.raises(UnsupportedModelError, match=match):
        get_kind("lightgbm").load(MemberSource("l", "lightgbm", path))


def test_lightgbm_zero_as_missing_converts_only_when_zero_goes_the_threshold_way(tmp_path):
    from convert.members.lightgbm import check_expressible

    path = _lightgbm_file(tmp_path, zero_as_missing=True)
    import lightgbm
    dump = lightgbm.Booster(model_file=str(path)).dump_model()
    zero_nodes = [n for t in dump["tree_info"] for n in _splits(t["tree_structure"]) if n["missing_type"] == "Zero"]
    assert zero_nodes, "training with zero_as_missing should produce zero-as-missing splits"
    node = zero_nodes[0]
    node["default_left"] = not (0.0 <= node["threshold"])  # make 0.0 go against the threshold
    with pytest.raises(UnsupportedModelError, match="zero-as-missing"):
        check_expressible(dump, path)


def _splits(node):
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


@pytest.mark.parametrize("objective", ["multi:softmax", "binary:logistic", "reg:squarederror"])
def test_xgboost_objectives(tmp_path, objective):
    import xgboost

    x, y = market_data(DemoSpec(n_rows=600))
    kwargs = {"objective": objective, "n_estimators": 5, "max_depth": 3, "n_jobs": 1}
    model = (xgboost.XGBRegressor(**kwargs).fit(x, y) if objective.startswith("reg")
             else xgboost.XGBClassifier(**kwargs).fit(x, y if objective.startswith("multi") else (y == 2)))
    path = tmp_path / "xgboost_v20260101_000000_v1.json"
    model.save_model(path)
    member = MemberSource("x", "xgboost", path)
    if objective != "reg:squarederror":  # binary members give two columns (issue #12)
        assert get_kind("xgboost").load(member).n_classes == (3 if objective == "multi:softmax" else 2)
    else:
        with pytest.raises(UnsupportedModelError, match="regressor" if objective.startswith("reg") else objective):
            get_kind("xgboost").load(member)


# --- hostile inputs at run time ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)  # the range real features live in
anything = st.one_of(st.floats(width=64), st.integers(-2**70, 2**70), st.text(max_size=3), st.booleans(),
                     st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(hnp.floating_dtypes() | hnp.integer_dtypes(), st.tuples(st.integers(0, 9), st.integers(0, 20))))
def test_any_numeric_array_gets_a_prediction_or_input_error(ens, x):
    try:
        probs = ens.predict_proba(x)
    except runtime.InputError as exc:
        ok_shape = x.ndim == 2 and x.shape[1] == len(ens.feature_names) and len(x) > 0
        # refused for its shape, a non-finite value, or magnitudes that overflow a member (named as such)
        assert not ok_shape or not np.all(np.isfinite(x.astype(np.float64))) or "non-finite probabilities" in str(exc)
        return
    assert probs.shape == (len(x), 3) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(anything, min_size=18, max_size=18), drop=st.sets(st.integers(0, 17), max_size=2),
       extra=st.sets(st.sampled_from(["rsi_41", "RSI_14", "macd ", "symbol"]), max_size=2))
def test_any_named_row_gets_a_prediction_or_input_error(ens, values, drop, extra):
    row = {n: v for i, (n, v) in enumerate(zip(ens.feature_names, values, strict=True)) if i not in drop}
    row.update({e: 1.0 for e in extra})
    try:
        (p,) = ens.predict(row)
    except runtime.InputError:
        return
    # It scored: then the row was complete, numeric and finite, and the answer is the array path's answer.
    assert not drop and not (extra - {"symbol"})
    x = np.array([[float(row[n]) for n in ens.feature_names]])
    assert p.probabilities == dict(zip(ens.classes, map(float, ens.predict_proba(x)[0]), strict=True))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float64, (3, 18), elements=finite), perm=st.permutations(list(range(18))))
def test_column_order_of_named_rows_never_matters(ens, x, perm):
    names = [ens.feature_names[i] for i in perm]
    rows = [{n: float(r[ens.feature_names.index(n)]) for n in names} for r in x]
    got = np.array([list(p.probabilities.values()) for p in ens.predict(rows)])
    np.testing.assert_array_equal(got, ens.predict_proba(x))


# --- a build killed at any moment leaves the previous artifacts intact --------------------------------------

@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0, 5.5])
def test_killed_build_leaves_previous_artifacts_loadable(demo_models, demo_artifacts, tmp_path, delay):
    import shutil

    out = Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))
    before = (out / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "convert.cli", "convert", str(demo_models), "-o", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runtime.load(out)  # intact and verified, whether the kill landed before or after the swap
    assert json.loads((out / "manifest.json").read_bytes()) == json.loads(before)
