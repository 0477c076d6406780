"""score and verify read their rows from stdin (`-`), as predict does (docs/cli.md)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from convert.cli import main
from tests.variants import by_id, cached_folder

FEATURES = [f"f{i}" for i in range(8)]
X = np.random.default_rng(9).standard_normal((5, 8))


def cli(*args: object, stdin: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stdin")
    models = cached_folder(by_id("lightgbm-default-txt"), root)
    result = cli("convert", models, "-o", root / "art", "-q")
    assert result.exit_code == 0, result.output
    return models, root / "art"


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The spool folder goes here, so a test can see that none is left behind."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _bytes(fmt: str) -> bytes:
    table = pa.table({"symbol": [f"S{i}" for i in range(len(X))], **{f: X[:, j] for j, f in enumerate(FEATURES)}})
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in table.to_pylist()).encode()
    return ("symbol," + ",".join(FEATURES) + "\n" + "".join(
        f"S{i},{','.join(map(repr, row.tolist()))}\n" for i, row in enumerate(X))).encode()


@pytest.mark.parametrize(("fmt", "flag"), [("csv", ()), ("jsonl", ("-i",)), ("parquet", ())])
def test_score_reads_stdin_as_the_file(build, tmp_path, private_tmp, fmt, flag):
    source = tmp_path / f"in.{fmt}"
    source.write_bytes(_bytes(fmt))
    result = cli("score", build[1], *flag, "-", "-o", tmp_path / "piped.parquet", "-q", "--json", "--workers", "1",
                 stdin=source.read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input"] == "stdin"
    assert cli("score", build[1], source, "-o", tmp_path / "file.parquet", "-q", "--workers", "1").exit_code == 0
    assert pq.read_table(tmp_path / "piped.parquet").equals(pq.read_table(tmp_path / "file.parquet"))
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(("stdin", "expect"), [
    (b"", "stdin: no rows in the input."),
    (b"\n  \n", "stdin: no rows in the input."),
    (b"a,b\n1,2\n", "stdin: missing feature column(s)"),
    (b"symbol," + ",".join(FEATURES).encode() + b"\nA,1,2,3,4,5,6,7,inf\n",
     "stdin: data row 1, column 'f7': 'inf' is not finite"),
    (b"PAR1 not really parquet", "stdin: cannot be read as parquet"),
])
def test_score_refuses_bad_stdin_naming_stdin(build, tmp_path, private_tmp, stdin, expect):
    result = cli("score", build[1], "-", "-o", tmp_path / "o.csv", stdin=stdin)
    assert result.exit_code == 1 and expect in result.output, result.output
    assert str(private_tmp) not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.csv").exists() and list(private_tmp.iterdir()) == []


def test_verify_reads_its_rows_from_stdin(build):
    models, artifacts = build
    result = cli("verify", artifacts, "--models", models, "-i", "-", "-q", "--json", stdin=_bytes("csv"))
    assert result.exit_code == 0, result.output
    alone = cli("verify", artifacts, "--models", models, "-q", "--json")
    assert json.loads(result.stdout)["parity"]["rows"] == json.loads(alone.stdout)["parity"]["rows"] + len(X)
    result = cli("verify", artifacts, "--models", models, "-i", "-", "-q", stdin=b"")
    assert result.exit_code == 1 and "stdin: no rows in the input." in result.output


def test_score_stdin_without_a_temporary_folder_says_so(build, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no" / "such" / "folder"))
    result = cli("score", build[1], "-", "-o", tmp_path / "o.csv", stdin=_bytes("csv"))
    assert result.exit_code == 3 and "stdin: no temporary folder to copy it to" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.csv").exists()
