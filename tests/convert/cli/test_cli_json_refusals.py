"""A command run with --json says a refusal on stdout too, as one strict JSON object a machine can read
(`{"error": {"type", "message", "exit_code"}}`; the one line on stderr as ever), and a pinned build id that is no
build id is refused at once, as a usage error naming the option, before anything is loaded."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from domain_rows import typical_rows

import runtime
from convert.cli import main

WRONG = "ab" * 32  # a well-formed build id no build has


@pytest.fixture(scope="module")
def rows_csv(demo_artifacts, tmp_path_factory):
    ens = runtime.load(demo_artifacts)
    path = tmp_path_factory.mktemp("json_refusals") / "rows.csv"
    rows = typical_rows(ens, 5, seed=1)
    lines = [",".join(ens.feature_names), *(",".join(repr(float(v)) for v in r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def commands(artifacts, rows, models, out):
    return {
        "inspect": ["inspect", artifacts],
        "verify": ["verify", artifacts, "--models", models],
        "drift": ["drift", artifacts, "-i", rows],
        "evaluate": ["evaluate", artifacts, "-i", rows],
        "score": ["score", artifacts, rows, "-o", out / "scores.csv"],
    }


@pytest.mark.parametrize("command", ["inspect", "verify", "drift", "evaluate", "score"])
def test_a_refusal_under_json_is_a_json_object_on_stdout(command, demo_artifacts, demo_models, rows_csv, tmp_path):
    args = commands(demo_artifacts, rows_csv, demo_models, tmp_path)[command]
    result = CliRunner().invoke(main, [*map(str, args), "--expect-build-id", WRONG, "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    said = json.loads(result.stdout)
    assert said["error"]["exit_code"] == result.exit_code and said["error"]["type"] == "ArtifactError"
    assert WRONG in said["error"]["message"] and said["error"]["message"] in result.stderr
    assert not (tmp_path / "scores.csv").exists()


def test_compare_under_json_says_its_refusal_on_stdout(demo_artifacts, rows_csv):
    result = CliRunner().invoke(main, ["compare", str(demo_artifacts), str(demo_artifacts), "-i", str(rows_csv),
                                       "--expect-build-id", WRONG, "--expect-build-id", WRONG, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["type"] == "ArtifactError"


def test_without_json_stdout_stays_empty_on_a_refusal(demo_artifacts):
    result = CliRunner().invoke(main, ["inspect", str(demo_artifacts), "--expect-build-id", WRONG])
    assert result.exit_code == 1 and result.stdout == "" and "ArtifactError: " in result.stderr


@pytest.mark.parametrize("pin", ["abc", "ab" * 31 + "zz", "ab" * 33, " " + "ab" * 32, ""])
@pytest.mark.parametrize("command", ["inspect", "verify", "drift", "evaluate", "score", "compare"])
def test_a_pin_that_is_no_build_id_is_a_usage_error_naming_the_option(command, pin, demo_artifacts, demo_models,
                                                                        rows_csv, tmp_path):
    base = commands(demo_artifacts, rows_csv, demo_models, tmp_path).get(
        command, ["compare", demo_artifacts, demo_artifacts, "-i", rows_csv])
    result = CliRunner().invoke(main, [*map(str, base), "--expect-build-id", pin])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--expect-build-id" in result.stderr and "is not a build id (64 hex digits" in result.stderr
    assert not (tmp_path / "scores.csv").exists()


def test_a_refusal_after_the_result_leaves_stdout_one_json_object(demo_artifacts, rows_csv):
    """drift prints its report, then --fail-psi refuses (the demo build has no training bins: exit 3): stdout is
    still one JSON object, the report; the refusal is the exit code and the line on stderr."""
    result = CliRunner().invoke(main, ["drift", str(demo_artifacts), "-i", str(rows_csv), "--fail-psi", "0.25",
                                       "--json", "-q"])
    assert result.exit_code == 3 and "has no training bins" in result.stderr, result.output
    said = json.loads(result.stdout)
    assert "error" not in said and set(said["features"]) == set(runtime.load(demo_artifacts).feature_names)


@pytest.mark.parametrize("command", ["inspect", "drift", "compare"])
def test_a_pin_in_upper_case_names_the_same_build(command, demo_artifacts, demo_models, rows_csv, tmp_path):
    """The pin passes the check as 64 hex digits in either case; it then pins the build whose id it spells,
    not "build abc..., not the expected build ABC..."."""
    pin = runtime.load(demo_artifacts).build_id.upper()
    base = commands(demo_artifacts, rows_csv, demo_models, tmp_path).get(
        command, ["compare", demo_artifacts, demo_artifacts, "-i", rows_csv])
    pins = ["--expect-build-id", pin] * (2 if command == "compare" else 1)
    result = CliRunner().invoke(main, [*map(str, base), *pins, "-q"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("args", "kind"), [
    (["inspect", "{gone}", "--json"], "BadParameter"),                       # the folder named before --json
    (["verify", "{gone}", "--json"], "BadParameter"),
    (["drift", "{gone}", "-i", "{gone}.csv", "--json"], "BadParameter"),
    (["compare", "{gone}", "{tmp}", "-i", "rows.csv", "--json"], "BadParameter"),
    (["evaluate", "{tmp}", "--json"], "MissingParameter"),                    # no -i
    (["score", "{gone}", "rows.csv", "-o", "{tmp}/out.csv", "--json"], "BadParameter"),
    (["bench", "{gone}", "--json"], "BadParameter"),
    (["inspect", "{tmp}", "--json", "--expect-build-id", "１２"], "BadParameter"),  # full-width digits
    (["inspect", "{tmp}", "--json", "--expect-build-id", "ab" * 32 + "\n"], "BadParameter"),
    (["inspect", "--json", "{tmp}", "--bogus"], "NoSuchOption"),
    (["compare", "{tmp}", "{tmp}", "-i", "-", "--expect-build-id", WRONG, "--json"], "UsageError"),  # one pin
])
def test_a_usage_error_under_json_is_a_json_object_on_stdout_too(args, kind, tmp_path):
    """A usage error (exit 2) found before the --json option was read (a missing folder named first) printed
    nothing on stdout: a machine reading it got no object."""
    args = [a.format(gone=tmp_path / "gone", tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = json.loads(result.stdout)
    assert said == {"error": {"type": kind, "message": said["error"]["message"], "exit_code": 2}}
    assert said["error"]["message"] in result.stderr


@pytest.mark.parametrize("args", [
    ["inspect", "{gone}"],                         # no --json
    ["inspect", "{tmp}", "--", "--json"],          # --json after "--" is an argument, not the option
    ["predict", "{gone}", "--json"],               # predict's --json is its JSON lines: a refusal prints nothing
])
def test_a_usage_error_without_json_leaves_stdout_empty(args, tmp_path):
    result = CliRunner().invoke(main, [a.format(gone=tmp_path / "gone", tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and result.stdout == "", result.output


@pytest.mark.parametrize(("args", "code", "said"), [
    (["inspect", "{gone}", "--json"], 2, "Error: Invalid value for 'PATH': Path '{gone}' does not exist."),
    (["inspect", "{build}", "--json", "--expect-build-id", WRONG], 1, "Error: ArtifactError: {build}: build "),
    (["inspect", "{build}", "--json"], 3, "Error: CannotRunError: stdout is closed (started with >&-)"),
])
def test_a_refusal_under_json_with_stdout_closed_is_said_on_stderr(args, code, said, demo_artifacts, tmp_path):
    """Started with stdout closed (>&-), the refusal's JSON object could not be written: that raised again in
    the refusal's handler, a traceback in place of the one line on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    names = {"gone": tmp_path / "gone", "build": demo_artifacts}
    done = subprocess.run([sys.executable, "-m", "convert.cli", *(a.format(**names) for a in args)],
                          preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
    assert said.format(**names) in done.stderr.strip().splitlines()[-1]
