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
