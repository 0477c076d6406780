"""What every command shares, through the real CLI: help that describes, the version, `inspect`'s refusal of
a file that is no state_dict, and `convert --json` writing the manifest alone on stdout."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convert.cli import main


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


# ------------------------------------------------------------------------------------- every command

@pytest.mark.parametrize("command", ["convert", "verify", "predict", "inspect", "bench"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Options:" in result.output
    assert len(result.output.split("Options:")[0].split()) > 12  # a description, not just the usage line


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("ensemble-onnx, version ")


def test_inspect_refuses_a_file_that_is_no_state_dict(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x80\x04not a torch file")
    result = invoke("inspect", bad)
    assert result.exit_code == 1 and "model.pth" in result.output


def test_convert_json_is_the_manifest_alone_on_stdout(demo_models, tmp_path):
    result = invoke("convert", demo_models, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "parity gate" in result.stderr and "next: ensemble-onnx predict" in result.stderr

