"""Attacks on the build side and the file-facing commands, each reproducing what it found first.

Every case is refused before any model is loaded (or checks one function against the shared demo build),
so the file stays fast: the session's demo models and demo artifacts are reused, never rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert import manifest as mf
from convert.cli import main
from convert.discover import make_plan
from convert.errors import MetadataError, OutputError
from convert.verify import plan_differences
from runtime.signing import sign

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree_spec(models: Path, **members_changes: dict) -> dict:
    """An ensemble.json naming the demo's xgboost and lightgbm members with the shared scaler."""
    def one(kind: str) -> dict:
        file = next(p.name for p in models.iterdir() if p.name.startswith(f"{kind}_v") and p.suffix == ".pkl")
        scaler = next(p.name for p in models.iterdir() if p.name.startswith("scaler_v"))
        return {"kind": kind, "file": file, "scaler": scaler, "metadata": None}
    members = {"xgboost": one("xgboost"), "lightgbm": one("lightgbm")}
    for name, change in members_changes.items():
        members[name] = {**members.get(name, one("xgboost")), **change}
    return {"members": members}


def write_spec(models: Path, spec: dict) -> None:
    (models / "ensemble.json").write_text(json.dumps(spec))


def everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- signing keys: a FIFO or device named as the key blocked `convert --sign-key` and `verify --public-key`


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_key_that_is_not_a_regular_file_is_refused_not_read_forever(tmp_path, kind):
    key = tmp_path / "key.pem"
    if kind == "fifo":
        os.mkfifo(key)
    else:
        key = Path("/dev/zero")
    code = ("import sys\nfrom runtime.signing import SignatureError, sign, verify\n"
            "for call in (lambda: sign({}, sys.argv[1]), lambda: verify({}, b'', sys.argv[1])):\n"
            "    try:\n        call()\n    except SignatureError as exc:\n        print('refused:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(key)], check=False, capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("refused:") == 2 and "not a regular file" in done.stdout, done.stdout


# --- a member name is a file name inside the output folder: '../../evil' wrote members/../../evil.onnx outside


@pytest.mark.parametrize("name", ["../../evil", "a/b", "a\x00b", "", ".hidden", "x" * 65])
def test_a_member_name_that_is_not_a_plain_name_is_refused(models_copy, tmp_path, name):
    spec = tree_spec(models_copy)
    spec["members"][name] = spec["members"].pop("xgboost")
    write_spec(models_copy, spec)
    before = everything_under(tmp_path)
    result = invoke("convert", models_copy, "-o", tmp_path / "out" / "artifacts", "-q")
    assert result.exit_code == 1, result.output
    assert "MetadataError" in result.output and "member name" in result.output
    assert everything_under(tmp_path) == before  # nothing written anywhere, inside or beside the output


def test_the_writer_never_writes_outside_the_new_folder(tmp_path):
    out = tmp_path / "out" / "artifacts"
    with pytest.raises(OutputError, match="not a path inside the output folder"):
        mf.write_atomically(out, {"ensemble.onnx": b"x", "members/../../evil.onnx": b"evil"})
    assert not (tmp_path / "out" / "evil.onnx").exists() and not out.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the staging folder is gone too


# --- a source outside the models folder built a folder that `verify` could never find again


@pytest.mark.parametrize("where", ["dotdot", "absolute", "subfolder"])
def test_a_member_file_outside_the_models_folder_is_refused(models_copy, tmp_path, where):
    spec = tree_spec(models_copy)
    original = models_copy / spec["members"]["xgboost"]["file"]
    if where == "dotdot":
        shutil.copy(original, tmp_path / original.name)
        spec["members"]["xgboost"]["file"] = f"../{original.name}"
    elif where == "absolute":
        spec["members"]["xgboost"]["file"] = str(original)
    else:
        (models_copy / "sub").mkdir()
        shutil.copy(original, models_copy / "sub" / original.name)
        spec["members"]["xgboost"]["file"] = f"sub/{original.name}"
    write_spec(models_copy, spec)
    with pytest.raises(MetadataError, match=r"members\.xgboost\.file: .* must be the name of a file in"):
        make_plan(models_copy)


# --- weights: 5e-324 beside 1 is not 0 in float64 but is 0 in the float32 graph


def test_a_weight_that_is_zero_in_float32_is_refused(models_copy):
    spec = tree_spec(models_copy)
    spec["members"]["xgboost"]["weight"] = 5e-324
    spec["members"]["lightgbm"]["weight"] = 1
    write_spec(models_copy, spec)
    with pytest.raises(MetadataError, match=r"\['xgboost'\] get weight 0 .* float32"):
        make_plan(models_copy)


def test_a_weight_written_as_a_string_is_named_as_a_string(models_copy):
    spec = tree_spec(models_copy)
    spec["members"]["xgboost"]["weight"] = "1"
    write_spec(models_copy, spec)
    with pytest.raises(MetadataError, match="got '1'"):
        make_plan(models_copy)


# --- the output guard: a hand-written manifest.json is not a build; a signed build is one


@pytest.mark.parametrize("manifest", [
    {"schema_version": 1, "files": {"../../x": "ab"}},
    {"schema_version": 1, "files": {}},
    {"schema_version": 1, "files": {"ensemble.onnx": "ab"}},        # listed, but no such file
    {"schema_version": 1, "files": {"ensemble.onnx": "ab", "/etc/passwd": "ab"}},
])
def test_force_does_not_replace_a_folder_whose_manifest_was_written_by_hand(tmp_path, manifest):
    out = tmp_path / "notes"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "data.txt").write_text("precious")
    (out / "manifest.json").write_text(json.dumps(manifest))
    for force in (False, True):
        with pytest.raises(OutputError, match="not provably a previous ensemble-onnx build"):
            mf.check_output(out, None, force)
    assert (out / "sub" / "data.txt").read_text() == "precious"


def test_a_signed_build_is_replaced_without_force(artifacts_copy, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "key.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    (artifacts_copy / "manifest.sig").write_bytes(sign(manifest, key))
    mf.check_output(artifacts_copy, None, False)  # was refused: 'manifest.sig' is not a file its manifest lists
    (artifacts_copy / "manifest.sig").unlink()
    (artifacts_copy / "manifest.sig").mkdir()     # a folder of that name is still not part of a build
    with pytest.raises(OutputError, match="manifest.sig"):
        mf.check_output(artifacts_copy, None, False)


# --- verify: the manifest's scaler and metadata were not compared with what the sources name


def test_verify_compares_the_scaler_and_metadata_files_the_sources_name(demo_artifacts, models_copy):
    manifest = json.loads((demo_artifacts / "manifest.json").read_text())
    scaler = manifest["members"]["xgboost"]["scaler"]["file"]
    shutil.copy(models_copy / scaler, models_copy / "other_scaler.pkl")
    spec = {"members": {}}
    for name in manifest["ensemble"]["members"]:  # what discovery built, written out, but one scaler changed
        m = manifest["members"][name]
        spec["members"][name] = {"kind": m["kind"], "file": m["source"]["file"], "weight": m["weight"],
                                 "metadata": (m.get("metadata") or {}).get("file"),
                                 "scaler": "other_scaler.pkl" if name == "xgboost" else m["scaler"]["file"]}
    write_spec(models_copy, spec)
    problems = plan_differences(manifest, make_plan(models_copy))
    assert [p.split(":")[0] for p in problems] == ["members.xgboost.scaler.file"], problems
    spec["members"]["xgboost"]["scaler"] = scaler
    spec["members"]["nhits"]["metadata"] = None
    write_spec(models_copy, spec)
    problems = plan_differences(manifest, make_plan(models_copy))
    assert [p.split(":")[0] for p in problems] == ["members.nhits.metadata.file"], problems


# --- XGBoost JSON: libxgboost indexes with the file's ids unchecked (heap corruption, endless loops), and
# out-of-range best_iteration, base_score or split features ended in an internal error


def _xgb_case(models: Path, tmp_path: Path, change) -> Path:
    import joblib

    pkl = next(p for p in models.iterdir() if p.name.startswith("xgboost_v") and p.suffix == ".pkl")
    folder = tmp_path / "xgb"
    folder.mkdir()
    joblib.load(pkl).get_booster().save_model(folder / "m.json")
    raw = json.loads((folder / "m.json").read_text())
    change(raw)
    (folder / "m.json").write_text(json.dumps(raw))
    (folder / "ensemble.json").write_text(json.dumps({"members": {"x": {"kind": "xgboost", "file": "m.json",
                                                                         "scaler": None}}}))
    return folder


def _model(raw: dict) -> dict:
    return raw["learner"]["gradient_booster"]["model"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: _model(r)["tree_info"].__setitem__(0, -5), r"tree_info\[0\] is -5"),
    (lambda r: _model(r)["tree_info"].__setitem__(0, 99), r"tree_info\[0\] is 99"),
    (lambda r: _model(r)["trees"][0]["left_children"].__setitem__(0, 0), "tree 0, node 0"),
    (lambda r: _model(r)["trees"][0]["split_indices"].__setitem__(0, 10 ** 6), "split feature 1000000"),
    (lambda r: r["learner"]["learner_model_param"].__setitem__("base_score", "[NaN,NaN,NaN]"), "base_score"),
    (lambda r: r["learner"]["attributes"].__setitem__("best_iteration", "100000"), "best_iteration 100000"),
], ids=["tree-id-negative", "tree-id-beyond-classes", "child-cycle", "split-feature", "base-score-nan",
        "best-iteration"])
def test_a_corrupt_xgboost_json_is_refused_by_name(demo_models, tmp_path, change, message):
    folder = _xgb_case(demo_models, tmp_path, change)
    done = subprocess.run([sys.executable, "-m", "convert.cli", "convert", str(folder), "-o",
                           str(tmp_path / "out"), "-q"], check=False, capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]  # was: abort (heap corruption), a hang, or internal error
    assert "ModelFileError" in done.stderr and "m.json" in done.stderr, done.stderr[-2000:]
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_appears_during_the_swap_is_left_alone(tmp_path, monkeypatch):
    """Two converts to one new -o: the second to swap found the folder the first had just made (after its
    own check) and died with an internal error; it must refuse and leave the other's folder as it is."""
    out = tmp_path / "artifacts"
    real = mf._rename

    def racing(src: Path, dst: Path, flags: int) -> bool:
        if flags == mf.RENAME_NOREPLACE:  # the other build lands between our check and our rename
            dst.mkdir()
            (dst / "theirs.txt").write_text("theirs")
        return real(src, dst, flags)

    monkeypatch.setattr(mf, "_rename", racing)
    with pytest.raises(OutputError, match="appeared while this build ran"):
        mf.write_atomically(out, {"ensemble.onnx": b"ours"})
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts"]  # no staging folder left beside it


# --- LightGBM text: its parser aborts the whole process on some malformed trees ("terminate called without
# an active exception"), which ended convert with no message at all


@pytest.mark.parametrize(("field", "value"), [("split_feature", "999"), ("left_child", "77")])
def test_a_lightgbm_text_that_crashes_its_reader_is_refused_by_name(demo_models, tmp_path, field, value):
    import joblib

    pkl = next(p for p in demo_models.iterdir() if p.name.startswith("lightgbm_v") and p.suffix == ".pkl")
    folder = tmp_path / "lgb"
    folder.mkdir()
    joblib.load(pkl).booster_.save_model(folder / "m.txt")
    text = (folder / "m.txt").read_text()
    (folder / "m.txt").write_text(re.sub(rf"{field}=-?\d+", f"{field}={value}", text, count=1))
    (folder / "ensemble.json").write_text(json.dumps({"members": {"l": {"kind": "lightgbm", "file": "m.txt",
                                                                         "scaler": None}}}))
    done = subprocess.run([sys.executable, "-m", "convert.cli", "convert", str(folder), "-o",
                           str(tmp_path / "out"), "-q"], check=False, capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]  # was: killed by SIGABRT inside LightGBM, no message
    # then: "LightGBM crashed reading it"; now the structural check names the tree and field first
    assert "ModelFileError" in done.stderr and f"m.txt: Tree=0: {field}[0] = {value} " in done.stderr
    assert not (tmp_path / "out").exists()


# A one-tree binary LightGBM model written by hand (LightGBM reads it; no training needed).
HAND_MODEL = """tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=binary sigmoid:1
feature_names=a b
feature_infos=[-1:1] [-1:1]

Tree=0
num_leaves=2
num_cat=0
split_feature=0
split_gain=1
threshold=0
decision_type=2
left_child=-1
right_child=-2
leaf_value=0.1 -0.1
leaf_weight=1 1
leaf_count=1 1
internal_value=0
internal_weight=2
internal_count=2
is_linear=0
shrinkage=1


end of trees
"""


def lightgbm_folder(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "lgb"
    folder.mkdir()
    (folder / name).write_bytes(content)
    (folder / "ensemble.json").write_text(json.dumps({"members": {"l": {"kind": "lightgbm", "file": name,
                                                                         "scaler": None}}}))
    return folder


def tiny_lgbm_classifier_pickle(model_text: bytes) -> bytes:
    """A real LGBMClassifier (one tree, fitted on 60 rows in milliseconds) pickled with its text replaced."""
    import pickle

    import lightgbm
    import numpy as np

    rng = np.random.default_rng(0)
    model = lightgbm.LGBMClassifier(n_estimators=1, num_leaves=3, min_child_samples=5, verbose=-1)
    return _with_model_text(pickle.dumps(model.fit(rng.normal(size=(60, 3)), rng.integers(0, 3, 60))),
                            lambda _: model_text)


NO_CLASSES = "not a readable LightGBM model (Model file doesn't specify the number of classes)"


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("m.txt", b"hello\n", "not a readable LightGBM model (Unknown model format or submodel type)"),
    ("m.txt", b"tree\nversion=v4\n", NO_CLASSES),
    ("m.txt", HAND_MODEL.replace("num_leaves=2", "num_leaves=-5").encode(),
     # was: "... (Check failed: (strs.size()) == (static_cast<size_t>(n)) at /__w/LightGBM/.../common.h, line
     # 1173 .)" from LightGBM; now the structural check names the field before LightGBM reads it
     "Tree=0: num_leaves = -5 is outside [1, 2147483647]; the model text is malformed. Re-save the model from "
     "LightGBM"),
    ("m.pkl", None, NO_CLASSES),
])
def test_a_lightgbm_file_lightgbm_refuses_is_one_line_of_ours_and_nothing_of_lightgbms(tmp_path, capfd, name,
                                                                                        content, reason):
    # Read in this process, LightGBM printed "[LightGBM] [Fatal] Unknown model format ... in model file PATH"
    # on stderr beside the refusal, which quoted the same words again.
    folder = lightgbm_folder(tmp_path, name, tiny_lgbm_classifier_pickle(b"tree\nversion=v4\n") if content is None
                             else content)
    capfd.readouterr()
    result = invoke("convert", folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert result.output == f"Error: ModelFileError: {folder / name}: {reason}.\n"
    assert capfd.readouterr() == ("", "")  # nothing written past click: LightGBM's own line never reaches the user
    assert not (tmp_path / "out").exists()


def test_the_hand_written_lightgbm_model_is_one_lightgbm_reads(tmp_path):
    import lightgbm
    import numpy as np

    (tmp_path / "m.txt").write_text(HAND_MODEL)
    booster = lightgbm.Booster(model_file=str(tmp_path / "m.txt"))
    np.testing.assert_allclose(booster.predict(np.array([[-1.0, 0.0], [1.0, 0.0]])),
                               1 / (1 + np.exp([-0.1, 0.1])))


# --- LightGBM trusts its model text: a child naming leaf 8 of a 2-leaf tree made it read past its leaf array,
# and the build baked in whatever it found there (parity passed: both sides read the same memory).

# HAND_MODEL's tree grown to 3 leaves (node 0: a <= 0 ? leaf 0 : node 1; node 1: b <= 0 ? leaf 1 : leaf 2).
HAND_MODEL_3 = HAND_MODEL.replace("num_leaves=2\n", "num_leaves=3\n").replace(
    "split_feature=0\nsplit_gain=1\nthreshold=0\ndecision_type=2\nleft_child=-1\nright_child=-2\n"
    "leaf_value=0.1 -0.1\nleaf_weight=1 1\nleaf_count=1 1\ninternal_value=0\ninternal_weight=2\ninternal_count=2\n",
    "split_feature=0 1\nsplit_gain=1 1\nthreshold=0 0\ndecision_type=2 2\nleft_child=-1 -2\nright_child=1 -3\n"
    "leaf_value=0.1 -0.1 0.2\nleaf_weight=1 1 1\nleaf_count=1 1 1\ninternal_value=0 0\ninternal_weight=2 2\n"
    "internal_count=2 2\n")
MALFORMED = "; the model text is malformed. Re-save the model from LightGBM"


def test_the_three_leaf_hand_written_model_is_one_lightgbm_reads():
    import lightgbm
    import numpy as np

    assert "num_leaves=3" in HAND_MODEL_3
    booster = lightgbm.Booster(model_str=HAND_MODEL_3)
    np.testing.assert_allclose(booster.predict(np.array([[-1.0, 0.0], [1.0, -1.0], [1.0, 1.0]]), raw_score=True),
                               [0.1, -0.1, 0.2])


@pytest.mark.parametrize(("text", "reason"), [
    (HAND_MODEL.replace("left_child=-1", "left_child=-9"),
     "Tree=0: left_child[0] = -9 names leaf 8, but the tree has 2 leaves"),
    (HAND_MODEL.replace("right_child=-2", "right_child=1"),
     "Tree=0: right_child[0] = 1 names internal node 1, but the tree has 1 internal nodes"),
    (HAND_MODEL.replace("split_feature=0", "split_feature=2"), "Tree=0: split_feature[0] = 2 is outside [0, 1]"),
    (HAND_MODEL.replace("leaf_value=0.1 -0.1", "leaf_value=0.1"),
     "Tree=0: leaf_value has 1 values, but the tree needs 2"),
    (HAND_MODEL.replace("leaf_value=0.1 -0.1", "leaf_value=0.1 1e999"), "Tree=0: leaf_value[1] = 1e999 is not finite"),
    (HAND_MODEL.replace("threshold=0", "threshold=abc"), "Tree=0: threshold[0] = 'abc' is not a number"),
    (HAND_MODEL.replace("decision_type=2", "decision_type=14"),
     "Tree=0: decision_type[0] = 14 is not a decision LightGBM defines"),
    (HAND_MODEL.replace("decision_type=2", "decision_type=3"), "Tree=0: num_cat = 0 but no cat_boundaries"),
    (HAND_MODEL.replace("left_child=-1", "left_child=-1\nleft_child=-2"), "Tree=0: left_child is written twice"),
    (HAND_MODEL_3.replace("right_child=1 -3", "right_child=1 0"),
     "Tree=0: right_child[1] = 0 reaches node 0 a second time (a cycle or a shared subtree)"),
    (HAND_MODEL_3.replace("right_child=1 -3", "right_child=-3 -3"),
     "Tree=0: internal node 1 is not reachable from the root"),
    (HAND_MODEL_3.replace("left_child=-1 -2", "left_child=-1 -1"),
     "Tree=0: left_child[1] = -1 reaches leaf 0 a second time"),
    (HAND_MODEL.replace("num_tree_per_iteration=1", "num_tree_per_iteration=0"),
     "num_tree_per_iteration = 0 is outside [1, 2147483647]"),
    (HAND_MODEL.replace("num_class=1\nnum_tree_per_iteration=1", "num_class=2\nnum_tree_per_iteration=2"),
     "1 trees is not a whole number of iterations of 2 (num_tree_per_iteration)"),
    (HAND_MODEL.replace("max_feature_idx=1", "max_feature_idx=1\ntree_sizes=300"),
     "tree_sizes[0] = 300, but Tree=0 is 245 bytes long"),  # its "Tree=0" line up to "end of trees"
    (HAND_MODEL.replace("Tree=0", "Tree=7"), "tree 0 is headed 'Tree=7', expected 'Tree=0'"),
    (HAND_MODEL.replace("end of trees\n", ""), "after 1 trees, the end of the text where 'end of trees' belongs"),
])
def test_a_lightgbm_tree_lightgbm_would_misread_is_refused_by_tree_and_field(text, reason):
    from convert.errors import ModelFileError
    from convert.members.lightgbm_text import check_model_text

    with pytest.raises(ModelFileError) as refused:
        check_model_text(text.encode(), "lightgbm.txt")
    assert str(refused.value) == f"lightgbm.txt: {reason}{MALFORMED}."


@pytest.mark.parametrize("name", ["m.txt", "m.pkl"])
def test_a_lightgbm_child_past_the_leaves_is_refused_before_lightgbm_reads_it(tmp_path, capfd, name):
    """The attack (M4): `left_child=-9` in a 2-leaf tree converted, parity passed, and the build answered
    with values nobody trained. The .txt and the text inside an LGBMClassifier pickle are checked alike."""
    text = HAND_MODEL.replace("left_child=-1", "left_child=-9").encode()
    folder = lightgbm_folder(tmp_path, name, text if name == "m.txt" else tiny_lgbm_classifier_pickle(text))
    spec = json.loads((folder / "ensemble.json").read_text())
    (folder / "ensemble.json").write_text(json.dumps({**spec, "classes": ["DOWN", "UP"]}))  # the model's two
    capfd.readouterr()
    result = invoke("convert", folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert result.output == (f"Error: ModelFileError: {folder / name}: Tree=0: left_child[0] = -9 names leaf 8, "
                             f"but the tree has 2 leaves{MALFORMED}.\n")
    assert capfd.readouterr() == ("", "")
    assert not (tmp_path / "out").exists()


def test_a_lightgbm_pickle_whose_booster_disagrees_with_its_classes_is_refused(tmp_path, capfd):
    """The tiny classifier has 3 classes; the (valid) binary text put in its place scores one column. This
    ended in an internal error (a MatMul of the wrong width in the ensemble graph) and a traceback."""
    folder = lightgbm_folder(tmp_path, "m.pkl", tiny_lgbm_classifier_pickle(HAND_MODEL.encode()))
    spec = json.loads((folder / "ensemble.json").read_text())
    (folder / "ensemble.json").write_text(json.dumps({**spec, "classes": ["DOWN", "UP"]}))
    capfd.readouterr()
    result = invoke("convert", folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert result.output == (f"Error: ModelFileError: {folder / 'm.pkl'}: the LGBMClassifier has 3 classes, but its "
                             "booster's text scores 1 per row (num_class); re-save the model from LightGBM.\n")
    assert not (tmp_path / "out").exists()


def test_a_lightgbm_pickle_that_calls_booster_itself_is_refused(tmp_path):
    """A Booster built by calling lightgbm.Booster(model_str=...) from the pickle would parse its text past the
    check; a saved LGBMClassifier builds its Booster by __new__ and __setstate__ only."""
    import pickle

    import lightgbm

    from convert.errors import ModelFileError
    from convert.loaders import load_pickle
    from convert.members.lightgbm_text import booster_stand_ins

    class Call:
        def __reduce__(self):
            return lightgbm.Booster, (None, None, None, HAND_MODEL.replace("left_child=-1", "left_child=-9"))

    (tmp_path / "m.pkl").write_bytes(pickle.dumps(Call(), protocol=4))
    with pytest.raises(ModelFileError, match=r"m\.pkl: the pickle calls lightgbm\.Booster\(\.\.\.\); a saved "):
        load_pickle(tmp_path / "m.pkl", "lightgbm", booster_stand_ins(tmp_path / "m.pkl"))


def test_the_probe_still_names_a_crash_and_quotes_lightgbm_without_its_source_path(tmp_path):
    """Behind the check, the child-process probe still stands (L9: LightGBM's reason came with the build
    machine's `at /__w/LightGBM/.../common.h, line 1173 .`, which says nothing about the file)."""
    from convert.errors import ModelFileError
    from convert.members.lightgbm import probe_model_file

    (tmp_path / "crash.txt").write_text(HAND_MODEL.replace("left_child=-1", "left_child=77"))
    with pytest.raises(ModelFileError, match=r"crash\.txt: LightGBM crashed reading it \(killed by SIGSEGV\)"):
        probe_model_file(tmp_path / "crash.txt", "text")
    (tmp_path / "short.txt").write_text(HAND_MODEL.replace("leaf_value=0.1 -0.1", "leaf_value=0.1"))
    with pytest.raises(ModelFileError) as refused:
        probe_model_file(tmp_path / "short.txt", "text")
    assert str(refused.value) == (f"{tmp_path / 'short.txt'}: not a readable LightGBM model (Check failed: "
                                  "(strs.size()) == (static_cast<size_t>(n))).")


LIGHTGBM_EVERYDAY = ["default", "binary", "5 classes", "nan in training", "dart", "goss extra_trees",
                     "random forest", "stumps", "early stopping", "monotone constraints", "zero_as_missing",
                     "categorical", "linear_tree"]


@pytest.mark.parametrize("option", LIGHTGBM_EVERYDAY)
def test_lightgbm_models_trained_the_everyday_ways_pass_the_check(tmp_path, option):
    """The matrix's LightGBM variants (tiny: 400 rows, 12 rounds), as text and as a pickle read through the
    checking unpickler: the check refuses none, and the pickle's Booster comes back a plain Booster."""
    import pickle

    import lightgbm
    import numpy as np

    from convert.loaders import load_pickle
    from convert.members.lightgbm_text import booster_stand_ins, check_model_text
    from tests.variants import VARIANTS, _tree_model, training_data

    variant = next(v for v in VARIANTS if v.framework == "lightgbm" and v.option == option)
    x, y = training_data(variant)
    model = _tree_model(variant, x, y)
    check_model_text(model.booster_.model_to_string(num_iteration=model.best_iteration_ or None).encode(), "m.txt")
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    read = load_pickle(tmp_path / "m.pkl", "lightgbm", booster_stand_ins(tmp_path / "m.pkl"))
    assert type(read.booster_) is lightgbm.Booster
    np.testing.assert_array_equal(read.predict_proba(x[:20]), model.predict_proba(x[:20]))


def _with_model_text(pickle_bytes: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """An LGBMClassifier pickle whose embedded model text (one BINUNICODE string, written outside any pickle
    frame for its size) is edited, its length prefix kept true, so the unpickler itself reads it fine."""
    start = pickle_bytes.index(b"tree\nversion=")
    assert pickle_bytes[start - 5:start - 4] == b"X"  # BINUNICODE: opcode, 4-byte little-endian length
    (n,) = struct.unpack("<I", pickle_bytes[start - 4:start])
    text = edit(pickle_bytes[start:start + n])
    return pickle_bytes[:start - 4] + struct.pack("<I", len(text)) + text + pickle_bytes[start + n:]


@pytest.mark.parametrize(("field", "value"), [("split_feature", "999"), ("left_child", "77")])
def test_a_lightgbm_pickle_whose_text_crashes_its_reader_is_refused_by_name(demo_models, tmp_path, field, value):
    """The same malformed text inside an allowlisted LGBMClassifier pickle aborted convert while unpickling."""
    pkl = next(p for p in demo_models.iterdir() if p.name.startswith("lightgbm_v") and p.suffix == ".pkl")
    folder = tmp_path / "lgb"
    folder.mkdir()
    (folder / "m.pkl").write_bytes(_with_model_text(
        pkl.read_bytes(), lambda text: re.sub(rf"{field}=-?\d+".encode(), f"{field}={value}".encode(), text, count=1)))
    (folder / "ensemble.json").write_text(json.dumps({"members": {"l": {"kind": "lightgbm", "file": "m.pkl",
                                                                         "scaler": None}}}))
    done = subprocess.run([sys.executable, "-m", "convert.cli", "convert", str(folder), "-o",
                           str(tmp_path / "out"), "-q"], check=False, capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]  # was: killed by SIGABRT inside LightGBM while unpickling
    assert "ModelFileError" in done.stderr and f"m.pkl: Tree=0: {field}[0] = {value} " in done.stderr
    assert not (tmp_path / "out").exists()


# --- N4: a member named `stacker` in a stacking ensemble collided with the stacker's `stacker/` tensors


def _hand_made_stacking(folder: Path, members: list[str], method: str = "stacking") -> Path:
    """A models folder planning accepts, with empty files: the plan is refused before any is loaded."""
    folder.mkdir()
    spec: dict = {"members": {}, "combine": {"method": method}}
    for i, name in enumerate(members):
        (folder / f"m{i}.json").write_bytes(b"")
        spec["members"][name] = {"kind": "xgboost", "file": f"m{i}.json", "scaler": None}
    if method == "stacking":
        (folder / "stacker.pkl").write_bytes(b"")
        spec["combine"]["file"] = "stacker.pkl"
    (folder / "ensemble.json").write_text(json.dumps(spec))
    return folder


def test_a_member_named_like_the_stacker_is_refused_at_planning_naming_it(tmp_path):
    from convert.errors import PlanError

    folder = _hand_made_stacking(tmp_path / "models", ["stacker", "scaler0"])
    with pytest.raises(PlanError, match=r"members\.stacker: .*member name 'stacker' is the prefix"):
        make_plan(folder)
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "'stacker'" in result.output
    assert not (tmp_path / "out").exists()


def test_the_names_raw_scaler0_and_policy_still_plan_and_stacker_in_a_weighted_ensemble(tmp_path):
    assert [m.name for m in make_plan(_hand_made_stacking(tmp_path / "a", ["raw", "scaler0", "policy"])).members] \
        == ["raw", "scaler0", "policy"]
    assert [m.name for m in make_plan(_hand_made_stacking(tmp_path / "b", ["stacker"], "weighted")).members] \
        == ["stacker"]


def test_a_tensor_the_fused_graph_would_define_twice_is_refused_by_name():
    """The backstop behind the planning check: a repeated tensor is a named ConvertError, not onnx.checker's
    SSA traceback ("internal error")."""
    from onnx import TensorProto, helper

    from convert.errors import ConvertError
    from convert.graph import _refuse_repeated_tensors

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["stacker/input"]),
         helper.make_node("Identity", ["member_flat"], ["stacker/input"])], "ensemble",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("member_flat", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("stacker/input", TensorProto.FLOAT, [1])])
    with pytest.raises(ConvertError, match=r"\['stacker/input'\] more than once: a member's name collides"):
        _refuse_repeated_tensors(graph)
    del graph.node[1]
    _refuse_repeated_tensors(graph)  # each tensor defined once: accepted


# --- N7: the repeated-name check ran names.count per name: 30,000 names took 13 s


def test_feature_names_are_checked_for_repeats_in_linear_time():
    from convert.discover import check_unique_names

    # No timing is asserted (speed lives in the benchmarks): 20,000 names took about 6 s with names.count per
    # name, a few milliseconds now; a quadratic check would show as a slow test, not a failing one.
    names = [f"feature_{i}" for i in range(20_000)]
    check_unique_names(names, "ensemble.json: field 'feature_names'")
    with pytest.raises(MetadataError, match=r"names \['feature_1', 'feature_7'\] more than once"):
        check_unique_names([*names, "feature_7", "feature_1", "feature_7"], "ensemble.json")



def test_feature_names_that_differ_only_in_unicode_form_are_refused():
    # Found: "é" as one character (NFC) and as e + combining accent (NFD) were two features; a caller's rows
    # keyed by either spelling fed only one of them.
    from convert.discover import check_unique_names

    check_unique_names(["caf\u00e9", "cafe"], "ensemble.json")
    with pytest.raises(MetadataError, match="the same text in two Unicode forms") as err:
        check_unique_names(["caf\u00e9", "rsi", "cafe\u0301"], "ensemble.json: field 'feature_names'")
    assert "'caf\u00e9' and 'cafe\u0301'" in str(err.value)


# --- attack report 3, H5: a StandardScaler that neither centers nor scales crashed convert (len(None))

def test_a_scaler_that_changes_nothing_is_refused_by_file_name(tmp_path):
    import pickle

    import numpy as np
    from sklearn.preprocessing import StandardScaler

    from convert.errors import ModelFileError
    from convert.scaler import load_scaler

    file = tmp_path / "s1.pkl"
    file.write_bytes(pickle.dumps(StandardScaler(with_mean=False, with_std=False).fit(np.ones((3, 2)))))
    with pytest.raises(ModelFileError, match=r"s1\.pkl: a StandardScaler with with_mean=False and with_std=False "
                                             r"changes nothing; give this member \"scaler\": null"):
        load_scaler(file)


# --- attack report 3, H4: a lone surrogate in a name built and loaded, then every output writer crashed

@pytest.mark.parametrize(("field", "value"), [("classes", ["\udc00", "b", "c"]),
                                              ("feature_names", ["\ud800x", "b"])])
def test_a_name_that_is_not_unicode_text_is_refused_naming_the_field(tmp_path, field, value):
    folder = _hand_made_stacking(tmp_path / "models", ["a"], "weighted")
    spec = json.loads((folder / "ensemble.json").read_text())
    spec[field] = value
    (folder / "ensemble.json").write_text(json.dumps(spec))  # ASCII escapes: "\udc00" as JSON text
    with pytest.raises(MetadataError, match=rf"ensemble\.json: field '{field}': '\\ud[8c]00x?' is not valid "
                                            r"Unicode text \(a lone surrogate, as from a \\ud800 escape, cannot be "
                                            r"written as UTF-8\); rename it\."):
        make_plan(folder)


def test_a_feature_name_from_a_scaler_that_is_not_unicode_text_is_refused(tmp_path):
    import numpy as np

    from convert.build import resolve_feature_names
    from convert.scaler import Scaler

    plan = make_plan(_hand_made_stacking(tmp_path / "models", ["a"], "weighted"))
    scaler = Scaler(tmp_path / "s.json", np.zeros(2), np.ones(2), ["\ud800x", "b"])
    with pytest.raises(MetadataError, match=r"s\.json: feature_names: '\\ud800x' is not valid Unicode text"):
        resolve_feature_names(plan, [], {scaler.file: scaler})


def test_the_manifest_writer_refuses_a_lone_surrogate_rather_than_escaping_it():
    from convert.errors import ConvertError

    with pytest.raises(ConvertError, match=r"would hold '\\udc00', which is not valid Unicode text"):
        mf.dumps({"classes": ["\udc00"]})


# --- attack report 3, H3: class and member names whose output columns collide built and loaded; predict CSV
# wrote two 'action' columns and score --members wrote p_m1_x once for two values

@pytest.mark.parametrize(("classes", "members", "clash"), [
    (["action", "symbol", "confidence"], ["m1"], "['action', 'confidence', 'symbol']"),
    (["x", "m1_x", "y"], ["m1"], "['m1_x', 'p_m1_x']"),
])
def test_class_and_member_names_whose_output_columns_collide_are_refused(tmp_path, classes, members, clash):
    from convert.errors import PlanError

    folder = _hand_made_stacking(tmp_path / "models", members, "weighted")
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["classes"] = classes
    (folder / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(PlanError, match=rf"ensemble\.json: classes .* name the output column\(s\) {re.escape(clash)} "
                                        r"more than once .*; rename a class or a member\."):
        make_plan(folder)


def test_class_names_whose_output_columns_do_not_collide_still_plan(tmp_path):
    folder = _hand_made_stacking(tmp_path / "models", ["m1"], "weighted")
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["classes"] = ["x", "m2_x", "p"]  # m2 is no member; 'p' gives p_p
    (folder / "ensemble.json").write_text(json.dumps(spec))
    assert make_plan(folder).classes == ["x", "m2_x", "p"]
