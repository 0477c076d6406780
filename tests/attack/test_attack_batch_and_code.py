"""Attacks on score's stdin, NaN and passthrough, and on the torch code record (docs/backfill.md, docs/cli.md,
docs/artifacts.md): each test is a defect found by using them carelessly or with hostile intent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from model_cache import REPO

from convert.cli import main


def cli(*args: object, stdin: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


def _csv_rows(artifacts: Path, n: int) -> bytes:
    features = json.loads((artifacts / "manifest.json").read_text())["feature_names"]
    row = ",".join("0.5" for _ in features)
    return ("symbol," + ",".join(features) + "\n" + "".join(f"S{i},{row}\n" for i in range(n))).encode()


# ------------------------------------------------------------------------------------------ the commands


@pytest.mark.parametrize("command", ["compare", "drift", "evaluate"])
def test_rows_option_left_out_is_a_usage_error(demo_artifacts, command):
    # click 8.5 let a required option with an explicit default=None be left out: the command ran on None.
    builds = (demo_artifacts, demo_artifacts) if command == "compare" else (demo_artifacts,)
    result = cli(command, *builds)
    assert result.exit_code == 2, result.output
    assert "Missing option '-i'" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ score - (stdin)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_score_stdin_killed_leaves_no_copy(demo_artifacts, tmp_path, sig):
    """A plain `kill` (or a closed terminal) while stdin is being spooled: the copy of the input goes too."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool), "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), "-", "-o",
                             str(tmp_path / "o.csv"), "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        assert proc.stdin is not None
        proc.stdin.write(_csv_rows(demo_artifacts, 2000))  # stdin stays open: the run is spooling when killed
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not any(p.name == "stdin" for p in spool.glob("ensemble-onnx-stdin-*/*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the spool never appeared"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert list(spool.glob("ensemble-onnx-stdin-*")) == []
    assert b"Traceback" not in err and not (tmp_path / "o.csv").exists()
