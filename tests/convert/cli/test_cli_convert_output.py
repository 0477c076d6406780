"""convert refuses an output folder that is the models folder, inside it, or holds it: exit 1 naming both,
nothing written (docs/cli.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import main
from tests.variants import by_id, cached_folder


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def models(tmp_path) -> Path:
    """A copy of a tiny models folder at tmp_path/work/models."""
    import shutil

    folder = tmp_path / "work" / "models"
    shutil.copytree(cached_folder(by_id("lightgbm-default-txt"), tmp_path / "cache"), folder)
    return folder


@pytest.mark.parametrize(("out", "expect"), [
    ("models/sub", "is inside the models folder"),
    ("models/a/b/c", "is inside the models folder"),
    ("models/./sub/../sub2", "is inside the models folder"),
    ("link-into-models/sub", "is inside the models folder"),
    ("models", "is the models folder"),
    ("models/", "is the models folder"),
    (".", "an ancestor of the models folder"),
    ("..", "an ancestor of the models folder"),
])
def test_convert_refuses_an_output_in_or_over_the_models_folder(models, monkeypatch, out, expect):
    work = models.parent
    (work / "link-into-models").symlink_to(models)
    monkeypatch.chdir(work)
    before = _tree(work.parent)
    result = CliRunner().invoke(main, ["convert", "models", "-o", out])
    assert result.exit_code == 1, result.output
    assert expect in result.output and f"-o {Path(out)}" in result.output and str(models) in result.output
    assert "Traceback" not in result.output and "rebuilding" not in result.output
    assert _tree(work.parent) == before  # no lock, no staging folder, nothing


def test_the_message_names_both_folders(models, tmp_path):
    out = models / "artifacts"
    result = CliRunner().invoke(main, ["convert", str(models), "-o", str(out)])
    assert result.exit_code == 1
    assert f"-o {out}: is inside the models folder {models}" in result.output
    assert not out.exists() and not any(p.name.startswith(".artifacts") for p in models.iterdir())


def test_a_sibling_that_shares_the_prefix_is_fine(models):
    out = Path(os.fspath(models) + "-artifacts")  # models-artifacts beside models: not inside it
    result = CliRunner().invoke(main, ["convert", str(models), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
