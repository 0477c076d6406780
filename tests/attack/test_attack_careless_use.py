"""Careless and hostile use, as issue 11 saw it: each test reproduces one thing that lost data, hung, ate
memory, scored a wrong answer with exit 0, or escaped as an undocumented exception, and proves it is now
refused by name (or fixed). Then a fuzz test holds `runtime` and `predict` to their documented errors."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from convert import manifest as mf
from convert.cli import main
from convert.demo import DEFAULT_STAMP, DemoSpec
from convert.errors import OutputError
from runtime.artifacts import ArtifactError, read_verified
from runtime.errors import InputError
from runtime.records import read_records, records_to_matrix

FEATURES = DemoSpec().feature_names
REPO = Path(__file__).resolve().parents[2]
# Runs the CLI in a child and reports its peak resident memory (KiB) on stderr at exit: VmHWM, the high-water
# mark of the child's own memory. Not ru_maxrss: Linux carries that across fork and exec, so a child of a large
# pytest process reports the parent's size.
PEAK_RUNNER = textwrap.dedent("""
    import atexit, resource, sys

    def peak_kb():
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def read_bytes():  # bytes the child read through read() calls, files and pipes alike (Linux's rchar)
        try:
            with open("/proc/self/io") as io:
                return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))
        except (OSError, StopIteration):
            return -1

    atexit.register(lambda: sys.stderr.write(f"\\nPEAK_RSS_KB={peak_kb()}\\nREAD_BYTES={read_bytes()}\\n"))
    from convert.cli import main
    main(sys.argv[1:], prog_name="ensemble-onnx")
""")


def invoke(*args: object, input: str | bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def run_child(*args: object, timeout: float = 120, cwd: Path | None = None) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MiB) of the CLI in a fresh interpreter; a hang fails the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PEAK_RUNNER, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    peak = [int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    return proc.returncode, proc.stderr, peak[-1] // 1024 if peak else -1


def bytes_read(stderr: str) -> int:
    """What a `run_child` read in all (its imports included), from its stderr; -1 where the OS does not say."""
    return next((int(line.split("=")[1]) for line in stderr.splitlines() if line.startswith("READ_BYTES=")), -1)


@pytest.fixture
def model_loads(monkeypatch) -> list[object]:
    """Every call of the build's model loading (convert.build.load_plan), recorded and passed through: "refused
    before any model was loaded" is a count of work done (none), not a time that depends on the machine."""
    import convert.build

    calls: list[object] = []
    real = convert.build.load_plan

    def load_plan(*args: object, **kwargs: object):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(convert.build, "load_plan", load_plan)
    return calls


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_file(models: Path, kind: str) -> Path:
    return next(models.glob(f"{kind}_{DEFAULT_STAMP}.*[!n]"))  # the model, not its _meta.json


def write_ensemble_json(models: Path, kinds: tuple[str, ...] = ("nhits", "patchtst", "xgboost", "lightgbm"),
                        text: str | None = None, **extra: object) -> Path:
    spec = {"feature_names": FEATURES, **extra, "members": {
        k: {"kind": k, "file": model_file(models, k).name, "scaler": f"scaler_{DEFAULT_STAMP}.pkl"} for k in kinds}}
    path = models / "ensemble.json"
    path.write_text(text if text is not None else json.dumps(spec, indent=2))
    return path


def refused(result, *names: str) -> str:
    """The CLI refused with exit 1, a message naming each of `names`, and no traceback."""
    message = result.output  # click >= 8.2: stdout and stderr interleaved
    assert result.exit_code == 1, message
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for name in names:
        assert name in message, (name, message)
    return message


# --- 1. data loss: `convert -o DIR` replaced whatever DIR was ----------------------------------------------

@pytest.mark.parametrize(("target", "why"), [
    ("unrelated", "not provably a previous ensemble-onnx build"),
    ("models", "the models folder"),
    ("parent", "an ancestor of the models folder"),
    ("cwd", "the current folder"),
    ("cwd-parent", "an ancestor of the current folder"),
    ("home", "your home folder"),
    ("parent-is-file", "is a file, not a folder"),
    ("symlink", "symbolic link"),
])
def test_convert_refuses_to_replace_what_it_did_not_write(models_copy, tmp_path, monkeypatch, model_loads, target,
                                                         why):
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "notes.txt").write_text("mine")
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (tmp_path / "plain").write_text("a file")
    (tmp_path / "link").symlink_to(unrelated)
    monkeypatch.chdir(work / "keep")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    out = {"unrelated": unrelated, "models": models_copy, "parent": tmp_path, "cwd": Path("."),
           "cwd-parent": Path(".."), "home": home,
           "parent-is-file": tmp_path / "plain" / "artifacts", "symlink": tmp_path / "link"}[target]
    before = {p: snapshot(p) for p in (models_copy, work, unrelated, home)}
    result = invoke("convert", models_copy, "-o", out)
    message = refused(result, "OutputError", why)
    assert "rebuilding" not in message and model_loads == []  # refused before any model was loaded
    assert {p: snapshot(p) for p in before} == before
    assert (tmp_path / "plain").read_text() == "a file"


def test_a_previous_build_is_replaced_and_the_folder_follows_the_umask(demo_models, demo_artifacts, tmp_path):
    out = Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))
    old = os.umask(0o027)
    try:
        result = invoke("convert", demo_models, "-o", out, "-q")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # mkdtemp's 0700 was the bug
    assert stat.S_IMODE((out / "members").stat().st_mode) == 0o750
    runtime.load(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".artifacts.")]  # nothing left beside it


@pytest.mark.parametrize(("change", "plain", "forced"), [
    pytest.param(lambda out: (out / "my-notes.txt").write_text("mine"),
                 "not a file its manifest.json lists", None, id="extra-file"),
    pytest.param(lambda out: (out / "ensemble.onnx").write_bytes(b"edited"),
                 None, None, id="edited-onnx"),  # a build that no longer verifies is still a build
    pytest.param(lambda out: (out / "manifest.json").write_text(json.dumps({"name": "my web app", "files": {}})),
                 "not an ensemble-onnx manifest", "not an ensemble-onnx manifest", id="foreign-manifest"),
    pytest.param(lambda out: (out / "manifest.json").unlink(),
                 "holds no manifest.json", "holds no manifest.json", id="no-manifest"),
])
def test_force_replaces_only_a_folder_whose_manifest_says_it_is_a_build(demo_artifacts, tmp_path, change, plain,
                                                                      forced):
    out = Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))
    change(out)
    for force, expect in ((False, plain), (True, forced)):
        if expect is None:
            mf.check_output(out, None, force)
        else:
            with pytest.raises(OutputError, match=expect):
                mf.check_output(out, None, force)


@pytest.mark.parametrize(("readme", "allowed"), [("shipped", True), ("edited", False)])
def test_a_fresh_clones_artifacts_folder_is_replaced_only_with_the_shipped_readme(tmp_path, readme, allowed):
    out = tmp_path / "artifacts"
    out.mkdir()
    text = mf.ARTIFACTS_README.read_bytes()
    (out / "README.md").write_bytes(text if readme == "shipped" else text + b"my notes\n")
    if allowed:
        mf.check_output(out)
    else:
        with pytest.raises(OutputError, match="holds no manifest.json"):
            mf.check_output(out)


def test_bench_refuses_to_write_into_an_artifacts_or_models_folder(demo_models, artifacts_copy):
    for out in (artifacts_copy, demo_models):
        before = snapshot(out)
        refused(invoke("bench", artifacts_copy, "--models", demo_models, "--out", out, "--quick", "-q"),
                "OutputError", str(out))
        assert snapshot(out) == before
    runtime.load(artifacts_copy)


# --- 7. the swap keeps a loadable folder at the path at every instant --------------------------------------

READER = textwrap.dedent("""
    # Looks at the folder in a tight loop: opens it, then reads its manifest through that handle. Counts
    # which build it saw, and every instant the path held no folder, or a folder without its manifest.
    import hashlib, json, os, sys, time
    out, stop, a, b = sys.argv[1:5]
    seen = {a: 0, b: 0, "missing": 0, "other": 0, "retired-while-read": 0}
    while not os.path.exists(stop):
        try:
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            seen["missing"] += 1
            continue
        try:
            mfd = os.open("manifest.json", os.O_RDONLY, dir_fd=fd)
            with os.fdopen(mfd, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            seen[digest if digest in seen else "other"] += 1
        except FileNotFoundError:
            # The folder this handle holds was swapped out and is being deleted: the path itself held the
            # new build all along. A folder still at the path without its manifest is the failure.
            try:
                still_there = os.fstat(fd).st_ino == os.stat(out).st_ino
            except FileNotFoundError:
                still_there = True  # nothing at the path at all
            seen["missing" if still_there else "retired-while-read"] += 1
        finally:
            os.close(fd)
    print(json.dumps(seen))
""")


def _variant(files: dict[str, bytes]) -> dict[str, bytes]:
    """Another valid build: parity.json changed, manifest re-hashed."""
    files = dict(files)
    files["parity.json"] = files["parity.json"].replace(b"{", b'{"variant": true, ', 1)
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["parity.json"] = hashlib.sha256(files["parity.json"]).hexdigest()
    files["manifest.json"] = mf.dumps(manifest)
    return files


def test_swap_keeps_a_loadable_folder_at_the_path_at_every_instant(demo_artifacts, tmp_path):
    old = snapshot(demo_artifacts)
    new = _variant(old)
    out, stop = tmp_path / "artifacts", tmp_path / "stop"
    mf.write_atomically(out, old)
    digest = {name: hashlib.sha256(files["manifest.json"]).hexdigest() for name, files in (("old", old), ("new", new))}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop), digest["old"], digest["new"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the reader is looping before the first swap
        for i in range(40):
            files = new if i % 2 == 0 else old
            mf.write_atomically(out, files)
            # What a service loading now gets: exactly the build just written, verified.
            ens = runtime.load(out) if i % 10 == 0 else None
            manifest, _ = read_verified(out)
            assert mf.dumps(manifest) == files["manifest.json"]
            assert ens is None or ens.manifest == manifest
    finally:
        stop.touch()
        counts = json.loads(reader.communicate(timeout=60)[0])
    assert counts["missing"] == 0 and counts["other"] == 0, counts
    assert counts[digest["old"]] > 0 and counts[digest["new"]] > 0, counts  # it did watch both builds
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".artifacts.")]


def test_without_renameat2_the_two_renames_still_leave_a_complete_build(demo_artifacts, tmp_path, monkeypatch):
    """The documented fallback (not Linux, or a filesystem refusing RENAME_EXCHANGE) still swaps whole."""
    monkeypatch.setattr(mf, "_renameat2", lambda: None)
    old = snapshot(demo_artifacts)
    out = tmp_path / "artifacts"
    mf.write_atomically(out, old)
    mf.write_atomically(out, _variant(old))
    assert snapshot(out) == _variant(old)
    runtime.load(out)


# --- 2. repeated fields were scored last-wins --------------------------------------------------------------

def _row_text(repeat: str | None = None) -> str:
    fields = [f'"{n}": {i / 10}' for i, n in enumerate(FEATURES)]
    if repeat:
        fields.append(f'"{repeat}": 99.0')
    return "{" + ", ".join(fields) + "}\n"


def test_a_feature_repeated_in_a_json_line_is_refused_naming_it_and_the_line(demo_artifacts):
    text = _row_text() + _row_text("rsi_14")
    refused(invoke("predict", demo_artifacts, input=text), "InputError", "line 2", "rsi_14")
    with pytest.raises(InputError, match="line 2.*rsi_14"):
        read_records(text)


def test_a_column_repeated_in_a_csv_header_is_refused(demo_artifacts):
    header = ",".join(FEATURES + ["rsi_14"])
    text = header + "\n" + ",".join(["0.5"] * (len(FEATURES) + 1)) + "\n"
    refused(invoke("predict", demo_artifacts, "--format", "csv", input=text), "line 1", "rsi_14")


def test_a_key_repeated_in_manifest_json_is_refused(artifacts_copy):
    path = artifacts_copy / "manifest.json"
    path.write_text(path.read_text().replace('"classes": [', '"classes": ["BUY", "HOLD", "SELL"],\n  "classes": [', 1))
    with pytest.raises(ArtifactError, match="'classes' is written twice"):
        runtime.load(artifacts_copy)


# --- 3. configurations that passed the gate and served nonsense ---------------------------------------------

def _spec(models: Path, **changes: object) -> dict:
    spec = json.loads(write_ensemble_json(models).read_text())
    spec.update(changes)
    return spec


def _weights(nhits: float, patchtst: float):
    def edit(spec: dict, models: Path) -> str:
        spec["members"]["nhits"]["weight"], spec["members"]["patchtst"]["weight"] = nhits, patchtst
        return json.dumps(spec, indent=2)
    return edit


def _meta_as_folder(spec: dict, models: Path) -> str:
    meta = models / f"nhits_{DEFAULT_STAMP}_meta.json"
    meta.unlink()
    meta.mkdir()
    return json.dumps(spec, indent=2)


# (how ensemble.json is spoiled: the spec and the models folder -> the text written) -> what the refusal names
@pytest.mark.parametrize(("edit", "names"), [
    pytest.param(_weights(1e308, 1e308), ["sum to inf"], id="weights-overflow"),
    pytest.param(lambda spec, models: json.dumps(spec).replace('"kind": "nhits",',
                                                               '"kind": "nhits", "weight": ' + "9" * 400 + ","),
                 ["members.nhits.weight"], id="weight-400-digits"),
    pytest.param(_weights(1e-320, 1e10), ["weight 0"], id="weight-vanishes"),
    pytest.param(lambda spec, models: json.dumps({**spec, "feature_names": [*FEATURES[:-1], "rsi_14"]}, indent=2),
                 ["feature_names", "rsi_14", "more than once"], id="feature-names-repeated"),
    pytest.param(lambda spec, models: json.dumps(spec, indent=2).replace('"lightgbm": {', '"xgboost": {', 1),
                 ["line 38", "'xgboost' is written twice"], id="member-written-twice"),
    pytest.param(lambda spec, models: json.dumps({**spec, "decision": {"temperature": {"nhits": 1e-300}}}, indent=2),
                 ["decision.temperature.nhits", "from 0.01 to 100"], id="temperature-1e-300"),
    pytest.param(lambda spec, models: '{"members": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 ["nested too deeply"], id="deeply-nested"),
    pytest.param(_meta_as_folder, ["metadata of member 'nhits'", "a folder"], id="fifo-free-but-folder-meta"),
])
def test_bad_ensemble_json_is_refused_before_any_model_is_loaded(models_copy, tmp_path, model_loads, edit, names):
    write_ensemble_json(models_copy, text=edit(_spec(models_copy), models_copy))
    message = refused(invoke("convert", models_copy, "-o", tmp_path / "out"), *names)
    assert "rebuilding" not in message and model_loads == [], message
    assert not (tmp_path / "out").exists()


def test_feature_names_repeated_in_member_metadata_are_refused(models_copy, tmp_path):
    meta = models_copy / f"nhits_{DEFAULT_STAMP}_meta.json"
    data = json.loads(meta.read_text())
    data["feature_names"] = [*FEATURES[:-1], "rsi_14"]
    meta.write_text(json.dumps(data))
    refused(invoke("convert", models_copy, "-o", tmp_path / "out", "--only", "nhits"),
            "MetadataError", meta.name, "rsi_14", "more than once")


def test_a_key_repeated_in_metadata_is_refused_with_its_line(models_copy, tmp_path):
    meta = models_copy / f"nhits_{DEFAULT_STAMP}_meta.json"
    meta.write_text('{\n  "num_features": 18,\n  "num_features": 30000\n}\n')
    refused(invoke("convert", models_copy, "-o", tmp_path / "out", "--only", "nhits"),
            meta.name, "line 3", "'num_features' is written twice")


def test_a_zero_tree_xgboost_is_a_named_build_error(tmp_path):
    import xgboost

    models = tmp_path / "models"
    models.mkdir()
    rng = np.random.default_rng(0)
    data = xgboost.DMatrix(rng.standard_normal((60, len(FEATURES))), label=rng.integers(0, 3, 60))
    xgboost.train({"objective": "multi:softprob", "num_class": 3}, data, num_boost_round=0).save_model(
        models / "zero.json")
    (models / "ensemble.json").write_text(json.dumps({"feature_names": FEATURES, "members": {
        "xgb": {"kind": "xgboost", "file": "zero.json", "scaler": None}}}))
    refused(invoke("convert", models, "-o", tmp_path / "out"), "zero.json")


# --- 4 and 5. hangs and memory bombs ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["ensemble.json", "metadata", "parity-data", "calibrate", "reference-data", "model"])
def test_a_fifo_is_refused_not_waited_on(models_copy, tmp_path, where):
    fifo = {"ensemble.json": models_copy / "ensemble.json",
            "metadata": models_copy / f"nhits_{DEFAULT_STAMP}_meta.json",
            "parity-data": tmp_path / "rows.csv", "calibrate": tmp_path / "labelled.csv",
            "reference-data": tmp_path / "reference.csv", "model": models_copy / f"nhits_{DEFAULT_STAMP}.pth"}[where]
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    extra = {"parity-data": ["--parity-data", fifo], "calibrate": ["--calibrate", fifo],
             "reference-data": ["--reference-data", fifo]}.get(where, [])
    code, err, _ = run_child("convert", models_copy, "-o", tmp_path / "out", *extra, timeout=60)
    assert code == 1 and "a FIFO" in err and fifo.name in err and "Traceback" not in err, err


def test_a_stride_0_tensor_is_refused_before_any_module_is_built(models_copy, tmp_path):
    import torch

    pth = models_copy / f"nhits_{DEFAULT_STAMP}.pth"
    state = torch.load(pth, weights_only=True)
    state["stacks.0.0.weight"] = torch.zeros(1).expand(30000, len(FEATURES))  # 2.9 KB on disk
    torch.save(state, pth)
    code, err, peak_mib = run_child("convert", models_copy, "-o", tmp_path / "out", "--only", "nhits")
    assert code == 1 and "StateDictError" in err and "stacks.0.0.weight" in err and "stride" in err, err
    assert 0 < peak_mib < 1024, peak_mib  # torch itself is ~400 MiB; the 30,000-wide N-HiTS needed gigabytes


@pytest.mark.parametrize(("kind", "suffix"), [("lightgbm", ".txt"), ("nhits", ".pth")])
def test_a_huge_model_file_is_refused_by_size_without_being_read(models_copy, tmp_path, kind, suffix):
    big = models_copy / f"{kind}_v29990101_000000_v1{suffix}"  # the newest stamp: discovery picks it
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)  # sparse: 2 GiB long, nothing on disk
    code, err, peak_mib = run_child("convert", models_copy, "-o", tmp_path / "out")
    assert code == 1 and big.name in err and "limit" in err and "ENSEMBLE_ONNX_MAX_MODEL_BYTES" in err, err
    # Not read: the whole run (torch's import is ~60 MiB of it) reads far less than the 1 GiB limit, let alone
    # the 2 GiB file, and stays small.
    read = bytes_read(err)  # -1 only where the OS keeps no count (not Linux)
    assert (0 < read < 256 << 20 or read == -1 != sys.platform.startswith("linux")) and 0 < peak_mib < 1024, (
        read, peak_mib)


@pytest.mark.parametrize("limit", [10**30, 100 * 10**9])
def test_a_raised_limit_of_any_size_reads_the_file_in_chunks(tmp_path, monkeypatch, limit):
    # read(limit + 1) reserved the whole limit: OverflowError past the index size, MemoryError at 100 GB.
    from convert.loaders import read_checked

    path = tmp_path / "small.json"
    path.write_bytes(b'{"a": 1}')
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", str(limit))
    assert read_checked(path, "json", "metadata") == b'{"a": 1}'


def test_the_size_limit_is_configurable(models_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", "10")
    refused(invoke("convert", models_copy, "-o", tmp_path / "out"), "_meta.json", "10-byte limit")


# --- 6. undocumented exceptions ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


def _row(**changes: object) -> dict:
    return {**{n: 0.5 for n in FEATURES}, **changes}


@pytest.mark.parametrize(("rows", "match"), [
    (_row(rsi_14=10**400), "rsi_14.*too large"),
    ([_row(macd=-(10**400))], "macd.*too large"),
    ([_row(macd=10**5000)], "macd.*too large"),
    ([[0.5] * (len(FEATURES) - 1) + [10**400]], "adx_14.*too large"),
    (np.ma.masked_array(np.zeros((2, len(FEATURES))), mask=np.eye(2, len(FEATURES), dtype=bool)), "masked"),
    (json.loads("[" * 70 + "1" + "]" * 70),
     "shape|2-D|rectangular"),
])
def test_runtime_raises_only_input_error(ens, rows, match):
    with pytest.raises(InputError, match=match):
        ens.predict(rows)
    named = isinstance(rows, dict) or isinstance(rows[0], dict)
    with pytest.raises(InputError, match="shape" if named else match):  # predict_proba takes arrays only
        ens.predict_proba(rows)


@pytest.mark.parametrize(("text", "names"), [
    (_row_text().replace('"rsi_14": 0.0', '"rsi_14": ' + "9" * 400), ["line 1", "rsi_14", "too large"]),
    ('{"rsi_14": ' + "9" * 5000 + "}\n", ["line 1"]),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n", ["line 1", "nested too deeply"]),
    ("rsi_14,macd\n1,\x002\n", []),
])
def test_predict_exits_1_on_hostile_text(demo_artifacts, text, names):
    refused(invoke("predict", demo_artifacts, input=text), "InputError", *names)


def test_predict_refuses_a_non_utf8_csv(demo_artifacts, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(",".join(FEATURES).encode() + b"\n" + b"\xe9t\xe9," * (len(FEATURES) - 1) + b"1\n")
    refused(invoke("predict", demo_artifacts, "--input", rows, "--format", "csv"), "not UTF-8", "line 2")
    refused(invoke("predict", demo_artifacts, input=rows.read_bytes()), "stdin", "not UTF-8")


def test_parity_data_that_is_not_utf8_is_refused_before_loading(models_copy, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"\xff\xfe" + ",".join(FEATURES).encode("utf-16-le"))
    message = refused(invoke("convert", models_copy, "-o", tmp_path / "out", "--parity-data", rows),
                      "MetadataError", "rows.csv", "not UTF-8")
    assert "rebuilding" not in message


def test_predict_with_stdin_closed_exits_1(demo_artifacts):
    proc = subprocess.run([sys.executable, "-m", "convert.cli", "predict", str(demo_artifacts)], capture_output=True,
                          text=True, check=False, timeout=60, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1 and "stdin is closed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: {**m, "files": list(m["files"])}, "'files' must be an object"),
    (lambda m: {**m, "opsets": 17}, "'opsets' must be an object"),
    (lambda m: {**m, "ensemble": ["ensemble.onnx"]}, "'ensemble' must be an object"),
])
def test_a_malformed_manifest_is_an_artifact_error(artifacts_copy, edit, match):
    path = artifacts_copy / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ArtifactError, match=match):
        runtime.load(artifacts_copy)


def test_a_deeply_nested_manifest_is_an_artifact_error(artifacts_copy):
    (artifacts_copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        runtime.load(artifacts_copy)
    refused(invoke("predict", artifacts_copy, input=_row_text()), "ArtifactError", "manifest.json")


# --- the fuzz test: arbitrary JSON and CSV get a prediction or a documented error ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats()
    | st.text(max_size=8) | st.sampled_from(FEATURES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FEATURES) | st.text(max_size=6),
                                                                 inner, max_size=4),
    max_leaves=30)
rowlike = st.fixed_dictionaries({n: st.floats(-1e6, 1e6) for n in FEATURES}) | st.lists(
    st.fixed_dictionaries({n: st.floats() | st.integers() for n in FEATURES}), min_size=1, max_size=3)


def _not_a_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    try:
        return not math.isfinite(float(value))
    except OverflowError:  # an integer of hundreds of digits
        return True


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def culprit(rows: object, allow_nan: bool = False) -> tuple[int, list[str]] | None:
    """What a refusal of named rows must name, worked out from the rows alone: (the row at fault, the names of
    which the message holds one), or None where every row is complete and numeric. Rows are checked in order,
    each for its names before its values, as docs/runtime.md says."""
    rows = [rows] if isinstance(rows, dict) else rows
    for r, row in enumerate(rows):  # type: ignore[arg-type]
        wrong = [n for n in FEATURES if n not in row] + [k for k in row if k not in FEATURES and k != "symbol"]
        if wrong:
            return r, wrong
        bad = [n for n in FEATURES if _not_a_number(row[n]) and not (allow_nan and _is_nan(row[n]))]
        if bad:
            return r, bad[:1]
    return None


def outside_domain(ens, rows: object) -> tuple[int, list[str]] | None:
    """For complete numeric rows: (the first row holding a value outside the build's domain, the features it
    holds outside), worked out from manifest.json's `domain` alone; None where every value is inside."""
    domain = ens.manifest.get("domain")
    if not domain:
        return None
    rows = [rows] if isinstance(rows, dict) else rows
    for r, row in enumerate(rows):  # type: ignore[arg-type]
        out = outside_row(ens, row)
        if out:
            return r, out
    return None


def outside_row(ens, row: dict) -> list[str]:
    """The features of one named numeric row the build's domain refuses: a finite value outside its range, or
    NaN where the domain takes none."""
    domain = ens.manifest.get("domain")
    if not domain:
        return []
    return [n for n, lo, hi, nan in zip(ens.feature_names, domain["lo"], domain["hi"], domain["nan"], strict=True)
            if n in row and ((_is_nan(row[n]) and not nan)
                             or (not _not_a_number(row[n]) and not lo <= float(row[n]) <= hi))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=json_values | rowlike)
def test_fuzz_runtime_raises_only_documented_errors(ens, rows):
    named = isinstance(rows, dict) or (isinstance(rows, list) and rows != [] and all(isinstance(r, dict) for r in rows))
    # The order docs/runtime.md gives: each row's names, then its values as numbers (NaN passes where the build
    # has a domain), then the domain over the whole input: the first row with a value outside its range or a
    # NaN where a member takes none.
    takes_nan = bool(ens.manifest.get("domain"))
    expected = culprit(rows, allow_nan=takes_nan) if named else None
    if named and expected is None:
        expected = outside_domain(ens, rows)
    try:
        out = ens.predict(rows)
    except InputError as exc:
        message = str(exc)
        if named and expected is None:  # complete numeric rows so large that a member overflows: that row named
            assert "produced non-finite probabilities" in message and f"row {exc.row}:" in message, message
        elif named:  # the refusal names the row and a feature at fault, and says which row in .row
            row, names = expected
            assert f"row {row}" in message and exc.row == row, (message, exc.row, expected)
            assert any(repr(n) in message or f"'{n}'" in message for n in names), (message, names)
        else:  # anything but named rows or an (n, 18) array: the message says what the rows must be
            assert re.search(r"rows must be|features must|no rows", message), message
    else:
        assert named and expected is None, rows
        assert len(out) == (1 if isinstance(rows, dict) else len(rows))
    try:
        probabilities = ens.predict_proba(rows)
    except InputError as exc:  # (n, 18) numbers only: named rows are for predict
        assert re.search(r"features must|row \d+, feature|no rows", str(exc)), str(exc)
    else:
        assert probabilities.shape == (len(rows), len(ens.classes)), rows


cell = st.one_of(st.floats().map(repr), st.integers().map(str), st.text(max_size=6),
                 st.just("9" * 400), st.just("\x00"), st.just('"'))
csv_text = st.builds(lambda header, rows: "\n".join([",".join(header)] + [",".join(r) for r in rows]),
                     st.lists(st.sampled_from(FEATURES) | st.text(max_size=5), min_size=1, max_size=20),
                     st.lists(st.lists(cell, min_size=0, max_size=20), max_size=3))
jsonl_text = st.lists(json_values.map(json.dumps) | st.text(max_size=30), min_size=1, max_size=3).map("\n".join)
valid_csv = st.lists(st.lists(st.floats(-1e3, 1e3), min_size=len(FEATURES), max_size=len(FEATURES)),
                     min_size=1, max_size=3).map(
    lambda rows: "\n".join([",".join(FEATURES)] + [",".join(map(repr, r)) for r in rows]))


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_text | jsonl_text | valid_csv | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_fuzz_predict_reads_any_text_into_rows_or_input_error(ens, demo_artifacts, text):
    try:
        predictions = ens.predict(records_to_matrix(read_records(text), ens.feature_names))
    except InputError:
        predictions = None
    result = invoke("predict", demo_artifacts, input=text.encode("utf-8"))
    assert result.exit_code in (0, 1) and isinstance(result.exception, (SystemExit, type(None))), (
        repr(result.exception), result.output)
    assert (result.exit_code == 0) == (predictions is not None), result.output
    if predictions is not None:
        assert [json.loads(line)["action"] for line in result.output.splitlines()] == [p.action for p in predictions]


def test_predict_refuses_an_endless_input_instead_of_reading_it_all(demo_artifacts):
    """`--input /dev/zero` used to read until the memory ran out; now it stops one byte past the limit."""
    env = {**os.environ, "ENSEMBLE_ONNX_MAX_INPUT_BYTES": "4096"}
    proc = subprocess.run([sys.executable, "-m", "convert.cli", "predict", str(demo_artifacts), "--input", "/dev/zero"],
                          capture_output=True, text=True, check=False, timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "/dev/zero: more than 4,096 bytes" in proc.stderr and "ensemble-onnx score" in proc.stderr


@pytest.mark.parametrize(("limit", "refused_at"), [(len(b'{"x": 1}\n') - 1, True), (len(b'{"x": 1}\n'), False)])
def test_predict_input_limit_is_exact_and_raisable(demo_artifacts, monkeypatch, limit, refused_at):
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", str(limit))
    result = invoke("predict", demo_artifacts, input='{"x": 1}\n')
    assert result.exit_code == 1
    assert ("stdin: more than" in result.output) == refused_at, result.output  # else: the row's features are named


@pytest.mark.parametrize(("raw", "problem"), [("abc", "is not a whole number"), ("1e3", "is not a whole number"),
                                              ("0", "must be above 0"), ("-5", "is not a whole number")])
def test_a_size_limit_that_is_not_a_positive_whole_number_is_refused_in_each_family(monkeypatch, raw, problem):
    from convert.errors import ConvertError
    from convert.loaders import file_limit
    from runtime.limits import read_limited

    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_MODEL_BYTES", raw)
    with pytest.raises(ConvertError, match=f"ENSEMBLE_ONNX_MAX_MODEL_BYTES='{re.escape(raw)}' {problem}"):
        file_limit("model")
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", raw)
    with pytest.raises(InputError, match=f"ENSEMBLE_ONNX_MAX_INPUT_BYTES='{re.escape(raw)}' {problem}"):
        read_limited(io.BytesIO(b"{}\n"), "rows")


# N3: a build convert completes must load: manifest.json stays under the JSON limit the runtime reads it under.
CYRILLIC_NAME = "признак_" * 12  # 96 characters, 2 bytes each in UTF-8, 6 as a \uXXXX escape


def _named(manifest: dict, count: int) -> dict:
    return {**manifest, "feature_names": [f"{CYRILLIC_NAME}{i}" for i in range(count)]}


def test_manifest_of_2200_long_cyrillic_names_fits_the_json_limit(demo_artifacts):
    from runtime.limits import MAX_JSON_BYTES

    manifest = json.loads((demo_artifacts / "manifest.json").read_bytes())
    data = mf.dumps(_named(manifest, 2200))  # the attack's ensemble: 1,146,452 bytes written as ASCII escapes
    assert len(data) < MAX_JSON_BYTES
    assert CYRILLIC_NAME.encode() in data  # written as UTF-8 text, not escaped


def test_manifest_over_the_json_limit_is_refused_before_writing_naming_the_variable(demo_artifacts, monkeypatch):
    from convert.errors import ConvertError

    manifest = _named(json.loads((demo_artifacts / "manifest.json").read_bytes()), 6000)
    monkeypatch.delenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", raising=False)
    with pytest.raises(ConvertError) as caught:
        mf.manifest_bytes(manifest)
    message = str(caught.value)
    assert "over the 1,048,576-byte limit" in message and "6,000 feature names" in message
    assert "ENSEMBLE_ONNX_MAX_JSON_BYTES" in message and "every process that loads it" in message
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", str(4 << 20))  # raised for the build: written whole
    assert json.loads(mf.manifest_bytes(manifest)) == manifest


def test_non_ascii_feature_names_written_by_convert_load_and_keep_the_build_id(demo_artifacts, tmp_path):
    """The file is UTF-8 text and the digests are over canonical (ASCII-escaped) JSON: the two agree."""
    from forge import rebound

    renamed = [f"{CYRILLIC_NAME}{i}" for i in range(len(FEATURES))]

    def edit(manifest: dict) -> None:
        manifest["feature_names"] = renamed

    def edit_statistics(statistics: dict) -> None:
        statistics["features"] = {new: statistics["features"][old] for old, new in zip(FEATURES, renamed, strict=True)}

    folder = rebound(demo_artifacts, tmp_path / "cyrillic", edit, edit_statistics)
    manifest = json.loads((folder / "manifest.json").read_bytes())
    (folder / "manifest.json").write_bytes(mf.manifest_bytes(manifest))  # as convert writes it
    assert CYRILLIC_NAME.encode() in (folder / "manifest.json").read_bytes()
    ens = runtime.load(folder)
    assert list(ens.feature_names) == renamed and ens.build_id == runtime.contract.build_id(manifest)
