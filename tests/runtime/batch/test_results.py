"""runtime.batch.results: the one writer of result files (checked target, atomic, a run's files together,
strict JSON)."""

import errno
import json
import math
import os
from pathlib import Path

import pytest

from runtime.batch.results import (
    AtomicOutput,
    check_target,
    commit_together,
    dumps_strict,
    environment_fault,
    write_file,
)
from runtime.errors import CannotRunError, InputError


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def place(tmp_path):
    (tmp_path / "in.csv").write_text("a\n1\n")
    build = tmp_path / "build"
    (build / "members").mkdir(parents=True)
    (build / "manifest.json").write_text("{}")
    (build / "ensemble.onnx").write_bytes(b"")
    (tmp_path / "models").mkdir()
    (tmp_path / "old.html").write_text("old")
    (tmp_path / "folder.html").mkdir()
    (tmp_path / "to_input.csv").symlink_to(tmp_path / "in.csv")
    (tmp_path / "to_folder.html").symlink_to(tmp_path / "folder.html")
    os.mkfifo(tmp_path / "fifo.html")
    return tmp_path


@pytest.mark.parametrize(("target", "force", "problem"), [
    ("in.csv", True, "is an input of this run"),
    ("to_input.csv", True, "is an input of this run"),
    ("build/r.html", True, "is inside the artifacts folder"),
    ("build/manifest.json", True, "is inside the artifacts folder"),
    ("build/members/r.html", True, "is inside the artifacts folder"),
    ("models/r.html", True, "is inside the models folder"),
    ("old.html", False, "already exists; pass --force"),
    ("folder.html", True, "is a folder; name a file."),
    ("to_folder.html", True, "is a folder; name a file."),
    ("fifo.html", True, "is a FIFO, not a regular file"),
    ("nowhere/r.html", True, "does not exist"),
])
def test_check_target_refuses(place, target, force, problem):
    with pytest.raises(InputError, match=problem):
        check_target(place / target, force=force, inputs=[place / "in.csv"], builds=[place / "build"],
                     models=place / "models")


def test_check_target_finds_a_build_it_was_not_told_of(place):
    # compare --report NEW/r.html names OLD and NEW; any folder holding a build's manifest is refused too
    with pytest.raises(InputError, match="an artifacts folder"):
        check_target(place / "build" / "members" / "r.html", force=True)


def test_check_target_lets_a_new_file_and_force_through(place):
    check_target(place / "new.html", force=False, inputs=[place / "in.csv"], builds=[place / "build"])
    check_target(place / "old.html", force=True, inputs=[place / "in.csv"], builds=[place / "build"])


def test_write_file_appears_whole_and_replaces_only_with_force(tmp_path):
    target = tmp_path / "r.html"
    write_file(target, b"one", force=False)
    with pytest.raises(InputError, match="already exists"):
        write_file(target, b"two", force=False)
    write_file(target, b"two", force=True)
    assert target.read_bytes() == b"two" and names(tmp_path) == ["r.html"]


def test_force_replaces_a_link_never_what_it_points_to(tmp_path):
    kept = tmp_path / "kept.csv"
    kept.write_text("precious")
    (tmp_path / "o.csv").symlink_to(kept)
    write_file(tmp_path / "o.csv", b"new", force=True)
    assert kept.read_text() == "precious"
    assert not (tmp_path / "o.csv").is_symlink() and (tmp_path / "o.csv").read_bytes() == b"new"


def test_a_dangling_link_is_replaced_with_force(tmp_path):
    (tmp_path / "o.csv").symlink_to(tmp_path / "nothing")
    with pytest.raises(InputError, match="already exists"):
        AtomicOutput(tmp_path / "o.csv", False)
    write_file(tmp_path / "o.csv", b"new", force=True)
    assert (tmp_path / "o.csv").read_bytes() == b"new" and not (tmp_path / "nothing").exists()


def test_a_runs_files_commit_together_or_not_at_all(tmp_path):
    """Issue 24 #1: the output must not be committed when the rejects file cannot be (a folder appeared at its
    name while the run went on): the previous output stays, and no hidden file is left."""
    out, rejects = tmp_path / "o.csv", tmp_path / "o.rejects.csv"
    out.write_text("previous 20,000 rows")
    first, second = AtomicOutput(out, True), AtomicOutput(rejects, True)
    first.file.write(b"new rows")
    second.file.write(b"refused rows")
    rejects.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        commit_together([first, second])
    assert out.read_text() == "previous 20,000 rows"
    assert names(tmp_path) == ["o.csv", "o.rejects.csv"] and rejects.is_dir()


def test_a_file_that_appears_takes_back_those_published(tmp_path):
    out, rejects = tmp_path / "o.csv", tmp_path / "r.csv"
    first, second = AtomicOutput(out, False), AtomicOutput(rejects, False)
    first.file.write(b"mine")
    second.file.write(b"mine too")
    rejects.write_text("theirs")
    with pytest.raises(InputError, match="appeared while this run wrote it"):
        commit_together([first, second])
    assert names(tmp_path) == ["r.csv"] and rejects.read_text() == "theirs"


@pytest.mark.parametrize(("value", "expect"), [
    ({"p": float("nan"), "q": float("inf"), "r": -math.inf}, '{"p": null, "q": null, "r": null}'),
    ({"b": b"\x00\xff"}, '{"b": "AP8="}'),
    ({"t": (1, 2)}, '{"t": [1, 2]}'),
    ({"s": "0700"}, '{"s": "0700"}'),
])
def test_strict_json_has_one_form_for_what_json_cannot_hold(value, expect):
    text = dumps_strict(value)
    assert text == expect
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard token {c}"))


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "no space left on the device (ENOSPC)"),
    (errno.EFBIG, "the file-size limit was reached (EFBIG)"),
])
def test_environment_faults_are_named_with_exit_3(code, words):
    fault = environment_fault(OSError(code, os.strerror(code)), "o.csv")
    assert isinstance(fault, CannotRunError) and fault.exit_code == 3
    assert str(fault).startswith(f"o.csv: {words}; nothing was written.")
    assert environment_fault(OSError(f"[Errno {code}] pyarrow's text"), "o.csv") is not None
    assert environment_fault(OSError(errno.ENOENT, "gone"), "o.csv") is None
