"""Shared fixtures. The demo models are trained once per session and cached by spec; the demo artifacts
are built once into build/test-artifacts, which `make test-slim` then reuses in a runtime-only venv.

Nothing here imports the build stack at module level: the slim run loads this file too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_ARTIFACTS = REPO / "build" / "test-artifacts"


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory):
    """spec -> a trained models folder; copy before changing anything in it."""
    from convert.demo import write_demo_models

    cache: dict = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = write_demo_models(tmp_path_factory.mktemp("models"), spec)
        return cache[spec]
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
    """The demo ensemble converted once; in the slim run, the folder the full run left."""
    given = os.environ.get("ENSEMBLE_ONNX_ARTIFACTS")
    if given:
        return Path(given)
    from convert.build import build

    models = request.getfixturevalue("demo_models")
    build(models, TEST_ARTIFACTS)
    return TEST_ARTIFACTS


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
