"""The artifacts folder's edges (`runtime/__init__.py`, `runtime/artifacts.py`), each pinned by a test a small
deliberate bug would fail: what `make mutation` found the runtime tests did not check. What callers hand in:
test_features.py. Runtime only (numpy + onnxruntime): marked `slim` like test_serving.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import runtime
from runtime.artifacts import REBUILD, _check_onnxruntime

pytestmark = pytest.mark.slim


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


@pytest.fixture
def folder(demo_artifacts, tmp_path):
    return Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))


def edit_manifest(folder: Path, **changes) -> Path:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = manifest
        for p in parents:
            target = target[p]
        target[key] = value
    path.write_text(json.dumps(manifest))
    return path


def test_describe_reports_exactly_what_the_manifest_says(ens, demo_artifacts):
    m = json.loads((demo_artifacts / "manifest.json").read_text())
    assert ens.describe() == {
        "path": str(demo_artifacts), "schema_version": m["schema_version"], "classes": m["classes"],
        "feature_names": m["feature_names"], "combine": m["combine"]["method"],
        "members": {n: {"kind": m["members"][n]["kind"], "weight": m["members"][n]["weight"],
                        "source_sha256": m["members"][n]["source"]["sha256"]} for n in m["ensemble"]["members"]},
        "decision": m["decision"], "precision": m["precision"], "files": m["files"], "parity": m["parity"],
        "build_libraries": m["libraries"], "onnxruntime": ort.__version__,
        "build_id": hashlib.sha256(json.dumps(m, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
        "host": ens.describe()["host"]}
    assert list(ens.describe()["members"]) == m["ensemble"]["members"]
    assert set(ens.describe()["host"]) >= {"model", "instruction_sets"}


def test_a_manifest_without_its_precision_and_policy_is_refused_by_field(folder):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["precision"], manifest["decision"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{path}: field '") + "(decision|precision)"):
        runtime.load(folder)


def test_load_keeps_the_path_and_the_callers_session_options(demo_artifacts):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 1
    ens = runtime.load(demo_artifacts, options)
    assert ens.path == str(demo_artifacts)
    assert ens._session.get_session_options().intra_op_num_threads == 1
    assert ens._session.get_session_options().log_severity_level == 1
    assert ens._session.get_providers() == ["CPUExecutionProvider"]
    default = ort.SessionOptions().log_severity_level
    assert runtime.load(demo_artifacts)._session.get_session_options().log_severity_level == default


def test_an_ensemble_graph_onnxruntime_cannot_load_is_named(folder):
    graph = b"not an onnx graph"
    (folder / "ensemble.onnx").write_bytes(graph)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(graph).hexdigest()
    path.write_text(json.dumps(manifest))
    # Not even protobuf: refused while reading the graph's own record of its build, before onnxruntime sees it.
    graph_path = folder / "ensemble.onnx"
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{graph_path}: not a readable ONNX model")):
        runtime.load(folder)


@pytest.mark.parametrize(("field", "value"), [("input", "x"), ("outputs", ["probabilities", "label"])])
def test_a_graph_whose_inputs_or_outputs_differ_from_the_manifest_is_named(folder, field, value):
    edit_manifest(folder, **{f"ensemble__{field}": value})
    # The graph carries the manifest it was built for: the edit is refused by field.
    with pytest.raises(runtime.ArtifactError,
                       match=re.escape(f"{folder / 'manifest.json'}: field 'ensemble.{field}' differs")):
        runtime.load(folder)


def test_zero_rows_are_refused_by_name(ens):
    with pytest.raises(runtime.InputError, match="^no rows to score.$"):
        ens.predict_proba(np.zeros((0, len(ens.feature_names))))


# --- read_verified: each refusal names the file or field -----------------------------------------------------

def test_a_path_that_is_no_folder_is_named(tmp_path):
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{tmp_path / 'nowhere'}: not an artifacts folder")):
        runtime.load(tmp_path / "nowhere")


def test_a_symlinked_manifest_is_refused_by_name(folder):
    (folder / "manifest.json").rename(folder.parent / "elsewhere.json")
    (folder / "manifest.json").symlink_to(folder.parent / "elsewhere.json")
    with pytest.raises(runtime.ArtifactError, match="'manifest.json' is not a regular file"):
        runtime.load(folder)


def test_a_symlinked_member_file_is_refused_by_its_manifest_name(folder):
    (folder / "members" / "nhits.onnx").rename(folder.parent / "n.onnx")
    (folder / "members" / "nhits.onnx").symlink_to(folder.parent / "n.onnx")
    with pytest.raises(runtime.ArtifactError, match="'members/nhits.onnx' is not a regular file"):
        runtime.load(folder)


def test_a_linked_folder_on_the_way_to_a_listed_file_is_refused_by_name(folder):
    (folder / "members").rename(folder.parent / "members-elsewhere")
    (folder / "members").symlink_to(folder.parent / "members-elsewhere", target_is_directory=True)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    # Refused when first reached, before any file under the link is read (the fallback without dir_fd reads
    # through the link, then refuses the link as unlisted).
    assert re.fullmatch(re.escape(f"{folder / 'members'}: 'members' (on the way to 'members/") + r"\w+\.onnx'\) is "
                        + re.escape(f"not a folder (a link or a file); {REBUILD}."), str(err.value)), str(err.value)


def test_without_dir_fd_files_are_read_by_path_with_the_same_refusals(folder, monkeypatch, tmp_path):
    import runtime.artifacts

    expected = runtime.load(folder).manifest
    monkeypatch.setattr(runtime.artifacts, "_AT", False)  # what a platform without openat(2) runs
    assert runtime.load(folder).manifest == expected
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(tmp_path / "nowhere")
    assert str(err.value) == f"{tmp_path / 'nowhere'}: not an artifacts folder; {REBUILD}."
    (folder / "members" / "nhits.onnx").rename(folder.parent / "n.onnx")
    (folder / "members" / "nhits.onnx").symlink_to(folder.parent / "n.onnx")
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / 'members' / 'nhits.onnx'}: 'members/nhits.onnx' is not a regular file (a "
                              f"link); {REBUILD}.")


@pytest.mark.parametrize(("text", "match"), [
    ("[1, 2]", r"field '\(top level\)' must be an object, got list"),
    ('{"schema_version": 1}', r"field 'feature_names' is missing"),
])
def test_a_manifest_without_its_fields_names_them(folder, text, match):
    (folder / "manifest.json").write_text(text)
    with pytest.raises(runtime.ArtifactError, match=re.escape(str(folder / "manifest.json")) + ": " + match):
        runtime.load(folder)


@pytest.mark.parametrize("opsets", [{"ai.onnx": 17, "ai.onnx.ml": 3, "com.example": 1}, {"ai.onnx": "17"}])
def test_an_unknown_opset_domain_or_version_is_refused(folder, opsets):
    edit_manifest(folder, opsets=opsets)
    with pytest.raises(runtime.ArtifactError, match="field 'opsets"):
        runtime.load(folder)


LONG = "k" * 100_000


@pytest.mark.parametrize(("edit", "says"), [
    (lambda m: m["decision"]["temperature"].__setitem__(LONG, 1.0),
     "field 'decision.temperature." + "k" * 79 + "... (100021 characters)' names no member"),
    (lambda m: m["decision"]["min_confidence"].__setitem__(LONG, 0.5),
     "field 'decision.min_confidence." + "k" * 76 + "... (100024 characters)' names no class"),
    (lambda m: m["files"].__setitem__("../" + LONG, "0" * 64),
     "file entry '../" + "k" * 36 + "... (100003 characters) points outside the folder"),
    (lambda m: m.__setitem__(LONG, 1), "field '" + "k" * 100 + "... (100000 characters)' differs from the build"),
    (lambda m: m["members"].__setitem__(LONG, m["members"]["xgboost"]),
     "field 'ensemble.members' must name each of members ['" + "k" * 39 + "... (100000 characters), 'lightgbm', "
     "'nhits', 'patchtst', 'xgboost'] once"),
])
def test_a_long_manifest_key_is_cut_short_in_the_refusal(folder, edit, says):
    # Keys become field paths and lists in messages: each of these printed a 100,000-character message.
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert says in str(err.value) and len(str(err.value)) < 500, str(err.value)[:600]


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside.json", "members/../../outside.json"])
def test_a_file_entry_outside_the_folder_is_refused(folder, entry):
    (folder.parent / "outside.json").write_text("{}")
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][entry] = hashlib.sha256(b"{}").hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"file entry '{entry}' points outside the folder")):
        runtime.load(folder)


def test_an_ensemble_file_that_is_not_verified_is_refused(folder):
    edit_manifest(folder, ensemble__file="members/absent.onnx")
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / 'manifest.json'}: field 'ensemble.file'")):
        runtime.load(folder)


# --- the onnxruntime a build needs ----------------------------------------------------------------------------

HERE = ".".join(ort.__version__.split(".")[:2])
NEXT = f"{ort.__version__.split('.')[0]}.{int(ort.__version__.split('.')[1]) + 1}"


@pytest.mark.parametrize("needs", [None, "", HERE, f"{HERE}.9", "1.0"])
def test_an_onnxruntime_at_or_above_the_requirement_serves(needs):
    _check_onnxruntime({"precision": {"weights": "int8", "min_onnxruntime": needs}}, Path("m.json"))
    _check_onnxruntime({}, Path("m.json"))


@pytest.mark.parametrize("needs", [NEXT, "99.0", f"{int(HERE.split('.')[0]) + 1}.0"])
def test_an_onnxruntime_below_the_requirement_is_refused_by_field(needs):
    with pytest.raises(runtime.ArtifactError, match=re.escape(
            f"m.json: field 'precision' says these int8 weights need onnxruntime>={needs}; this host has "
            f"{ort.__version__}. Upgrade onnxruntime, or serve a --precision fp32 build.")):
        _check_onnxruntime({"precision": {"weights": "int8", "min_onnxruntime": needs}}, Path("m.json"))


def test_a_requirement_that_is_no_version_is_refused_by_field(folder):
    edit_manifest(folder, precision={"weights": "int8", "min_onnxruntime": "one.two"})
    with pytest.raises(runtime.ArtifactError, match=re.escape(
            f"{folder / 'manifest.json'}: field 'precision.min_onnxruntime' is 'one.two', not a version")):
        runtime.load(folder)


def test_load_checks_the_requirement_and_names_the_manifest(folder):
    edit_manifest(folder, precision={"weights": "int8", "min_onnxruntime": "99.0"})
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / 'manifest.json'}: field 'precision'")):
        runtime.load(folder)


def test_a_precision_edited_after_the_build_is_refused_by_field(folder):
    precision = {"weights": "int8", "scheme": "test", "min_agreement": 0.99, "min_onnxruntime": "1.22"}
    edit_manifest(folder, precision=precision)
    with pytest.raises(runtime.ArtifactError, match="field 'precision"):
        runtime.load(folder)


# --- what stands at a listed path, and what else the folder holds ---------------------------------------------

@pytest.mark.parametrize("rel", ["README.md", "manifest.json", "manifest.sig", "members/nhits.onnx"])
def test_a_folder_in_place_of_a_listed_file_is_refused_by_name(folder, rel):
    # Found: os.fdopen raised IsADirectoryError before the fstat check ran ("internal error" from every command).
    (folder / rel).unlink(missing_ok=True)
    (folder / rel).mkdir()
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == f"{folder / rel}: '{rel}' is not a regular file (a folder); {REBUILD}."


@pytest.mark.parametrize("entry", ["", ".", "a\0b", "members/", "members//nhits.onnx", "./README.md"])
def test_a_file_entry_that_is_no_plain_path_inside_the_folder_is_refused(folder, entry):
    # Found: "" and "." crashed unpacking the path's parts, a NUL in os.open: ValueError, not ArtifactError.
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][entry] = hashlib.sha256(b"").hexdigest()
    path.write_text(json.dumps(manifest))  # `files` is bound by hashes, not into the graph: no re-binding needed
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{path}: file entry {entry!r} is not a path inside the folder (names joined by '/', "
                              f"none empty, '.' or '..', no NUL); {REBUILD}.")


def test_a_listed_fifo_is_refused_by_its_kind_without_being_opened(folder):
    import threading

    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")
    opened = threading.Event()

    def writer() -> None:  # open(2) of a FIFO for writing returns only once a reader has opened it
        with open(folder / "README.md", "wb"):
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
        assert str(err.value) == f"{folder / 'README.md'}: 'README.md' is not a regular file (a FIFO); {REBUILD}."
        assert not opened.wait(0.2), "the load opened the FIFO before refusing it"
    finally:
        os.close(os.open(folder / "README.md", os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        thread.join(5)


def test_a_listed_socket_or_device_is_refused_by_its_kind(folder, monkeypatch):
    import socket
    import stat

    (folder / "README.md").unlink()
    monkeypatch.chdir(folder)  # a socket's path is limited to ~100 bytes: bind it by its relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("README.md")
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
    assert str(err.value) == f"{folder / 'README.md'}: 'README.md' is not a regular file (a socket); {REBUILD}."
    (folder / "README.md").unlink()
    try:
        os.mknod(folder / "README.md", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD (root)")
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / 'README.md'}: 'README.md' is not a regular file (a character device); "
                              f"{REBUILD}.")


def test_folders_nested_past_the_depth_limit_are_refused_naming_the_first_too_deep(folder):
    # Found: os.fwalk recursed once per level: 1,200 nested empty folders raised RecursionError.
    from runtime.artifacts import MAX_FOLDER_DEPTH

    at = os.open(folder, os.O_RDONLY)
    for _ in range(1200):  # by descriptor: the path grows past PATH_MAX
        os.mkdir("d", dir_fd=at)
        inner = os.open("d", os.O_RDONLY, dir_fd=at)
        os.close(at)
        at = inner
    os.close(at)
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
    finally:  # undone from the top, one level at a time (shutil.rmtree would recurse as deep)
        while (folder / "d" / "d").exists():
            os.rename(folder / "d" / "d", folder / "x")
            os.rmdir(folder / "d")
            os.rename(folder / "x", folder / "d")
        os.rmdir(folder / "d")
    too_deep = folder / "/".join(["d"] * (MAX_FOLDER_DEPTH + 1))
    assert str(err.value) == (f"{too_deep}: a folder nested more than {MAX_FOLDER_DEPTH} deep in the artifacts "
                              f"folder (builds nest one: members/); remove it or {REBUILD}.")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc/self/fd (Linux)")
def test_the_walk_holds_a_bounded_number_of_descriptors(folder):
    # Found: os.fwalk held a descriptor per level: under a low `ulimit -n`, a deep file was OSError EMFILE.
    import resource

    from runtime.artifacts import MAX_FOLDER_DEPTH, read_folder

    deep = folder / "/".join(["d"] * MAX_FOLDER_DEPTH)
    deep.mkdir(parents=True)
    (deep / "junk").write_text("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            read_folder(folder)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(err.value) == f"{deep / 'junk'}: not listed in manifest.json; remove it or {REBUILD}."


@pytest.mark.parametrize("rel", ["manifest.json", "manifest.sig", "model.sig"])
def test_a_manifest_or_signature_past_the_json_limit_is_refused_unread(folder, monkeypatch, rel):
    # Found: both were read whole: a sparse 1 GB manifest.sig cost 1.15 GB, a 3 GB one a MemoryError traceback.
    from runtime.limits import MAX_JSON_BYTES

    manifest = (folder / "manifest.json").read_bytes()
    (folder / rel).touch()
    os.truncate(folder / rel, MAX_JSON_BYTES + 1)  # sparse: refused by its size, before any byte is read
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / rel}: {MAX_JSON_BYTES + 1:,} bytes, over the {MAX_JSON_BYTES:,}-byte "
                              f"limit for JSON (ENSEMBLE_ONNX_MAX_JSON_BYTES); {REBUILD}.")
    size = len(manifest) + 1  # over a limit the real manifest.json is under
    os.truncate(folder / rel, size)
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", str(size - 1))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / rel}: {size:,} bytes, over the "
                                                              f"{size - 1:,}-byte")):
        runtime.load(folder)
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", "1e6")
    with pytest.raises(runtime.ArtifactError, match=re.escape("ENSEMBLE_ONNX_MAX_JSON_BYTES='1e6' is not a whole")):
        runtime.load(folder)


def test_the_json_limit_is_the_one_convert_reads_json_under():
    loaders = pytest.importorskip("convert.loaders")  # the build's modules: absent from the slim venv
    from runtime.limits import MAX_JSON_BYTES

    assert loaders.FILE_LIMITS["json"] is MAX_JSON_BYTES  # the one object: one default, raised by one variable


def _unprivileged(code: str) -> str:
    """`code` run by a Python that file permissions bind (root without CAP_DAC_OVERRIDE/READ_SEARCH, as a
    service account is), with the worktree importable; its stdout."""
    import subprocess
    import sys

    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a mode-000 folder stays readable to this test")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(runtime.__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    return done.stdout


_REFUSAL = ("import sys, runtime\n"
            "from runtime.artifacts import read_folder\n"
            "try:\n"
            "    read_folder(sys.argv[1])\n"
            "except runtime.ArtifactError as exc:\n"
            "    print(exc)\n"
            "else:\n"
            "    print('LOADED')\n")


@pytest.mark.parametrize("where", ["junk", "members"])
def test_a_folder_that_cannot_be_read_is_refused_naming_it(folder, where):
    # Found: os.fwalk skipped an unreadable folder silently (a file in it was never seen as unlisted), and an
    # unreadable members/ was reported as "members/lightgbm.onnx: cannot read it".
    if where == "junk":
        (folder / "junk").mkdir()
        (folder / "junk" / "evil").write_text("x")
    (folder / where).chmod(0)
    try:
        said = _unprivileged(_REFUSAL.replace("sys.argv[1]", repr(str(folder))))
    finally:
        (folder / where).chmod(0o755)
    assert said == f"{folder / where}: cannot read the folder '{where}' (Permission denied).\n"
