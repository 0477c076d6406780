"""Fail closed under hostile files, models ONNX cannot express, hostile inputs and killed builds.
Each case names what it tried; each proves nothing ran, nothing was converted wrongly, nothing was returned."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from domain_rows import bounds
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
    import lightgbm
    import onnxruntime as ort

    from convert.members.export import CONTRACT
    from convert.members.lightgbm import check_expressible

    path = _lightgbm_file(tmp_path, zero_as_missing=True)
    booster = lightgbm.Booster(model_file=str(path))
    dump = booster.dump_model()
    zero_nodes = [n for t in dump["tree_info"] for n in _splits(t["tree_structure"]) if n["missing_type"] == "Zero"]
    assert zero_nodes, "training with zero_as_missing should produce zero-as-missing splits"
    # Training leaves some splits sending zero against their threshold; set each split's default direction
    # (bit 1 of decision_type in the model file) to where its threshold sends 0.0. That model LightGBM still
    # reads and scores with zero-as-missing; it converts, and computes LightGBM's answer, zeros included, on
    # every feature a zero-as-missing split reads.
    expressible = tmp_path / "expressible" / path.name
    expressible.parent.mkdir()
    expressible.write_text(_zero_goes_the_threshold_way(path.read_text()))
    booster = lightgbm.Booster(model_file=str(expressible))
    assert any(n["missing_type"] == "Zero" for t in booster.dump_model()["tree_info"]
               for n in _splits(t["tree_structure"]))
    check_expressible(booster.dump_model(), expressible)
    member = get_kind("lightgbm").load(MemberSource("l", "lightgbm", expressible))
    x, _ = market_data(DemoSpec(n_rows=300))
    x = x.astype(np.float64)  # a LightGBM member reads the float64 row, as LightGBM does
    for i, feature in enumerate(sorted({n["split_feature"] for n in zero_nodes})):
        x[i::4, feature] = 0.0
    session = ort.InferenceSession(member.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {CONTRACT.input_name: x})
    np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=1e-5)
    assert (got.argmax(1) == booster.predict(x).argmax(1)).all()
    node = zero_nodes[0]
    node["default_left"] = not (0.0 <= node["threshold"])  # make 0.0 go against the threshold
    with pytest.raises(UnsupportedModelError, match="zero-as-missing"):
        check_expressible(dump, path)


def _zero_goes_the_threshold_way(model_text: str) -> str:
    lines, thresholds = model_text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            thresholds = [float(t) for t in line.split("=", 1)[1].split()]
        elif line.startswith("decision_type="):
            types = [int(d) for d in line.split("=", 1)[1].split()]
            types = [(d | 2 if 0.0 <= t else d & ~2) if (d >> 2) & 3 == 1 else d
                     for d, t in zip(types, thresholds, strict=True)]
            lines[i] = "decision_type=" + " ".join(map(str, types))
    return "\n".join(lines) + "\n"


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


@pytest.fixture(scope="module")
def frameworks(demo_models):
    """The same models through torch, xgboost, lightgbm and sklearn: what a scored row must agree with."""
    from convert.discover import make_plan
    from convert.reference import Reference

    return Reference.from_plan(make_plan(demo_models))


finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)  # the range real features live in
anything = st.one_of(st.floats(width=64), st.integers(-2**70, 2**70), st.text(max_size=3), st.booleans(),
                     st.none())
POISON = [None, "1.0", True, np.bool_(False), 1 + 2j, b"1", [1.0]]


def _is_number(value) -> bool:
    """What the README calls a number: a real number that is not a bool."""
    import numbers
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


HUGE = 1e9  # beyond this the float32 pipelines may overflow, each at its own point (see below)


def _outside(ens, raw: np.ndarray) -> list[str]:
    """The features of `raw` outside the build's recorded input domain: refused by name (docs/numerics.md)."""
    domain = ens.manifest.get("domain")
    if domain is None:
        return []
    outside = (raw < np.asarray(domain["lo"])) | (raw > np.asarray(domain["hi"]))
    return [f"'{ens.feature_names[c]}'" for c in np.argwhere(outside)[:, 1]]


def _expected(frameworks, raw: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """(why these finite rows must be refused, or None; the frameworks' probabilities)."""
    if np.abs(raw).max() > HUGE:
        # Where float32 overflows, the frameworks and the graph part ways: torch's PatchTST overflows in
        # attention scores the one-token graph never computes, and the graph's folded layers overflow at other
        # magnitudes than torch's. Here the promise is only: a finite answer, or a refusal naming the member.
        return "huge", None
    members = frameworks.raw_member_probabilities(raw)
    overflowed = [name for name, p in members.items() if not np.isfinite(p).all()]
    if overflowed:
        return "member " + overflowed[0], None
    return None, frameworks.combine(frameworks.calibrated(members))


def _check_outcome(call, reason: str | None, want: np.ndarray | None, names: list[str]) -> str:
    """Scored exactly when nothing was wrong, then within 1e-5 of the frameworks; refused only when
    something was, with a message naming one of the culprits."""
    try:
        got = call()
    except runtime.InputError as exc:
        if reason == "huge":
            assert "produced non-finite probabilities" in str(exc), exc
            return "refused"
        assert reason is not None, f"refused a row the frameworks score: {exc}"
        assert any(n in str(exc) for n in names), f"refused for {reason}, but the message names none of {names}: {exc}"
        return "refused"
    if reason == "huge":
        assert np.isfinite(got).all() and np.allclose(got.sum(axis=1), 1.0, atol=1e-5), got
        return "scored"
    assert reason is None, f"scored, but it should have been refused ({reason})"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    return "scored"


def _fill(dtype: np.dtype):
    """Most cells: ordinary values of the dtype; `elements` adds the extremes (NaN, inf, the limits)."""
    if dtype.kind in "iu":
        return hnp.from_dtype(dtype, min_value=0, max_value=100)
    if dtype.kind == "f":
        return hnp.from_dtype(dtype, min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)
    if dtype.kind == "c":
        return hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False, max_magnitude=100)
    return hnp.from_dtype(dtype)


# Weighted towards what can be scored (repeats in one_of), so both outcomes are exercised often.
NUMERIC_DTYPE = (hnp.integer_dtypes(endianness="?") | hnp.unsigned_integer_dtypes(endianness="?")
                 | hnp.floating_dtypes(endianness="?"))
ANY_DTYPE = st.one_of(NUMERIC_DTYPE, NUMERIC_DTYPE, hnp.boolean_dtypes(), hnp.complex_number_dtypes(endianness="?"))
RIGHT_SHAPE = st.tuples(st.integers(1, 6), st.just(18))
ANY_SHAPE = st.one_of(RIGHT_SHAPE, RIGHT_SHAPE, st.tuples(st.integers(0, 3), st.sampled_from([0, 17, 19])),
                      hnp.array_shapes(min_dims=1, max_dims=3, max_side=20))
LAYOUTS = ["C", "Fortran", "non-contiguous", "object", "object", "object-with-a-non-number"]


@st.composite
def any_array(draw):
    dtype = draw(ANY_DTYPE)
    x = draw(hnp.arrays(dtype, draw(ANY_SHAPE), elements=hnp.from_dtype(dtype), fill=_fill(dtype)))
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "Fortran":
        x = np.asfortranarray(x)
    elif layout == "non-contiguous":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout.startswith("object"):
        x = x.astype(object)
        if layout == "object-with-a-non-number" and x.size:
            x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(POISON))
    return x


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the frameworks overflowing on the extremes drawn
def test_any_array_gets_the_frameworks_answer_or_a_deserved_input_error(ens, frameworks):
    """Every dtype (signed, unsigned, float16..64, bool, complex, object), byte order and memory layout, any
    shape: scored within 1e-5 of the frameworks exactly when it is an (n, 18) array of finite real numbers
    the members can compute, refused otherwise."""
    outcomes = []

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,  # the same rows every run
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # a loaded CI host
    @given(x=any_array())
    def check(x):
        names = list(ens.feature_names)
        culprits = []  # every fault the array has; a refusal must name one of them
        if x.ndim != 2 or x.shape[1] != len(names):
            culprits.append("shape")
        if x.size == 0:
            culprits.append("no rows")
        if x.dtype.kind not in "iufO" or not all(_is_number(v) for v in x.ravel()):
            culprits += ["number", f"dtype {x.dtype}"]
            if x.dtype.kind == "O" and x.ndim == 2 and x.shape[1] == len(names):
                # cells are checked in row order: a number that is not finite may be the first fault met
                culprits += [f"'{names[c]}'" for (_, c), v in np.ndenumerate(x)
                             if _is_number(v) and not math.isfinite(float(v))]
        want = None
        if culprits:
            reason = " and ".join(culprits)
        else:
            raw = np.array(x.tolist(), dtype=np.float64)
            if not np.isfinite(raw).all():
                reason, culprits = "not finite", [f"'{names[c]}'" for c in np.argwhere(~np.isfinite(raw))[:, 1]]
            elif _outside(ens, raw):
                reason, culprits = "outside the domain", _outside(ens, raw)
            else:
                reason, want = _expected(frameworks, raw)
                culprits = ["member"]
        outcomes.append((_check_outcome(lambda: ens.predict_proba(x), reason, want, culprits), x.dtype.kind))

    check()
    scored = [kind for outcome, kind in outcomes if outcome == "scored"]
    assert len(scored) >= len(outcomes) // 8 and set(scored) >= {"i", "u", "f"}, outcomes


def test_any_named_row_gets_the_frameworks_answer_or_a_deserved_input_error(ens, frameworks):
    """Mappings with missing, unknown or misspelt names and non-numbers, NaN, inf or huge values mixed into
    ordinary ones: scored within 1e-5 of the frameworks, or refused naming a culprit that really is one."""
    outcomes = []
    # Inside the build's proven domain, feature by feature (the demo's narrowest: ema_9_dist, about +-0.28).
    ordinary = [st.one_of(st.floats(float(a), float(b), allow_nan=False), st.integers(math.ceil(a), math.floor(b)))
                for a, b in zip(*bounds(ens), strict=True)]

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(values=st.tuples(*ordinary),
           odd=st.dictionaries(st.integers(0, 17), anything, max_size=2),
           drop=st.sets(st.integers(0, 17), max_size=2),
           extra=st.sets(st.sampled_from(["rsi_41", "RSI_14", "macd ", "symbol"]), max_size=2))
    def check(values, odd, drop, extra):
        names = list(ens.feature_names)
        values = [odd.get(i, v) for i, v in enumerate(values)]
        row = {n: v for i, (n, v) in enumerate(zip(names, values, strict=True)) if i not in drop}
        row.update({e: 1.0 for e in extra})
        missing = [names[i] for i in drop]
        unknown = sorted(extra - {"symbol"})
        bad = [n for n in row if n in names and not (_is_number(row[n]) and np.isfinite(float(row[n])))]
        want = None
        if missing or unknown or bad:
            reason, culprits = "missing, unknown or not a finite number", [f"'{n}'" for n in missing + unknown + bad]
        elif _outside(ens, np.array([[float(row[n]) for n in names]])):
            reason, culprits = "outside the domain", _outside(ens, np.array([[float(row[n]) for n in names]]))
        else:
            reason, want = _expected(frameworks, np.array([[float(row[n]) for n in names]]))
            culprits = [f"member '{reason.removeprefix('member ')}'" if reason else ""]

        def score():
            (p,) = ens.predict(row)
            return np.array([[p.probabilities[c] for c in ens.classes]])
        outcomes.append(_check_outcome(score, reason, want, culprits))

    check()
    assert outcomes.count("scored") >= len(outcomes) // 5 and outcomes.count("refused") >= len(outcomes) // 5


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float64, (3, 18), elements=finite), perm=st.permutations(list(range(18))))
def test_column_order_of_named_rows_never_matters(ens, x, perm):
    x = np.clip(x, ens.manifest["domain"]["lo"], ens.manifest["domain"]["hi"])  # rows the build takes
    names = [ens.feature_names[i] for i in perm]
    rows = [{n: float(r[ens.feature_names.index(n)]) for n in names} for r in x]
    got = np.array([list(p.probabilities.values()) for p in ens.predict(rows)])
    np.testing.assert_array_equal(got, ens.predict_proba(x))


# --- a build killed at any moment leaves the previous artifacts intact --------------------------------------
#
# The build runs in a child process whose audit hook stops it before every filesystem change it makes beside
# the output folder (a file opened for writing, mkdir, rename, remove, rmtree; once writing, any foreign
# function looked up through ctypes, e.g. renameat2): a SIGKILL can land exactly there.
# The parent looks at the output path at each stop, and kills the child at chosen stops. The previous folder
# is a different build (N-HiTS alone), so "old" and "new" are told apart by their manifest bytes.

REPO = Path(__file__).resolve().parents[2]
PAUSED_CHILD = r"""
import os, runpy, sys

where, events, go = os.path.realpath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
MUTATING = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.move", "os.symlink",
            "os.link", "os.truncate", "os.chmod", "os.utime", "os.chown"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def here(args):
    return any(isinstance(a, (str, bytes, os.PathLike)) and os.fsdecode(a).startswith(where) for a in args)

writing = False

def hook(event, args):
    global writing
    if event in MUTATING:
        stop = here(args)
    elif event == "open":
        path, mode, flags = args
        stop = here((path,)) and bool((mode and set(mode) & set("wax+")) or (flags or 0) & WRITE_FLAGS)
    elif event in ("ctypes.dlsym", "ctypes.call_function"):
        stop = writing  # a foreign call (renameat2, say) once the write has begun: its args are not audited
    else:
        return
    if stop:
        writing = True
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


def _snapshot(out: Path) -> tuple:
    """What the folder at `out` is made of: the same snapshot means the same state."""
    try:
        return (os.stat(out).st_ino,) + tuple(sorted((str(p), p.lstat().st_ino, p.lstat().st_size)
                                                     for p in out.rglob("*")))
    except FileNotFoundError:
        return ()


def _state(out: Path, old_manifest: bytes, new_manifest: bytes, known: dict | None = None) -> str:
    snapshot = _snapshot(out)
    if known is not None and snapshot and snapshot in known:
        return known[snapshot]
    known = {} if known is None else known
    known[snapshot] = _classify(out, old_manifest, new_manifest)
    return known[snapshot]


def _classify(out: Path, old_manifest: bytes, new_manifest: bytes) -> str:
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
    seen: list[tuple[str, str]] = []
    known: dict = {}  # runtime.load once per distinct folder state, not once per stop
    try:
        with os.fdopen(events_r, "r") as events:
            for line in events:
                seen.append((line.strip(), _state(out, old_manifest, new_manifest, known)))
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


@pytest.mark.parametrize("where", [0.5, 1.0])
def test_killed_build_leaves_previous_artifacts_loadable(demo_models, old_and_new, unkilled_rebuild, tmp_path, where):
    """A real SIGKILL halfway through the write, and at its last change (the swap done, the clean-up not):
    the path holds the previous build or the new one, whole. (Every other instant: the test above.)"""
    old, new_manifest = old_and_new
    n_events = len(unkilled_rebuild[0])
    out = Path(shutil.copytree(old, tmp_path / "artifacts"))
    seen, final = _paused_build(demo_models, out, (old / "manifest.json").read_bytes(), new_manifest,
                                kill_at=round(where * (n_events - 1)))
    assert final in ("old", "new"), final
    assert all(state in ("old", "new") for _, state in seen), seen
