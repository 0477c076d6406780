"""The runtime as a service uses it. Marked `slim`: these also run in a plain `pip install .` venv, where
torch, scikit-learn, xgboost, lightgbm and onnx are absent."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from domain_rows import typical_rows

import runtime

pytestmark = pytest.mark.slim

HEAVY = ("torch", "sklearn", "xgboost", "lightgbm", "onnx", "onnxmltools", "skl2onnx", "click", "pandas")


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


@pytest.fixture(scope="module")
def rows(ens):
    return typical_rows(ens, 40, seed=3)  # inside the build's proven domain: these tests are not about it


def as_dict(ens, row):
    return dict(zip(ens.feature_names, map(float, row), strict=True))


def test_import_runtime_pulls_in_nothing_heavy():
    code = "import json, runtime, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert not set(HEAVY) & set(loaded), f"import runtime pulled in {set(HEAVY) & set(loaded)}"
    assert "onnxruntime" in loaded and "numpy" in loaded


# What `import runtime` loads of the project: the serving core, nothing of runtime.batch or runtime.monitor
# (host and signing load on first use, records for the commands only). A module added here is a decision:
# docs/index.md draws the core.
CORE = ["runtime", "runtime.artifacts", "runtime.contract", "runtime.drift", "runtime.errors",
        "runtime.features", "runtime.jsonstrict", "runtime.limits", "runtime.protowire"]


def loaded_by(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after `statement` (run from the repository root)."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=repo).stdout)


def test_import_runtime_loads_the_core_alone():
    loaded = loaded_by("import runtime")
    assert [m for m in loaded if m.split(".")[0] == "runtime"] == CORE
    # Outside the project: the standard library and what numpy and onnxruntime load themselves, nothing more.
    baseline = set(loaded_by("import numpy, onnxruntime"))
    foreign = {m.split(".")[0] for m in loaded} - {m.split(".")[0] for m in baseline} - set(sys.stdlib_module_names)
    assert foreign == {"runtime"}, f"import runtime pulled in {sorted(foreign - {'runtime'})}"


def test_loaded_ensemble_says_what_it_is(ens):
    assert ens.classes == ("SELL", "HOLD", "BUY")
    assert len(ens.feature_names) == 18 and ens.feature_names[0] == "rsi_14"
    assert ens.members == pytest.approx({"xgboost": 0.25, "lightgbm": 0.25, "nhits": 0.30, "patchtst": 0.20})
    info = ens.describe()
    assert info["parity"]["passed"] is True and set(info["members"]) == set(ens.members)


def test_run_gives_every_output_the_other_methods_give(ens, rows):
    out = ens.run(rows)
    assert list(out) == ["probabilities", "label", "confidence", "member_probabilities"]
    np.testing.assert_array_equal(out["probabilities"], ens.predict_proba(rows))
    members = ens.member_probabilities(rows)
    for i, name in enumerate(ens.member_order):
        np.testing.assert_array_equal(out["member_probabilities"][:, i], members[name])
    predictions = ens.predict(rows)
    assert [ens.classes[int(k)] for k in out["label"]] == [p.action for p in predictions]
    assert out["confidence"].tolist() == pytest.approx([p.confidence for p in predictions], abs=0)


@pytest.mark.parametrize(("bad", "says"), [
    ("nan", r"row 3, feature '.*': nan is not finite|row 3"),
    ("inf", r"row 3, feature '.*': inf is not finite"),
    ("width", r"features must have shape \(n, 18\)"),
    ("text", r"is not a number"),
    ("empty", r"no rows to score"),
])
def test_run_refuses_what_predict_proba_refuses(ens, rows, bad, says):
    x = rows.copy()
    if bad == "nan":
        x[3, 2] = np.nan
    elif bad == "inf":
        x[3, 2] = np.inf
    elif bad == "width":
        x = x[:, :-1]
    elif bad == "text":
        x = x.astype(object)
        x[3, 2] = "1.0"
    else:
        x = x[:0]
    for method in (ens.run, ens.predict_proba):
        with pytest.raises(runtime.InputError, match=says) as caught:
            method(x)
        assert str(caught.value) == str(pytest.raises(runtime.InputError, ens.predict_proba, x).value)


def test_predict_mapping_matches_predict_proba_and_members(ens, rows):
    probs = ens.predict_proba(rows)
    members = ens.member_probabilities(rows)
    assert probs.shape == (len(rows), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    weighted = sum(w * members[name] for name, w in ens.members.items())
    np.testing.assert_allclose(probs, weighted, atol=1e-6)
    for i, row in enumerate(rows[:5]):
        (p,) = ens.predict(as_dict(ens, row))
        assert p.action == ens.classes[int(np.argmax(probs[i]))]
        assert p.confidence == pytest.approx(float(probs[i].max()))
        assert list(p.probabilities) == list(ens.classes)
        assert p.members["nhits"] == pytest.approx(dict(zip(ens.classes, members["nhits"][i].tolist(), strict=True)))


def test_named_inputs_are_aligned_to_training_order(ens, rows):
    forward = [as_dict(ens, r) for r in rows[:6]]
    backward = [dict(reversed(list(d.items()))) for d in forward]
    with_symbol = [{**d, "symbol": "BTCUSDT"} for d in backward]
    want = ens.predict_proba(rows[:6])
    for given in (forward, backward, with_symbol):
        got = np.array([list(p.probabilities.values()) for p in ens.predict(given)])
        np.testing.assert_allclose(got, want, atol=1e-7)
    got = [p.action for p in ens.predict(rows[:6])]  # a 2-D array is taken in feature order
    assert got == [ens.classes[i] for i in want.argmax(axis=1)]


def test_predict_takes_a_real_dataframe_in_any_column_order(ens, rows):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(rows[:5], columns=list(ens.feature_names))
    shuffled = frame[list(reversed(frame.columns))]
    got = np.array([list(p.probabilities.values()) for p in ens.predict(shuffled)])
    np.testing.assert_allclose(got, ens.predict_proba(rows[:5]), atol=1e-7)


# (how a good row of named features is spoiled, given the row and a feature's name) -> (the row, the name
# the refusal must mention)
BAD_ROWS = [
    pytest.param(lambda row, name: ({k: v for k, v in row.items() if k != name}, name), id="missing"),
    pytest.param(lambda row, name: ({**row, "rsi_41": 1.0}, "rsi_41"), id="unknown"),
    pytest.param(lambda row, name: ({**row, name: math.nan}, name), id="nan"),
    pytest.param(lambda row, name: ({**row, name: -math.inf}, name), id="inf"),
    pytest.param(lambda row, name: ({**row, name: "61.2"}, name), id="string"),
    pytest.param(lambda row, name: ({**row, name: True}, name), id="bool"),
]


@pytest.mark.parametrize("spoil", BAD_ROWS)
def test_bad_named_input_is_refused_naming_the_feature(ens, rows, spoil):
    row, name = spoil(as_dict(ens, rows[0]), ens.feature_names[3])
    with pytest.raises(runtime.InputError, match=name):
        ens.predict(row)


def test_a_frame_with_a_repeated_column_is_refused_naming_it(ens, rows):
    pd = pytest.importorskip("pandas")
    name = ens.feature_names[3]
    frame = pd.DataFrame([list(rows[0]) + [1.0]], columns=list(ens.feature_names) + [name])
    with pytest.raises(runtime.InputError, match=name):
        ens.predict(frame)


@pytest.mark.parametrize("shape", [(2, 17), (2, 19), (18,), (0, 18), (2, 3, 18)])
def test_wrong_shapes_are_refused(ens, shape):
    with pytest.raises(runtime.InputError):
        ens.predict_proba(np.zeros(shape))


def test_non_numeric_array_names_row_and_feature(ens, rows):
    bad = rows[:3].astype(object)
    bad[2, 5] = "n/a"
    with pytest.raises(runtime.InputError, match=f"row 2, feature '{ens.feature_names[5]}'"):
        ens.predict_proba(bad)
    nan = rows[:3].copy()
    nan[1, 0] = np.nan
    with pytest.raises(runtime.InputError, match=f"row 1, feature '{ens.feature_names[0]}'"):
        ens.predict_proba(nan)


@pytest.mark.slow
def test_shared_ensemble_is_consistent_across_threads(ens, rows):
    """8 threads x 1000 calls, mixed batch sizes: each call gives exactly what the same call gave sequentially.
    (Results may differ in the last bit between batch sizes, as BLAS kernels do; never between threads.)"""
    rng = np.random.default_rng(0)
    calls = [(int(s), int(n)) for n in rng.integers(1, len(rows), 8 * 1000)
             for s in [rng.integers(0, len(rows) - n + 1)]]
    # The sequential answer once per distinct call (about 800 of the 8000): each is deterministic, and the
    # threaded calls are what is under test.
    sequential = {(s, n): ens.predict_proba(rows[s:s + n]) for s, n in sorted(set(calls))}

    def work(offset):
        for k in range(offset, len(calls), 8):
            s, n = calls[k]
            np.testing.assert_array_equal(ens.predict_proba(rows[s:s + n]), sequential[s, n])
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


# --- artifacts that cannot be trusted are refused at load --------------------------------------------------

def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_every_artifact_is_verified(artifacts_copy):
    listed = json.loads((artifacts_copy / "manifest.json").read_text())["files"]
    assert set(listed) | {"manifest.json"} == set(_files(artifacts_copy))


def _replace_by_link(target, folder, rel):
    os.rename(target, folder / "elsewhere")
    target.symlink_to(folder / "elsewhere")


def _swap(target, folder, rel):
    other = folder / ("ensemble.onnx" if rel != "ensemble.onnx" else "members/nhits.onnx")
    a, b = target.read_bytes(), other.read_bytes()
    target.write_bytes(b)
    other.write_bytes(a)


# fault -> (what it does to one listed file, the reason the refusal gives after naming the file; None: its sha256)
FAULTS = [
    ("truncate-empty", lambda target, folder, rel: target.write_bytes(b""), None),
    ("truncate-half", lambda target, folder, rel: target.write_bytes(target.read_bytes()[:target.stat().st_size // 2]),
     None),
    ("truncate-last-byte", lambda target, folder, rel: target.write_bytes(target.read_bytes()[:-1]), None),
    ("flip", lambda target, folder, rel: target.write_bytes(
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])(target.read_bytes())), None),
    ("delete", lambda target, folder, rel: target.unlink(), "missing"),
    ("symlink", _replace_by_link, "'[^']+' is not a regular file"),
    ("swap", _swap, None),
]


@pytest.mark.parametrize(("fault", "damage", "names"), FAULTS, ids=[f[0] for f in FAULTS])
def test_faulty_artifact_is_refused(artifacts_copy, fault, damage, names):
    import shutil

    for i, rel in enumerate(_files(artifacts_copy)):
        if rel == "manifest.json":
            continue
        folder = artifacts_copy.parent / f"{fault}-{i}"  # a name that cannot itself match the file's name
        shutil.copytree(artifacts_copy, folder)
        damage(folder / rel, folder, rel)
        # The graph's own record of its build is read before its sha256 is compared: a damaged graph may fail
        # that first (or not parse). A swap changes two files: whichever is read first is named.
        graph = "(sha256|carries no build contract|its build contract|not a readable)"
        reason = names or (graph if rel == "ensemble.onnx" or fault == "swap" else "sha256")
        named = {rel} | ({"ensemble.onnx", "members/nhits.onnx"} if fault == "swap" else set())
        with pytest.raises(runtime.ArtifactError, match="|".join(re.escape(f"{folder / r}: ") + reason for r in named)):
            runtime.load(folder)


def test_extra_file_edited_manifest_and_schema_are_refused(artifacts_copy):
    (artifacts_copy / "members" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(runtime.ArtifactError, match="extra.onnx"):
        runtime.load(artifacts_copy)
    (artifacts_copy / "members" / "extra.onnx").unlink()
    manifest_path = artifacts_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for field, value, match in (("schema_version", 99, "schema_version"),
                                ("opsets", {"ai.onnx": 99, "ai.onnx.ml": 3}, "opsets")):
        manifest_path.write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(runtime.ArtifactError, match=match):
            runtime.load(artifacts_copy)
    manifest_path.write_text("{not json")
    with pytest.raises(runtime.ArtifactError, match="manifest.json"):
        runtime.load(artifacts_copy)
    manifest_path.unlink()
    with pytest.raises(runtime.ArtifactError, match="manifest.json"):
        runtime.load(artifacts_copy)
