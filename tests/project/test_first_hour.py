"""A new user's first hour (issue 26): long commands say what they are doing before the seconds of loading the
build stack, and a missing build stack is answered with how to install it from the wheel or a clone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Runs a command where torch cannot be imported, and writes "IMPORT torch" to stderr at the attempt: the order of
# stderr's lines shows what was said before the build stack was reached, whatever the machine's speed.
BLOCKED = textwrap.dedent("""
    import runpy, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                sys.stderr.write(f"IMPORT {name}\\n")
                sys.stderr.flush()
                raise ImportError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Block())
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""")


def run_blocked(module: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", BLOCKED, module, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=120, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("module", "args", "first"), [
    ("convert.cli", ("convert", "models", "-o", "out"), "loading the build stack"),
    ("convert.cli", ("verify", "artifacts", "--models", "models"), "loading the build stack"),
    ("convert.cli", ("bench", "artifacts", "--models", "models", "--out", "bench"), "loading the build stack"),
    ("convert.cli", ("inspect", "models"), "loading the build stack"),
    ("convert.demo", ("new-models",), "training the demo ensemble"),
])
def test_long_commands_say_what_they_do_before_loading_the_build_stack(tmp_path, module, args, first):
    (tmp_path / "models").mkdir()
    (tmp_path / "artifacts").mkdir()
    result = run_blocked(module, *args, cwd=tmp_path)
    lines = result.stderr.splitlines()
    said = next(i for i, line in enumerate(lines) if first in line)
    reached = next(i for i, line in enumerate(lines) if line.startswith("IMPORT torch"))
    assert said < reached, result.stderr
    # Missing, the build stack is named with how to install it until the package is published.
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "torch" in lines[-1] and "pip install --find-links dist/ 'ensemble-onnx[convert]'" in lines[-1], lines[-1]
    assert "pip install '.[convert]' in a clone" in lines[-1], lines[-1]


def _rows(ens, bad_row: int, bad_value: object) -> list[dict[str, object]]:
    rows = [{name: 0.5 for name in ens.feature_names} for _ in range(3)]
    rows[bad_row][ens.feature_names[4]] = bad_value
    return rows


@pytest.mark.parametrize("form", ["dict", "list", "DataFrame", "array", "object array"])
@pytest.mark.parametrize(("bad_row", "bad_value"), [(0, float("nan")), (2, float("inf")), (1, "n/a")])
def test_a_refused_row_is_named_in_input_error_row_whatever_the_form(demo_artifacts, form, bad_row, bad_value):
    """docs/runtime.md: `error.row` holds the row at fault, for every form predict takes."""
    import numpy as np
    import pandas as pd

    import runtime

    ens = runtime.load(demo_artifacts)
    rows = _rows(ens, bad_row, bad_value)
    if form == "dict":
        rows, bad_row = rows[bad_row], 0  # one mapping is row 0
    given = {"dict": lambda: rows, "list": lambda: rows, "DataFrame": lambda: pd.DataFrame(rows),
             "array": lambda: np.array([[r[n] for n in ens.feature_names] for r in rows], dtype=object if isinstance(
                 bad_value, str) else np.float64),
             "object array": lambda: np.array([[r[n] for n in ens.feature_names] for r in rows], dtype=object)}[form]()
    with pytest.raises(runtime.InputError) as caught:
        ens.predict(given)
    assert caught.value.row == bad_row and f"row {bad_row}" in str(caught.value), str(caught.value)
    assert ens.feature_names[4] in str(caught.value)


@pytest.mark.parametrize("rows", [[{"rsi_14": 1.0}], {"macd": 1.0}])
def test_a_row_missing_features_is_named_in_input_error_row(demo_artifacts, rows):
    import runtime

    ens = runtime.load(demo_artifacts)
    with pytest.raises(runtime.InputError) as caught:
        ens.predict(rows)
    assert caught.value.row == 0 and "row 0" in str(caught.value)
