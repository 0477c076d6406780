"""Fail closed under hostile files, models ONNX cannot express, hostile inputs and killed builds.
Each case names what it tried; each proves nothing ran, nothing was converted wrongly, nothing was returned."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
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


@pytest.mark.parametrize("case", ["os.system", "subprocess", "builtins.eval", "builtins.exec", "__reduce_ex__",
                                  "nested-in-allowed-object"])
@pytest.mark.parametrize("container", ["pickle", "joblib", "joblib-compressed"])
def test_hostile_pickle_is_refused_before_anything_runs(tmp_path, case, container):
    import joblib

    marker = tmp_path / MARKER
    payload = _payloads(marker)[case]
    path = tmp_path / ("model.pkl" if container == "pickle" else "model.joblib")
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        joblib.dump(payload, path, compress=3 if container == "joblib-compressed" else 0)
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
    if objective == "multi:softmax":
        assert get_kind("xgboost").load(member).n_classes == 3
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
    row = {n: v for i, (n, v) in enumerate(zip(ens.feature_names, values)) if i not in drop}
    row.update({e: 1.0 for e in extra})
    try:
        (p,) = ens.predict(row)
    except runtime.InputError:
        return
    # It scored: then the row was complete, numeric and finite, and the answer is the array path's answer.
    assert not drop and not (extra - {"symbol"})
    x = np.array([[float(row[n]) for n in ens.feature_names]])
    assert p.probabilities == dict(zip(ens.classes, map(float, ens.predict_proba(x)[0])))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float64, (3, 18), elements=finite), perm=st.permutations(list(range(18))))
def test_column_order_of_named_rows_never_matters(ens, x, perm):
    names = [ens.feature_names[i] for i in perm]
    rows = [{n: float(r[ens.feature_names.index(n)]) for n in names} for r in x]
    got = np.array([list(p.probabilities.values()) for p in ens.predict(rows)])
    np.testing.assert_array_equal(got, ens.predict_proba(x))


# --- a build killed at any moment leaves the previous artifacts intact --------------------------------------
#
# The build runs in a child process whose audit hook stops it before every filesystem change it makes beside
# the output folder (a file opened for writing, mkdir, rename, remove, rmtree, and any ctypes call given such
# a path, e.g. renameat2): a SIGKILL can land exactly there, and between two changes nothing else happens.
# The parent looks at the output path at each stop, and kills the child at chosen stops. The previous folder
# is a different build (N-HiTS alone), so "old" and "new" are told apart by their manifest bytes.

REPO = Path(__file__).resolve().parent.parent
PAUSED_CHILD = r"""
import os, runpy, sys

where, events, go = os.path.realpath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
MUTATING = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.move", "os.symlink",
            "os.link", "os.truncate", "os.chmod", "os.utime", "os.chown"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def here(args):
    return any(isinstance(a, (str, bytes, os.PathLike)) and os.fsdecode(a).startswith(where) for a in args)

def hook(event, args):
    if event in MUTATING:
        stop = here(args)
    elif event == "open":
        path, mode, flags = args
        stop = here((path,)) and bool((mode and set(mode) & set("wax+")) or (flags or 0) & WRITE_FLAGS)
    elif event == "ctypes.call_function":
        stop = here(args[1])
    else:
        return
    if stop:
        os.write(events, (event + " " + repr(args)[:300].replace(chr(10), " ") + chr(10)).encode())
        os.read(go, 1)  # the parent looks at the folder (or kills this process) before the change happens

sys.addaudithook(hook)
sys.argv = ["convert.cli"] + sys.argv[4:]
runpy.run_module("convert.cli", run_name="__main__")
"""


@pytest.fixture(scope="module")
def old_and_new(demo_models, demo_artifacts, tmp_path_factory):
    """(a previous build of other content, the manifest bytes the rebuild must end with)."""
    from convert.build import build

    old = tmp_path_factory.mktemp("previous") / "artifacts"
    build(demo_models, old, only=["nhits"])
    return old, (demo_artifacts / "manifest.json").read_bytes()


def _state(out: Path, old_manifest: bytes, new_manifest: bytes) -> str:
    try:
        runtime.load(out)
    except runtime.ArtifactError as exc:
        return f"not loadable: {exc}"
    manifest = (out / "manifest.json").read_bytes()
    return {old_manifest: "old", new_manifest: "new"}.get(manifest, "loadable but neither build")


def _paused_build(models: Path, out: Path, old_manifest: bytes, new_manifest: bytes,
                  kill_at: int | None = None) -> tuple[list[tuple[str, str]], str]:
    """[(filesystem change about to happen, state of `out` just before it)], and the state at the end."""
    events_r, events_w = os.pipe()
    go_r, go_w = os.pipe()
    log = out.parent / "child.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", PAUSED_CHILD, str(out.parent), str(events_w), str(go_r),
                                 "convert", str(models), "-o", str(out), "-q"],
                                pass_fds=(events_w, go_r), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    os.close(events_w)
    os.close(go_r)
    seen = []
    try:
        with os.fdopen(events_r, "r") as events:
            for line in events:
                seen.append((line.strip(), _state(out, old_manifest, new_manifest)))
                if kill_at is not None and len(seen) - 1 == kill_at:
                    proc.send_signal(signal.SIGKILL)
                    break
                os.write(go_w, b"c")
    finally:
        os.close(go_w)
        proc.wait(timeout=600)
    if kill_at is None:
        assert proc.returncode == 0, log.read_text()[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL, f"the build ended before its kill point: {log.read_text()[-3000:]}"
    return seen, _state(out, old_manifest, new_manifest)


@pytest.fixture(scope="module")
def unkilled_rebuild(demo_models, old_and_new, tmp_path_factory):
    old, new_manifest = old_and_new
    out = Path(shutil.copytree(old, tmp_path_factory.mktemp("rebuild") / "artifacts"))
    return _paused_build(demo_models, out, (old / "manifest.json").read_bytes(), new_manifest)


def test_rebuild_holds_a_loadable_build_at_every_filesystem_change(unkilled_rebuild, demo_artifacts):
    seen, final = unkilled_rebuild
    files = json.loads((demo_artifacts / "manifest.json").read_text())["files"]
    assert len(seen) > len(files), f"the hook saw too few changes to have watched the write: {seen}"
    states = [state for _, state in seen] + [final]
    assert set(states) <= {"old", "new"}, [(e, s) for e, s in seen if s not in ("old", "new")] or final
    assert final == "new" and states == sorted(states, key=["old", "new"].index), states  # old, then new only


@pytest.mark.parametrize("where", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_killed_build_leaves_previous_artifacts_loadable(demo_models, old_and_new, unkilled_rebuild, tmp_path, where):
    """SIGKILL at a filesystem change spread over the whole write (0: before the first one, 1: before the
    last): the path holds the previous build or the new one, whole."""
    old, new_manifest = old_and_new
    n_events = len(unkilled_rebuild[0])
    out = Path(shutil.copytree(old, tmp_path / "artifacts"))
    seen, final = _paused_build(demo_models, out, (old / "manifest.json").read_bytes(), new_manifest,
                                kill_at=round(where * (n_events - 1)))
    assert final in ("old", "new"), final
    assert all(state in ("old", "new") for _, state in seen), seen
    if where == 0.0:
        assert final == "old"  # killed before it changed anything
