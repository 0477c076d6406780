"""The runtime's edges, each pinned by a test a small deliberate bug would fail: what `make mutation` found
the runtime tests did not check. Runtime only (numpy + onnxruntime): marked `slim` like test_runtime.py."""

from __future__ import annotations

import numpy as np
import pytest

import runtime

pytestmark = pytest.mark.slim


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)
