"""An attack pass on what issues 24, 26 and 27 built (result files, trust options, signing, one vocabulary):
each test reproduces a finding of that pass, on the demo build and copies of the demo models."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import main
from runtime.batch.results import check_target
from runtime.errors import InputError

MODEL_FILE = "xgboost_v20260205_231109_v5.pkl"  # a name discovery reads as a model


def invoke(*args: object, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def models_like(tmp_path) -> Path:
    """A folder convert reads as a models folder, by its files alone (no command is told it is one)."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"model bytes")
    (folder / "rows.csv").write_text("a\n1\n")
    return folder


@pytest.mark.parametrize(("made", "target", "force"), [
    (MODEL_FILE, "scored.csv", False),      # a new file beside the models
    (MODEL_FILE, MODEL_FILE, True),         # a model file itself, replaced with --force
    (MODEL_FILE, "ensemble.json", False),   # a report named ensemble.json: discovery would read it as the spec
    ("ensemble.json", "report.html", False),
])
def test_a_result_file_is_refused_in_a_models_folder_it_was_not_told_of(tmp_path, made, target, force):
    # Finding 1: score/predict/compare/evaluate wrote into a models folder (predict -o MODEL.pkl --force replaced
    # the model; compare --report models/ensemble.json made discovery read an HTML file), exit 0.
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / made).write_bytes(b"{}")
    with pytest.raises(InputError, match="a models folder"):
        check_target(folder / target, force=force, inputs=[tmp_path / "in.csv"])


def test_a_folder_without_models_still_takes_a_result(tmp_path):
    (tmp_path / "notes_v1.txt").write_text("not a stamped model name")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / MODEL_FILE).write_bytes(b"")  # a models folder below does not make this one
    check_target(tmp_path / "scored.csv", force=False)


def test_predict_and_reports_leave_the_models_folder_alone(demo_artifacts, models_like):
    before = {p.name: p.read_bytes() for p in models_like.iterdir()}
    rows = models_like / "rows.csv"
    for args in (("predict", demo_artifacts, "-i", rows, "-o", models_like / MODEL_FILE, "--force"),
                 ("predict", demo_artifacts, "-i", rows, "-o", models_like / "p.jsonl"),
                 ("compare", demo_artifacts, demo_artifacts, "-i", rows, "--report", models_like / "ensemble.json"),
                 ("score", demo_artifacts, rows, "-o", models_like / "scored.csv")):
        result = invoke(*args, "-q")
        assert result.exit_code == 1, (args, result.output)
        assert "a models folder" in result.output
    assert {p.name: p.read_bytes() for p in models_like.iterdir()} == before


def test_a_report_named_dash_is_refused_not_written_to_the_current_folder(demo_artifacts, tmp_path, monkeypatch):
    # Finding 3: `evaluate --report -` wrote a file named '-' in the current folder, exit 0. (Refused before
    # the rows are read: any file will do as the input.)
    rows = tmp_path / "rows" / "labelled.csv"
    rows.parent.mkdir()
    rows.write_text("a,label\n1,BUY\n")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = invoke("evaluate", demo_artifacts, "-i", rows, "--report", "-", "-q")
    assert result.exit_code == 1, result.output
    assert "'-' (stdout)" in result.output
    assert names(here) == []


def test_a_link_and_dotdot_cannot_place_a_result_inside_a_build(artifacts_copy, demo_artifacts, tmp_path):
    # Finding 7 (High): `-o LINK/../evil.csv`, LINK a link to BUILD/members, was judged lexically (beside LINK)
    # while the system wrote BUILD/evil.csv: predict, score and compare --report all exit 0, and the build
    # stopped loading (an unlisted file).
    import runtime

    work = tmp_path / "work"
    work.mkdir()
    (work / "sub").symlink_to(artifacts_copy / "members")
    rows = work / "rows.csv"
    rows.write_text(",".join(runtime.load(demo_artifacts).feature_names) + "\n")  # refused before it is read
    before = names(artifacts_copy)
    for args in (("predict", demo_artifacts, "-i", rows, "-o", work / "sub" / ".." / "evil.csv"),
                 ("score", demo_artifacts, rows, "-o", work / "sub" / ".." / "evil.csv"),
                 ("compare", demo_artifacts, demo_artifacts, "-i", rows, "--report",
                  work / "sub" / ".." / "evil.html")):
        result = invoke(*args, "-q")
        assert result.exit_code == 1, (args, result.output)
        assert f"is inside {artifacts_copy}, an artifacts folder" in result.output
    assert names(artifacts_copy) == before
    runtime.load(artifacts_copy)


def test_rejects_and_output_that_land_on_one_file_are_refused(tmp_path):
    # Finding 7, the same lexical reading: `-o LINK/../r.csv --rejects REAL/r.csv` named one file twice unseen.
    from runtime.batch.backfill import check_paths

    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    with pytest.raises(InputError, match="the rejects file must differ from the output"):
        check_paths(tmp_path / "in.csv", tmp_path / "link" / ".." / "r.csv", tmp_path / "real" / "r.csv")


def test_a_loop_of_links_as_the_outputs_folder_is_refused_by_name(tmp_path):
    # Finding 8: a result file in a folder that is a loop of links ended in an internal error (RuntimeError).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(InputError, match="its folder cannot be followed"):
        check_target(tmp_path / "loop" / "out.csv", force=False)


def test_convert_writes_where_the_system_finds_its_output(tmp_path):
    # Finding 9: convert checked `-o LINK/../nb` where the system finds it (in the folder LINK leads to) but
    # locked and wrote it lexically, beside LINK: a different folder, replaced if it held a previous build.
    from convert.manifest import check_output, output_lock, write_atomically

    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "link").symlink_to(tmp_path / "real" / "deep")
    out = tmp_path / "here" / "link" / ".." / "nb"
    check_output(out)
    with output_lock(out):
        assert (tmp_path / "real" / ".nb.lock").exists()
        write_atomically(out, {"a.txt": b"x"})
    assert (tmp_path / "real" / "nb" / "a.txt").read_bytes() == b"x"
    assert names(tmp_path / "here") == ["link"]


def test_convert_refuses_a_loop_of_links_by_name(tmp_path):
    from convert.errors import OutputError
    from convert.manifest import check_output

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(OutputError, match="its folder cannot be followed"):
        check_output(tmp_path / "loop" / "nb")


def test_verify_checks_the_pin_on_the_read_it_verifies(demo_artifacts, tmp_path):
    # Finding 6: `verify --expect-build-id X --public-key K` checked the pin on one read of the folder (a full
    # runtime.load) and the signature and parity on a second: a folder swapped in between (another build signed
    # by K) was verified, exit 0, under the pinned id. The pin now rides on the read the gate runs on, so a
    # wrong pin is refused there, before the sources are looked at (a models folder that does not exist).
    from convert.verify import verify
    from runtime.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match="not the expected build " + "0" * 64):
        verify(demo_artifacts, tmp_path / "no-models", expect_build_id="0" * 64)


@pytest.fixture(scope="module")
def feature_names(demo_artifacts) -> list[str]:
    import runtime

    return runtime.load(demo_artifacts).feature_names


@pytest.mark.parametrize("command", [
    ("score", "{rows}", "-o", "{out}.csv"),
    ("score", "{rows}", "-o", "{out}.parquet"),
    ("predict", "-i", "{rows}", "--format", "csv"),
    ("predict", "-i", "{rows}", "--format", "csv", "-o", "{out}.csv"),
])
def test_a_lone_surrogate_in_a_json_line_is_refused_by_line(demo_artifacts, feature_names, tmp_path, command):
    # Finding 4: a passthrough string holding a lone surrogate ("\ud800", valid JSON) ended score (any format)
    # and predict --format csv in an internal error, UnicodeEncodeError, exit 1.
    row = ", ".join(f'"{name}": 0.0' for name in feature_names)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(f'{{{row}, "symbol": "AB"}}\n{{{row}, "symbol": "\\ud800"}}\n', encoding="utf-8")
    out = tmp_path / "out"
    result = invoke(command[0], demo_artifacts, *[a.format(rows=rows, out=out) for a in command[1:]], "-q")
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output
    assert "line 2: a lone surrogate" in result.output
    assert names(tmp_path) == ["rows.jsonl"]


def test_a_surrogate_pair_escape_is_one_character_and_passes():
    from runtime.jsonstrict import loads_unique

    assert loads_unique('{"symbol": "\\ud83d\\ude00"}') == {"symbol": "\U0001F600"}


def _closed(fd: int):
    import os

    return lambda: os.close(fd)


@pytest.mark.parametrize(("closed", "args", "code", "written"), [
    (2, ("score", "{build}", "{rows}", "-o", "{out}"), 0, True),  # stderr closed: its messages dropped, the work done
    (1, ("predict", "{build}", "-i", "{rows}"), 3, False),        # stdout closed: the predictions cannot go there
    (1, ("predict", "{build}", "-i", "{rows}", "-o", "{out}"), 0, True),
])
def test_a_closed_stream_is_not_an_internal_error(demo_artifacts, feature_names, tmp_path, closed, args, code, written):
    # Finding 10: started with stderr closed (2>&-), score died on sys.stderr.isatty() (an internal error no one
    # could read, exit 1, nothing scored); with stdout closed (>&-), predict died on sys.stdout.flush().
    import os
    import subprocess
    import sys

    from convert.demo import DemoSpec, market_data

    rows = tmp_path / "rows.csv"
    x = market_data(DemoSpec(seed=3), held_out=20)[0][:5]
    rows.write_text("\n".join([",".join(feature_names), *(",".join(repr(float(v)) for v in r) for r in x)]) + "\n")
    out = tmp_path / "out.csv"
    command = [a.format(build=demo_artifacts, rows=rows, out=out) for a in args]
    done = subprocess.run([sys.executable, "-m", "convert.cli", *command], preexec_fn=_closed(closed),
                          stdout=None if closed == 1 else subprocess.PIPE,
                          stderr=None if closed == 2 else subprocess.PIPE, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == code, done
    assert out.exists() == written
    if closed == 1 and code:
        assert done.stderr.strip() == ("Error: CannotRunError: stdout is closed (started with >&-): what the command "
                                       "prints there was not written; open stdout, or pass -o FILE where the command "
                                       "takes one.")


@pytest.mark.parametrize("folder", ["/proc", "/sys"])
def test_a_folder_that_takes_no_file_is_refused_by_name(folder):
    # Finding 11: where the folder offers no O_TMPFILE and refuses a named file too (procfs, sysfs; a network
    # mount without write permission), `predict -o` ended in an internal error (FileNotFoundError, PermissionError).
    from runtime.batch.results import write_file

    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} on this system")
    with pytest.raises(InputError, match=f"cannot write in {folder} "):
        write_file(Path(folder) / "out.csv", b"x\n", force=False)
    assert not (Path(folder) / "out.csv").exists()


def test_ray_without_a_cluster_at_the_address_cannot_run(demo_artifacts, feature_names, tmp_path, monkeypatch):
    # Finding 12: `score --engine ray --address auto` with no cluster running (or `ray://HOST:PORT` without the
    # ray[client] package) ended in an internal error (ConnectionError, ValueError) instead of exit 3.
    pytest.importorskip("ray.data")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(feature_names) + "\n" + ",".join(["0"] * len(feature_names)) + "\n")
    result = invoke("score", demo_artifacts, rows, "-o", tmp_path / "out.csv", "--engine", "ray", "--address", "auto",
                    "-q")
    assert result.exit_code == 3, result.output
    assert result.output.startswith("Error: CannotRunError: --engine ray --address auto: Ray could not start (")
    assert names(tmp_path) == ["rows.csv"]


@pytest.mark.parametrize(("header", "expect"), [
    ("lable", "no 'label' column (each row's realised class, one of ['SELL', 'HOLD', 'BUY']); did you mean 'lable' "
              "for 'label'?"),
    ("symbol", "no 'label' column (each row's realised class, one of ['SELL', 'HOLD', 'BUY'])."),
])
def test_evaluate_says_once_that_the_label_column_is_missing(demo_artifacts, feature_names, tmp_path, header, expect):
    # Finding 5: a misspelt or missing 'label' header was reported as "line(s) [2, 3, 4, 5, 6] ...: column 'label'
    # must name one of [...]", never naming the column that is not there nor the closest match.
    rows = tmp_path / "labelled.csv"
    rows.write_text(",".join([*feature_names, header]) + "\n" + ",".join(["0"] * len(feature_names)) + ",BUY\n")
    result = invoke("evaluate", demo_artifacts, "-i", rows, "-q")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"Error: InputError: {expect}"]
