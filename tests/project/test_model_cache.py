"""The disk cache of trained test models (tests/model_cache.py): a cached folder is reused only while every
file is the one written after training; anything else is trained again, never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import model_cache
import pytest
from model_cache import CACHE_INDEX, disk_cached, once_per_run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(model_cache, "CACHE", tmp_path / "cache")
    source = tmp_path / "trainer.py"
    source.write_text("# the code that trains\n")
    made: list[Path] = []

    def make(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.bin").write_bytes(b"weights %d" % len(made))
        (folder / "sub").mkdir()
        (folder / "sub" / "meta.json").write_text("{}")
        made.append(folder)

    return lambda key="spec": disk_cached("things", key, (source,), make), made, source


def _spoil_file(folder: Path) -> None:
    (folder / "model.bin").write_bytes(b"tampered")


def _add_file(folder: Path) -> None:
    (folder / "extra.txt").write_text("not from training")


def _drop_file(folder: Path) -> None:
    (folder / "sub" / "meta.json").unlink()


def _drop_index(folder: Path) -> None:
    (folder / CACHE_INDEX).unlink()


def _bad_index(folder: Path) -> None:
    (folder / CACHE_INDEX).write_text("[not json")


def _link_a_file(folder: Path) -> None:
    target = folder.parent / "elsewhere.bin"
    target.write_bytes((folder / "model.bin").read_bytes())
    (folder / "model.bin").unlink()
    (folder / "model.bin").symlink_to(target)


def test_a_cached_folder_is_made_once_and_reused(cache):
    get, made, _ = cache
    first = get()
    assert get() == first and len(made) == 1
    assert (first / "model.bin").read_bytes() == b"weights 0"
    assert set(json.loads((first / CACHE_INDEX).read_text())) == {"model.bin", "sub/meta.json"}


@pytest.mark.parametrize("spoil", [_spoil_file, _add_file, _drop_file, _drop_index, _bad_index, _link_a_file])
def test_a_cached_folder_that_is_not_as_written_is_made_again(cache, spoil):
    get, made, _ = cache
    folder = get()
    spoil(folder)
    assert get() == folder and len(made) == 2
    assert (folder / "model.bin").read_bytes() == b"weights 1" and not (folder / "extra.txt").exists()
    assert not (folder / "model.bin").is_symlink()


def test_a_run_killed_while_training_leaves_nothing_that_is_used(cache):
    get, made, _ = cache
    folder = get()
    partial = folder.with_name(folder.name + ".partial")
    folder.rename(partial)  # as a kill between the training and the rename leaves it
    assert get() == folder and len(made) == 2 and not partial.exists()


@pytest.mark.parametrize("change", ["key", "source"])
def test_another_spec_or_trainer_is_another_folder(cache, change):
    get, made, source = cache
    first = get()
    if change == "source":
        source.write_text("# the code that trains, changed\n")
    second = get("other spec" if change == "key" else "spec")
    assert second != first and len(made) == 2 and first.exists()


def test_once_per_run_makes_a_folder_once_in_a_run_and_again_in_the_next(tmp_path, monkeypatch):
    made: list[Path] = []
    folder = tmp_path / "artifacts"
    once_per_run(folder, made.append)
    folder.mkdir()
    once_per_run(folder, made.append)
    assert made == [folder]
    monkeypatch.setattr(model_cache, "RUN_ID", "the next run")
    once_per_run(folder, made.append)
    assert made == [folder, folder]
