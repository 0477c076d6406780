"""Attacks on score's stdin, NaN and passthrough, and on the torch code record (docs/backfill.md, docs/cli.md,
docs/artifacts.md): each test is a defect found by using them carelessly or with hostile intent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from domain_rows import centre
from model_cache import REPO

from convert.cli import main
from tests.convert.members.test_torch_code_record import HELPERS_PY, write_models
from tests.forge import rebound
from tests.variants import by_id, cached_folder


def cli(*args: object, stdin: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


def _csv_rows(artifacts: Path, n: int) -> bytes:
    """n rows of the build's domain centre (a row it takes), each with a symbol."""
    middle = centre(json.loads((artifacts / "manifest.json").read_text()))
    row = ",".join(map(repr, middle.values()))
    return ("symbol," + ",".join(middle) + "\n" + "".join(f"S{i},{row}\n" for i in range(n))).encode()


# ------------------------------------------------------------------------------------------ the commands


@pytest.mark.parametrize("command", ["compare", "drift", "evaluate"])
def test_rows_option_left_out_is_a_usage_error(demo_artifacts, command):
    # click 8.5 let a required option with an explicit default=None be left out: the command ran on None.
    builds = (demo_artifacts, demo_artifacts) if command == "compare" else (demo_artifacts,)
    result = cli(command, *builds)
    assert result.exit_code == 2, result.output
    assert "Missing option '-i'" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ score - (stdin)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_score_stdin_killed_leaves_no_copy(demo_artifacts, tmp_path, sig):
    """A plain `kill`, a closed terminal or Ctrl-C while stdin is being spooled: the copy of the input goes too,
    and the exit code is the shell's (128 + the signal)."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool), "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), "-", "-o",
                             str(tmp_path / "o.csv"), "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        assert proc.stdin is not None
        proc.stdin.write(_csv_rows(demo_artifacts, 2000))  # stdin stays open: the run is spooling when killed
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not any(p.name == "stdin" for p in spool.glob("ensemble-onnx-stdin-*/*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the spool never appeared"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert list(spool.glob("ensemble-onnx-stdin-*")) == []
    assert b"Traceback" not in err and not (tmp_path / "o.csv").exists()


# ------------------------------------------------------------------------------ verify and the code record


def _forged_source(demo_artifacts: Path, folder: Path, file: str) -> Path:
    def edit(manifest: dict) -> None:
        manifest["members"]["lightgbm"]["source"]["file"] = file

    return rebound(demo_artifacts, folder, edit)


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_verify_reads_no_source_outside_models(demo_artifacts, demo_models, tmp_path, where):
    """A forged manifest naming a model file outside MODELS, with that file's very sha256: refused by name,
    never read (convert records a bare name)."""
    source = json.loads((demo_artifacts / "manifest.json").read_text())["members"]["lightgbm"]["source"]["file"]
    outside = tmp_path / "elsewhere" / source
    outside.parent.mkdir()
    outside.write_bytes((demo_models / source).read_bytes())
    named = str(outside) if where == "absolute" else os.path.relpath(outside, demo_models)
    result = cli("verify", _forged_source(demo_artifacts, tmp_path / "art", named), "--models", demo_models, "-q")
    assert result.exit_code == 1, result.output
    assert f"not a file in {demo_models} (members.lightgbm.source in manifest.json)" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def torch_build(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("code_attack")
    models = write_models(root / "models")
    assert cli("convert", models, "-o", root / "art", "-q").exit_code == 0
    return models, root / "art"


def test_verify_refuses_code_reached_through_a_link_out(torch_build, tmp_path):
    """The same bytes, but the package now lives outside MODELS behind a link: convert refuses such a folder,
    and verify read and accepted the files outside it."""
    models = Path(shutil.copytree(torch_build[0], tmp_path / "models"))
    shutil.move(models / "src" / "trading", tmp_path / "outside")
    (models / "src" / "trading").symlink_to(tmp_path / "outside")
    result = cli("verify", torch_build[1], "--models", models, "-q")
    assert result.exit_code == 1, result.output
    assert f"{models / 'src/trading/helpers.py'}: leads to {tmp_path / 'outside' / 'helpers.py'}, outside" in \
        result.output, result.output


def test_a_loop_of_links_in_the_code_folder(torch_build, tmp_path):
    models = Path(shutil.copytree(torch_build[0], tmp_path / "models"))
    (models / "src" / "tools" / "loop.py").symlink_to("loop.py")
    result = cli("convert", models, "-o", tmp_path / "art", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{models / 'src/tools/loop.py'} is a loop of symbolic links" in result.output
    assert not (tmp_path / "art").exists()
    # verify of a build whose code file became a loop says so too
    models = Path(shutil.copytree(torch_build[0], tmp_path / "models2"))
    (models / "src" / "trading" / "helpers.py").unlink()
    (models / "src" / "trading" / "helpers.py").symlink_to("helpers.py")
    result = cli("verify", torch_build[1], "--models", models, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{models / 'src/trading/helpers.py'}: a loop of symbolic links" in result.output


def test_a_manifest_too_big_for_its_code_says_so(torch_build, tmp_path, monkeypatch):
    """A code folder holding many Python files (a virtualenv in the models folder): the refusal blamed the four
    feature names and advised shortening them."""
    models = Path(shutil.copytree(torch_build[0], tmp_path / "models"))
    many = models / "src" / "tools" / "vendored"
    many.mkdir()
    for i in range(60):
        (many / f"module_{i:03}.py").write_text(f"X = {i}\n")
    size = len((torch_build[1] / "manifest.json").read_bytes())
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", str(size + 2000))  # 60 more records do not fit
    result = cli("convert", models, "-o", tmp_path / "art", "-q")
    assert result.exit_code == 1, result.output
    assert "members.tiny.code lists 64 files" in result.output, result.output
    assert "feature names" not in result.output and not (tmp_path / "art").exists()


# ------------------------------------------------------------------------------------------ NaN spellings

NAN_FEATURES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def nan_build(tmp_path_factory) -> Path:
    """LightGBM trained with NaNs, alone in its build: NaN is taken in every feature."""
    root = tmp_path_factory.mktemp("nan_spellings")
    models = cached_folder(by_id("lightgbm-nan_in_training-txt"), root)
    assert cli("convert", models, "-o", root / "art", "-q").exit_code == 0
    return root / "art"


@pytest.mark.parametrize(("cell", "taken"), [
    ("nan", True), ("NaN", True), ("-nan", True), (" nan", True),
    ("nan(123)", False), ("NAN(0x7ff)", False), ("-nan(1)", False),  # C's nan(chars): Arrow read it, predict not
    ("snan", False),
])
def test_score_reads_a_nan_cell_as_predict_does(nan_build, tmp_path, cell, taken):
    source = tmp_path / "in.csv"
    source.write_text("symbol," + ",".join(NAN_FEATURES) + "\nS," + ",".join(["0.5"] * 7 + [cell]) + "\n")
    scored = cli("score", nan_build, source, "-o", tmp_path / "o.csv", "-q", "--workers", "1")
    predicted = cli("predict", nan_build, "-i", source)
    assert (scored.exit_code, predicted.exit_code) == ((0, 0) if taken else (1, 1)), (scored.output, predicted.output)
    if not taken:
        assert f"column 'f7': '{cell}' is not a number" in scored.output


def test_code_that_rewrites_itself_at_import_is_refused(tmp_path):
    """helpers.py halves its factor when imported: the build ran x * 0.5, the manifest recorded the sha256 of
    x * 0.25, and verify then failed the gate blaming the libraries."""
    rewrite = ("import pathlib\n_p = pathlib.Path(__file__)\n"
               "_p.write_text(_p.read_text().replace('x * 0.5', 'x * 0.25'))\n")
    models = write_models(tmp_path / "models", helpers=HELPERS_PY + rewrite)
    result = cli("convert", models, "-o", tmp_path / "art", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"member tiny.code: {models.resolve() / 'src/trading/helpers.py'} changed while the build ran" in \
        result.output, result.output
    assert not (tmp_path / "art").exists()


KILLED_AFTER_FIRST_WRITE = """
import os, signal, sys
from runtime.batch import backfill_io
del os.O_TMPFILE  # a filesystem without it (NFS, some FUSE mounts): the output goes to a hidden partial file
write = backfill_io.TableSink.write
def write_then_killed(self, table):
    write(self, table)
    os.kill(os.getpid(), signal.SIGTERM)  # a plain `kill` of the run, mid-write
backfill_io.TableSink.write = write_then_killed
from convert.cli import main
main(sys.argv[1:])
"""


def test_score_killed_mid_write_leaves_no_partial_file(demo_artifacts, tmp_path):
    """Where the output cannot be an unnamed O_TMPFILE, it is a hidden `.NAME.partial-*` file beside the
    target; a plain `kill` left it there."""
    source = tmp_path / "in.csv"
    source.write_bytes(_csv_rows(demo_artifacts, 40))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_FIRST_WRITE, "score", str(demo_artifacts),
                           str(source), "-o", str(tmp_path / "o.csv"), "-q", "--workers", "1", "--batch-rows", "10"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"], done.stderr


@pytest.mark.parametrize(("column", "expect"), [
    (["nan", "nan(1)", None, "1.5"], [None, "column 'f0': 'nan(1)' is not a number", "column 'f0': missing (null)",
                                      None]),
    ([None, None, None, None], ["column 'f0': missing (null)"] * 4),  # Arrow's null type: no text to match
])
def test_feature_matrix_reasons(column, expect):
    import pyarrow as pa

    from runtime.batch.backfill import feature_matrix

    batch = pa.record_batch({"f0": pa.array(column)})
    _, reasons = feature_matrix(batch, ("f0",), "in.parquet")
    assert list(reasons) == expect


def test_score_refuses_a_fifo_input_pointing_to_stdin(demo_artifacts, tmp_path):
    """`mkfifo in.csv` (or `<(...)`): with no writer the run waited forever on opening it; with one, pyarrow
    said `lseek failed`. Run in a process of its own, so that a wait fails the test instead of hanging it."""
    os.mkfifo(tmp_path / "in.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), str(tmp_path / "in.csv"),
                           "-o", str(tmp_path / "o.csv"), "--workers", "1"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{tmp_path / 'in.csv'}: is a FIFO, not a regular file" in done.stderr
    assert "score ARTIFACTS - -o OUT <" in done.stderr and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("blank", [b"\n" * 5000, b" \r\n" * 3000])
def test_score_stdin_after_many_blank_lines(demo_artifacts, tmp_path, blank):
    """Only the first 4 KB were looked at: past them of blank lines, the rows were `no rows in the input`."""
    features = json.loads((demo_artifacts / "manifest.json").read_text())["feature_names"]
    rows = b"".join(json.dumps({"symbol": f"S{i}", **dict.fromkeys(features, 0.25)}).encode() + b"\n"
                    for i in range(3))
    result = cli("score", demo_artifacts, "-", "-o", tmp_path / "o.jsonl", "-q", "--json", "--workers", "1",
                 stdin=blank + rows)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scored"] == 3
    written = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line)["symbol"] for line in written] == ["S0", "S1", "S2"]
