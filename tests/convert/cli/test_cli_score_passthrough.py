"""score's passthrough columns come back as the user gave them: type, values, and a missing value missing
(docs/backfill.md), across input and output formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from convert.cli import main
from tests.variants import by_id, cached_folder

FEATURES = [f"f{i}" for i in range(8)]
X = np.random.default_rng(2).standard_normal((3, 8))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("passthrough")
    out = root / "art"
    result = CliRunner().invoke(main, ["convert", str(cached_folder(by_id("lightgbm-default-txt"), root)), "-o",
                                       str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def _write(path: Path, ids: list) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"id": pa.array(ids, from_pandas=False),
                                 **{f: X[:, j] for j, f in enumerate(FEATURES)}}), path)
    elif path.suffix == ".csv":
        path.write_text("id," + ",".join(FEATURES) + "\n" + "".join(
            f"{i},{','.join(map(repr, row.tolist()))}\n" for i, row in zip(ids, X, strict=True)))
    else:  # Python's json writes NaN for a missing float
        path.write_text("".join(json.dumps({"id": i, **dict(zip(FEATURES, row.tolist(), strict=True))}) + "\n"
                                for i, row in zip(ids, X, strict=True)))


def _read(path: Path) -> tuple[object, list]:
    """(the id column's type, its values as the output format spells them)."""
    if path.suffix == ".parquet":
        column = pq.read_table(path).column("id")
        return column.type, column.to_pylist()
    if path.suffix == ".csv":
        return "text", [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    return "json", [json.loads(line)["id"] for line in path.read_text().splitlines()]


NAN = float("nan")


@pytest.mark.parametrize(("source", "ids", "out", "kind", "expect"), [
    # CSV cells are text: they come back as written, an empty cell stays empty, 'NaN' stays 'NaN'
    ("in.csv", ["1", "", "NaN"], "o.csv", "text", ['"1"', "", '"NaN"']),
    ("in.csv", ["1", "", "007"], "o.parquet", pa.string(), ["1", None, "007"]),
    ("in.csv", ["1", "", "2"], "o.jsonl", "json", ["1", None, "2"]),
    # Parquet keeps its types; a null stays null, a NaN stays NaN
    ("in.parquet", [1, None, 3], "o.parquet", pa.int64(), [1, None, 3]),
    ("in.parquet", [1.5, NAN, None], "o.parquet", pa.float64(), [1.5, NAN, None]),
    ("in.parquet", [1, None, 3], "o.csv", "text", ["1", "", "3"]),
    # JSON lines: integers stay integers; NaN beside them is a missing integer, null as JSON and Parquet spell it
    ("in.jsonl", [1, NAN, 2], "o.jsonl", "json", [1, None, 2]),
    ("in.jsonl", [1, NAN, 2], "o.parquet", pa.int64(), [1, None, 2]),
    ("in.jsonl", [1, NAN, 2], "o.csv", "text", ["1", "", "2"]),
    ("in.jsonl", [1.5, NAN, 2.5], "o.parquet", pa.float64(), [1.5, NAN, 2.5]),
    # integers beside real floats: kept as the JSON text of each, never 1.0 or a rounded big id
    ("in.jsonl", [2**60 + 1, 1.5, 3], "o.parquet", pa.string(), [str(2**60 + 1), "1.5", "3"]),
])
def test_passthrough_comes_back_as_given(artifacts, tmp_path, source, ids, out, kind, expect):
    src = tmp_path / source
    _write(src, ids)
    result = CliRunner().invoke(main, ["score", str(artifacts), str(src), "-o", str(tmp_path / out), "-q",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    got_kind, got = _read(tmp_path / out)
    assert got_kind == kind
    assert list(map(repr, got)) == list(map(repr, expect))  # repr: 1 is not 1.0, and NaN is NaN
