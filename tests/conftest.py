"""Shared fixtures. Trained models are cached on disk across runs (build/test-cache, keyed by what they are
trained from); the demo artifacts are built once per test run into build/test-artifacts, which `make test-slim`
then reuses in a runtime-only venv. Both are safe under pytest-xdist: the workers of one run share each
folder through a file lock, so each is trained or built once.

Nothing here imports the build stack at module level: the slim run loads this file too.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_ARTIFACTS = REPO / "build" / "test-artifacts"
# Moved with ENSEMBLE_ONNX_TEST_CACHE (say, to keep it across `make clean`); `make clean` empties build/.
CACHE = Path(os.environ.get("ENSEMBLE_ONNX_TEST_CACHE") or REPO / "build" / "test-cache")
CACHE_INDEX = "cache-index.json"  # in each cached folder: the sha256 of every file, written after training
# What a trained model depends on besides its spec and the code that trains it.
FRAMEWORKS = ("numpy", "torch", "scikit-learn", "xgboost", "lightgbm", "joblib", "onnx")
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


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory):
    """spec -> a trained models folder, this session's own copy of the disk cache; copy before changing anything
    in it (other tests of the session share it)."""
    import convert.demo
    from convert.demo import write_demo_models

    copies: dict = {}

    def get(spec):
        if spec not in copies:
            cached = disk_cached("demo-models", spec, (Path(convert.demo.__file__),),
                                 lambda folder: write_demo_models(folder, spec))
            copy = Path(shutil.copytree(cached, tmp_path_factory.mktemp("models"), dirs_exist_ok=True))
            (copy / CACHE_INDEX).unlink()
            copies[spec] = copy
        return copies[spec]
    return get


@pytest.fixture(scope="session")
def demo_spec():
    from convert.demo import DemoSpec
    return DemoSpec()


@pytest.fixture(scope="session")
def demo_models(models_cache, demo_spec) -> Path:
    return models_cache(demo_spec)


@pytest.fixture
def models_copy(demo_models, tmp_path) -> Path:
    """A private copy of the demo models folder, free to edit."""
    return Path(shutil.copytree(demo_models, tmp_path / "models"))


@pytest.fixture(scope="session")
def demo_artifacts(request) -> Path:
    """The demo ensemble converted once per run; in the slim run, the folder the full run left."""
    given = os.environ.get("ENSEMBLE_ONNX_ARTIFACTS")
    if given:
        return Path(given)
    from convert.build import build

    models = request.getfixturevalue("demo_models")
    return once_per_run(TEST_ARTIFACTS, lambda out: build(models, out))


@pytest.fixture
def artifacts_copy(demo_artifacts, tmp_path) -> Path:
    return Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))


def spec_with(spec, **changes):
    return replace(spec, **changes)


def pytest_collection_modifyitems(config, items):
    """Under `make mutation` (ENSEMBLE_ONNX_MUTATION=1) the referee is every selected test that needs no
    training: a test whose fixtures train models would spend seconds per mutant on the frameworks, not on the
    runtime line the mutant changed. Those tests still run in `make test`."""
    if not os.environ.get("ENSEMBLE_ONNX_MUTATION"):
        return
    keep = [item for item in items if "models_cache" not in getattr(item, "fixturenames", ())]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
