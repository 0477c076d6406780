"""`python -m convert.demo`, the demo model set's generator: `--help` prints its usage and writes nothing, and
DIR is written only when it is new, empty or a previous demo set; anything else is refused and kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# --- N8: `python -m convert.demo --help` wrote 11 MB of models into ./--help/; DIR was written into whatever it held


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "convert.demo", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)


def test_demo_help_prints_usage_and_writes_nothing(tmp_path):
    result = _demo("--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout and "FOLDER" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_folder_that_holds_other_files_and_loses_nothing(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "sample_features.csv").write_text("mine\n")  # a name the demo writes, in someone's own folder
    result = _demo(str(models), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{models}: already holds files the demo did not write" in result.stderr
    assert [p.name for p in models.iterdir()] == ["sample_features.csv"]
    assert (models / "sample_features.csv").read_text() == "mine\n"


def test_demo_may_rewrite_an_empty_folder_or_a_previous_demo_set(tmp_path):
    from convert.demo import DEFAULT_STAMP, check_demo_target
    from convert.errors import OutputError

    check_demo_target(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_demo_target(tmp_path / "empty")
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in ("demo_spec.json", f"xgboost_{DEFAULT_STAMP}.pkl", "sample_features.csv"):
        (previous / name).write_text("{}\n")
    check_demo_target(previous)
    (previous / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputError, match=r"'notes.txt'"):
        check_demo_target(previous)
    (previous / "notes.txt").unlink()
    (previous / "demo_spec.json").unlink()  # the stamp gone: no longer provably the demo's
    with pytest.raises(OutputError, match="already holds files the demo did not write"):
        check_demo_target(previous)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="not a folder"):
        check_demo_target(tmp_path / "file")


def test_demo_refuses_a_demo_named_link_instead_of_writing_through_it(tmp_path):
    # Found: a link named sample_features.csv passed (is_file follows links), and the demo wrote through it.
    from convert.demo import check_demo_target
    from convert.errors import OutputError

    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "demo_spec.json").write_text("{}\n")
    (previous / "sample_features.csv").symlink_to(victim)
    with pytest.raises(OutputError, match=r"'sample_features.csv'"):
        check_demo_target(previous)
    assert victim.read_text() == "precious\n"


def test_demo_says_so_when_its_folder_cannot_be_made(tmp_path):
    # Found: a FOLDER under a file gave a NotADirectoryError traceback (after a minute of training).
    (tmp_path / "afile").write_text("")
    done = _demo(str(tmp_path / "afile" / "sub"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"Error: OutputError: {tmp_path / 'afile' / 'sub'}: cannot make the folder "
                                   f"(Not a directory); name a folder that can be written.")

