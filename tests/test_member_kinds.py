"""A member kind lives in one file: each kind module registers itself, and importing the registry (which
imports every kind module) pulls in none of the frameworks, so discovery and `--help` stay fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.members import get_kind, known_kinds

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("kind", "suffixes", "module"), [
    ("nhits", (".pth", ".pt", ".safetensors"), "nhits"),
    ("patchtst", (".pth", ".pt", ".safetensors"), "patchtst"),
    ("torch", (".pth", ".pt", ".safetensors"), "user_torch"),  # not `torch.py`: it would read as torch itself
    ("xgboost", (".pkl", ".joblib", ".json", ".ubj"), "xgboost"),
    ("lightgbm", (".pkl", ".joblib", ".txt"), "lightgbm"),
    ("sklearn", (".pkl", ".joblib"), "sklearn"),
])
def test_each_kind_registers_itself_from_its_own_module(kind, suffixes, module):
    registered = get_kind(kind)
    assert registered.suffixes == suffixes
    assert registered.load.__module__ == registered.reference.__module__ == f"convert.members.{module}"


def test_importing_the_registry_loads_no_framework():
    code = "import convert.members, sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                           env=env, cwd=ROOT).stdout))
    heavy = {"torch", "sklearn", "xgboost", "lightgbm", "onnx", "skl2onnx", "onnxmltools", "scipy", "pandas"}
    assert known_kinds() and not heavy & loaded, heavy & loaded
