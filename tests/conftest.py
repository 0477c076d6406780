"""Shared fixtures. Trained models are cached on disk across runs (build/test-cache, keyed by what they are
trained from: tests/model_cache.py); the demo artifacts are built once per test run into build/test-artifacts,
which `make test-slim` then reuses in a runtime-only venv. Both are safe under pytest-xdist: the workers of one
run share each folder through a file lock, so each is trained or built once.

Nothing here imports the build stack at module level: the slim run loads this file too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from model_cache import REPO, disk_cached, once_per_run, session_copy

TEST_ARTIFACTS = REPO / "build" / "test-artifacts"

# Each pytest-xdist worker is one of as many as the cores: torch's OpenMP pool of a thread per core in every
# worker (and in the processes they start) only makes the workers take turns. Set before any test imports torch;
# a test that needs another thread count sets it itself (tests/convert/test_build.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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
            copies[spec] = session_copy(cached, tmp_path_factory.mktemp("models"))
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


def pytest_configure(config):
    config.addinivalue_line("markers", "builds: trains or converts models beyond the one cached demo build (set by "
                            "tests/conftest.py); `make check` runs the others")


# Fixtures through which a test gets a models folder to convert or train, when asked for by the test itself or
# by a fixture other than the ones that make the one demo build.
MODEL_FIXTURES = {"models_cache": {"demo_models"}, "demo_models": {"demo_artifacts"}, "models_copy": set()}


def _builds(item) -> bool:
    """Does the test convert or train models, besides the demo build every run makes once? Read from which
    fixtures ask for a models folder, and from the module's use of the variant matrix (tests/variants.py)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    askers = {"<test>": set(info.argnames)}
    for name, defs in info.name2fixturedefs.items():
        askers[name] = set(defs[-1].argnames)
    for fixture, allowed in MODEL_FIXTURES.items():
        if any(fixture in asks and who not in allowed for who, asks in askers.items()):
            return True
    return any(getattr(item.module, name, None) is not None for name in ("cached_folder", "write_variant"))


def pytest_collection_modifyitems(config, items):
    """Marks the tests that build (`-m "not builds"` leaves them out: `make check`). Under `make mutation`
    (ENSEMBLE_ONNX_MUTATION=1) the referee is every selected test that needs no training: a test whose fixtures
    train models would spend seconds per mutant on the frameworks, not on the runtime line the mutant changed.
    Those tests still run in `make test`."""
    for item in items:
        if _builds(item):
            item.add_marker(pytest.mark.builds)
    if not os.environ.get("ENSEMBLE_ONNX_MUTATION"):
        return
    keep = [item for item in items if "models_cache" not in getattr(item, "fixturenames", ())]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
