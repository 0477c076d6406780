"""One error family: every error ensemble-onnx raises on purpose derives from `runtime.EnsembleOnnxError`
and carries the exit code the command line uses, and a refusal on the command line is its message and that
code, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import runtime
from convert import errors
from convert.cli import main
from runtime.contract import FieldError
from runtime.errors import RepeatedKeyError
from runtime.monitor.compare import IncomparableError
from runtime.signing import SignatureError

# (error class, also a ValueError for callers that caught it as one before the family existed)
FAMILY = [
    (runtime.ArtifactError, False),
    (runtime.InputError, True),
    (IncomparableError, False),
    (FieldError, True),
    (RepeatedKeyError, True),
    (SignatureError, True),
    (errors.ConvertError, False),
    (errors.PlanError, False),
    (errors.MetadataError, False),
    (errors.StateDictError, False),
    (errors.ModelFileError, False),
    (errors.UnsafeFileError, False),
    (errors.UnsupportedModelError, False),
    (errors.ParityError, False),
    (errors.VerifyError, False),
    (errors.FrameworkError, False),
    (errors.UserCodeError, False),
    (errors.SigningError, False),
    (errors.OutputError, False),
]


@pytest.mark.parametrize(("cls", "is_value_error"), FAMILY, ids=[c.__name__ for c, _ in FAMILY])
def test_every_error_is_a_refusal_of_the_one_family(cls, is_value_error):
    assert issubclass(cls, runtime.EnsembleOnnxError)
    assert cls.exit_code == 1
    assert issubclass(cls, ValueError) is is_value_error


def test_the_table_lists_every_convert_error():
    defined = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.ConvertError)}
    assert defined <= {cls for cls, _ in FAMILY}


@pytest.mark.parametrize(("command", "error", "names"), [
    (["predict", "{folder}"], "ArtifactError", "manifest.json"),
    (["verify", "{folder}", "--models", "{folder}"], "ArtifactError", "manifest.json"),
])
def test_a_refusal_on_the_command_line_exits_1_with_its_message(tmp_path, command, error, names):
    result = CliRunner().invoke(main, [a.format(folder=tmp_path) for a in command])
    assert result.exit_code == 1, result.output
    assert f"Error: {error}: " in result.output and names in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_the_command_line_loads_no_numeric_stack_until_a_command_runs():
    """The refusal handler imports the error family when an error happens, so `--help` stays light."""
    root = Path(__file__).resolve().parents[2]
    code = "import convert.cli, json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                           cwd=root, env={**os.environ, "PYTHONPATH": str(root)}).stdout))
    assert not {"numpy", "onnxruntime", "runtime"} & loaded
