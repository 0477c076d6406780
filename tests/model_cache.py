"""The disk cache of trained test models (build/test-cache) and the once-per-run demo build, shared by the
pytest-xdist workers of a run through file locks. Standard library only at import: the slim run loads it too."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Moved with ENSEMBLE_ONNX_TEST_CACHE (say, to keep it across `make clean`); `make clean` empties build/.
CACHE = Path(os.environ.get("ENSEMBLE_ONNX_TEST_CACHE") or REPO / "build" / "test-cache")
CACHE_INDEX = "cache-index.json"  # in each cached folder: the sha256 of every file, written after training
# What a trained model depends on besides its spec and the code that trains it.
FRAMEWORKS = ("numpy", "torch", "scikit-learn", "xgboost", "xgboost-cpu", "lightgbm", "joblib", "onnx")
# One test run: pytest-xdist gives its workers one id; a plain run gets its own.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _index(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CACHE_INDEX}


def _intact(folder: Path) -> bool:
    """The folder holds exactly the files its index lists, each with its recorded sha256."""
    try:
        index = json.loads((folder / CACHE_INDEX).read_text())
        return isinstance(index, dict) and not any(p.is_symlink() for p in folder.rglob("*")) \
            and index == _index(folder)
    except (OSError, ValueError):
        return False


def _lock(path: Path):
    from filelock import FileLock  # the build stack's dependency (torch), and the dev extra's

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")))


def disk_cached(name: str, key: object, sources: tuple[Path, ...], make: Callable[[Path], object]) -> Path:
    """A folder `make(folder)` writes, trained once and reused by later runs and by every xdist worker.

    The cache key is `key` (its repr), the text of `sources` (the code that trains), the framework versions,
    Python and the machine: any change trains anew. A cached folder is used only when every file matches the
    index written after `make` finished; one that does not (a file edited, lost or added, a run killed
    half-way) is deleted and made again, never trusted. Callers get the cache's own folder: copy it before
    changing anything (the `models_cache` fixture hands each session its own copy)."""
    parts = [repr(key), sys.version, platform.machine(), *(f"{d}={_version(d)}" for d in FRAMEWORKS),
             *(_digest(s) for s in sources)]
    folder = CACHE / name / hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    with _lock(folder):
        if _intact(folder):
            return folder
        partial = folder.with_name(folder.name + ".partial")
        for stale in (folder, partial):  # only folders of this cache, which only this function writes
            if stale.is_symlink() or stale.is_file():
                stale.unlink()
            elif stale.exists():
                shutil.rmtree(stale)
        make(partial)
        (partial / CACHE_INDEX).write_text(json.dumps(_index(partial), indent=1))
        os.replace(partial, folder)  # whole or not at all
        return folder


def once_per_run(folder: Path, make: Callable[[Path], object]) -> Path:
    """`make(folder)` once per test run, whichever xdist worker asks first; the others wait and reuse it."""
    marker = folder.with_name(folder.name + ".run")
    with _lock(folder):
        try:
            done = marker.read_text() == RUN_ID and folder.is_dir()
        except OSError:
            done = False
        if not done:
            marker.unlink(missing_ok=True)
            make(folder)
            marker.write_text(RUN_ID)
    return folder




def session_copy(cached: Path, target: Path) -> Path:
    """This session's own copy of a cached folder (less the cache's index): tests may edit what they are given
    without spoiling the cache, as before it existed."""
    copy = Path(shutil.copytree(cached, target, dirs_exist_ok=True))
    (copy / CACHE_INDEX).unlink()
    return copy
