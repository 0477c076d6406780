"""Attacks on the serving and operating side, as a careless user and as an attacker would try them, each
one a bug that was found and fixed: crafted ONNX bytes, hostile inputs to the Ensemble, and the `score`,
`compare`, `drift` and `evaluate` commands on files with odd schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
from domain_rows import centre, typical_rows

from runtime import protowire
from runtime.artifacts import ArtifactError, _refuse_external_data


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def _ld(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _nested_model(depth: int) -> bytes:
    """A ModelProto whose graph nests `depth` subgraphs (graph.node.attribute.g), a few bytes per level."""
    graph = _ld(5, _ld(8, b"w"))  # one initializer, stored inline
    for _ in range(depth):
        graph = _ld(1, _ld(5, _ld(6, graph)))
    return _ld(7, graph)


def test_deeply_nested_subgraphs_are_refused_not_a_recursion_error():
    # Found: 5,000 nested subgraphs (60 KB) raised RecursionError out of runtime.load instead of ArtifactError.
    model = _nested_model(5000)
    with pytest.raises(ValueError, match="nested"):
        protowire.external_tensors(model)
    with pytest.raises(ArtifactError, match="g.onnx: not a readable ONNX model"):
        _refuse_external_data(model, Path("g.onnx"))
    assert protowire.external_tensors(_nested_model(protowire.MAX_GRAPH_DEPTH)) == []


# ----------------------------------------------------------------------------------- score: odd inputs

def _score(artifacts: Path, input_path: Path, output: Path, *args: str):
    from click.testing import CliRunner

    from convert.cli import main

    return CliRunner().invoke(main, ["score", str(artifacts), str(input_path), "-o", str(output), "-q",
                                     "--workers", "1", *args])


def _columns(artifacts: Path, n: int = 6) -> dict:
    """n rows the build takes (inside its proven domain), by feature."""
    import runtime

    ens = runtime.load(artifacts)
    return dict(zip(ens.feature_names, typical_rows(ens, n, seed=3).T, strict=True))


def _refused(result, *named: str) -> None:
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    for text in named:
        assert text in result.output, result.output


@pytest.mark.parametrize("arrow_type, value", [("int64", 2**53 + 1), ("uint64", 2**64 - 1)])
def test_integers_past_float_precision_are_scored_as_their_nearest_float(demo_artifacts, tmp_path, arrow_type, value):
    # Found: pyarrow's safe cast refused 2**53 + 1 with ArrowInvalid: an internal error, not a score.
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import runtime

    cols = _columns(demo_artifacts)
    first = next(iter(cols))
    cols[first] = pa.array([value] * len(cols[first]), type=getattr(pa, arrow_type)())
    pq.write_table(pa.table(cols), tmp_path / "in.parquet")
    # Read as its nearest float, then refused by the demo's input domain (its members compute), by name.
    result = _score(demo_artifacts, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert result.exit_code == 1 and f"feature '{first}': {float(value)!r} is outside [" in result.output, result.output
    cols[first] = pa.array([1] * len(cols[first]), type=getattr(pa, arrow_type)())  # the same type, in the domain
    pq.write_table(pa.table(cols), tmp_path / "in.parquet")
    result = _score(demo_artifacts, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert result.exit_code == 0, result.output
    ens = runtime.load(demo_artifacts)
    x = np.column_stack([np.asarray(cols[f].to_pylist() if f == first else cols[f], dtype=np.float64)
                         for f in ens.feature_names])
    out = pq.read_table(tmp_path / "out.parquet")
    expected = ens.predict_proba(x)
    for k, c in enumerate(ens.classes):
        np.testing.assert_array_equal(out.column(f"p_{c}").to_numpy(), expected[:, k])


@pytest.mark.parametrize("content, named", [
    (b'GOOD\n{"x": "\xe9"}\n', "line 2: not UTF-8"),
    (b"[" * 100_000 + b"\n", "line 1: not a JSON object (nested too deeply"),
    (b"REPEATED\n", "line 1: key 'FIRST' given more than once"),
    (b"GOOD\n\nREPEATED\n", "line 3: key 'FIRST' given more than once"),  # its line, not data row 2
])
def test_hostile_json_lines_are_refused_by_line(demo_artifacts, tmp_path, content, named):
    # Found: a non-UTF-8 byte raised UnicodeDecodeError, deep nesting RecursionError (both internal errors),
    # and a repeated key was scored with its last value, silently.
    import json

    cols = _columns(demo_artifacts, 1)
    first = next(iter(cols))
    good = json.dumps({f: float(v[0]) for f, v in cols.items()}).encode()
    repeated = good[:-1] + b', "%s": 2.0}' % first.encode()
    (tmp_path / "in.jsonl").write_bytes(content.replace(b"GOOD", good).replace(b"REPEATED", repeated))
    result = _score(demo_artifacts, tmp_path / "in.jsonl", tmp_path / "out.parquet")
    _refused(result, "in.jsonl", named.replace("FIRST", first))
    assert not (tmp_path / "out.parquet").exists()


def test_the_default_rejects_file_is_never_the_input(demo_artifacts, tmp_path):
    # Found: scoring `x.rejects.parquet` into `x.parquet` with --on-error skip --force wrote the rejects over
    # the input (the default rejects path was not checked against it).
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(demo_artifacts)
    next(iter(cols.values()))[2] = np.nan
    source = tmp_path / "x.rejects.parquet"
    pq.write_table(pa.table(cols), source)
    before = source.read_bytes()
    result = _score(demo_artifacts, source, tmp_path / "x.parquet", "--on-error", "skip", "--force")
    _refused(result, "x.rejects.parquet: is an input of this run")
    assert source.read_bytes() == before
    assert not (tmp_path / "x.parquet").exists()


def test_a_passthrough_column_named_row_or_reason_cannot_overwrite_the_rejects_row_number(demo_artifacts, tmp_path):
    # Found: an input column `row` replaced the rejects file's row numbers with its own values, silently.
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"row": list(range(100, 106)), **_columns(demo_artifacts)}
    cols[next(iter(_columns(demo_artifacts)))][3] = np.nan
    pq.write_table(pa.table(cols), tmp_path / "in.parquet")
    result = _score(demo_artifacts, tmp_path / "in.parquet", tmp_path / "out.parquet", "--on-error", "skip")
    _refused(result, "in.parquet", "['row']", "--keep")
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.rejects.parquet").exists()
    # Left out with --keep, the same file scores and the rejects name row 4.
    result = _score(demo_artifacts, tmp_path / "in.parquet", tmp_path / "out.parquet", "--on-error", "skip",
                    "--keep", "")
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "out.rejects.parquet").column("row").to_pylist() == [4]


# ------------------------------------------------------------------------------- the Ensemble's methods

@pytest.mark.parametrize("rows", ["array", "dataframe"])
def test_drift_on_no_rows_is_refused(demo_artifacts, rows):
    # Found: ens.drift(np.empty((0, F))) raised ZeroDivisionError (and warned of 0/0) instead of InputError.
    import numpy as np
    import pandas as pd

    import runtime

    ens = runtime.load(demo_artifacts)
    empty = np.empty((0, len(ens.feature_names)))
    with pytest.raises(runtime.InputError, match="no rows"):
        ens.drift(empty if rows == "array" else pd.DataFrame(empty, columns=list(ens.feature_names)))


def test_one_row_at_the_training_mean_is_no_drift_but_a_constant_feed_is(demo_artifacts):
    # Found: without bins, a single row (standard deviation 0) made every feature 'drift' by its spread
    # ratio: a service checking each bar it scores was always alarmed. The spread now needs significance.
    import numpy as np

    import runtime

    ens = runtime.load(demo_artifacts)
    stats = ens._statistics
    assert stats is not None and not stats.has_bins.any()  # the demo build: mean and scale only
    one = ens.drift(stats.mean[None, :])
    assert one["status"] == "ok", one["drift"]
    assert all(f["spread_ratio"] == 0.0 for f in one["features"].values())
    stuck = ens.drift(np.repeat(stats.mean[None, :], 200, axis=0))  # a feed stuck at one value
    assert stuck["status"] == "drift" and stuck["drift"] == list(ens.feature_names)


def test_drift_json_is_strict_json_when_values_overflow(demo_artifacts, tmp_path):
    # Found: rows near the float maximum overflowed the batch mean, and `drift --json` printed `Infinity`,
    # which no strict JSON parser reads.
    import json

    from click.testing import CliRunner

    import runtime
    from convert.cli import main

    features = runtime.load(demo_artifacts).feature_names
    huge_row = ",".join(["1e308"] * len(features))
    (tmp_path / "rows.csv").write_text(",".join(features) + "\n" + "\n".join([huge_row] * 3))
    result = CliRunner().invoke(main, ["drift", str(demo_artifacts), "--input",
                                      str(tmp_path / "rows.csv"), "--json"])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["status"] == "drift"


@pytest.mark.parametrize("command", ["compare", "drift", "evaluate"])
@pytest.mark.parametrize("layout", ["header.csv", "zero.parquet"])
def test_monitoring_commands_refuse_a_file_without_rows_by_name(demo_artifacts, tmp_path, command, layout):
    # Found: `compare` on a CSV with a header and no rows raised IndexError (an internal error).
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    import runtime
    from convert.cli import main

    features = list(runtime.load(demo_artifacts).feature_names)
    data = tmp_path / layout
    if layout.endswith(".csv"):
        data.write_text(",".join(features + ["label"]) + "\n")
    else:
        empty = {**{f: pa.array([], pa.float64()) for f in features}, "label": pa.array([], pa.string())}
        pq.write_table(pa.table(empty), data)
    args = {"compare": ["compare", str(demo_artifacts), str(demo_artifacts), "--data", str(data)],
            "drift": ["drift", str(demo_artifacts), "--input", str(data)],
            "evaluate": ["evaluate", str(demo_artifacts), "--data", str(data)]}[command]
    _refused(CliRunner().invoke(main, args), f"{data}: no rows in the input")


def test_compare_report_into_a_missing_folder_is_refused_by_name(demo_artifacts, tmp_path):
    # Found: FileNotFoundError from the report writer, reported as an internal error.
    from click.testing import CliRunner

    from convert.cli import main

    data = tmp_path / "rows.csv"
    data.write_text(_csv_text(demo_artifacts))
    report = tmp_path / "missing" / "report.html"
    result = CliRunner().invoke(main, ["compare", str(demo_artifacts), str(demo_artifacts), "--data", str(data),
                                       "--report", str(report)])
    _refused(result, f"{report}: the folder {report.parent} does not exist")  # before any row is scored


# ------------------------------------------------------------------------------- text a careless user saves

def _csv_text(artifacts: Path, first_cell: str | None = None) -> str:
    """A CSV of one row the build takes (its domain's centre), its first cell `first_cell` where given."""
    import runtime

    row = centre(runtime.load(artifacts))
    cells = [repr(v) for v in row.values()]
    return ",".join(row) + "\n" + ",".join([cells[0] if first_cell is None else first_cell, *cells[1:]]) + "\n"


def test_predict_reads_a_csv_saved_with_a_byte_order_mark(demo_artifacts):
    # Found: Excel's "CSV UTF-8" starts with a BOM; the first feature was then reported missing.
    from click.testing import CliRunner

    from convert.cli import main

    text = _csv_text(demo_artifacts)
    plain = CliRunner().invoke(main, ["predict", str(demo_artifacts)], input=text)
    marked = CliRunner().invoke(main, ["predict", str(demo_artifacts)], input="\ufeff" + text)
    assert plain.exit_code == 0 and marked.exit_code == 0, marked.output
    assert marked.stdout == plain.stdout


def test_score_reads_json_lines_saved_with_a_byte_order_mark(demo_artifacts, tmp_path):
    import json

    import pyarrow.parquet as pq

    import runtime

    line = json.dumps(centre(runtime.load(demo_artifacts))) + "\n"  # a row the build takes
    (tmp_path / "plain.jsonl").write_text(line * 3, encoding="utf-8")
    (tmp_path / "marked.jsonl").write_text("\ufeff" + line * 3, encoding="utf-8")
    for name in ("plain", "marked"):
        result = _score(demo_artifacts, tmp_path / f"{name}.jsonl", tmp_path / f"{name}.parquet")
        assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "marked.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))


@pytest.mark.parametrize("cell", ["1_0", "\u0661"])  # Python's float reads both: 10.0 and 1.0
def test_a_cell_python_but_no_file_format_reads_as_a_number_is_refused(demo_artifacts, tmp_path, cell):
    # Found: `predict` scored "1_0" as 10.0; `score` did too when another cell of the column was bad.
    from click.testing import CliRunner

    from convert.cli import main

    result = CliRunner().invoke(main, ["predict", str(demo_artifacts)], input=_csv_text(demo_artifacts, cell))
    _refused(result, "line 2", f"{cell!r} is not a number")
    (tmp_path / "in.csv").write_text(_csv_text(demo_artifacts, cell) + _csv_text(demo_artifacts, "x").split("\n", 1)[1],
                                     encoding="utf-8")
    result = _score(demo_artifacts, tmp_path / "in.csv", tmp_path / "out.parquet")
    _refused(result, "in.csv: data row 1", f"{cell!r} is not a number")


# -------------------------------------------------------------------------- bytes sent to workers

@pytest.mark.parametrize("damage", ["value None", "value memoryview", "key int"])
def test_verify_files_refuses_what_is_not_names_to_bytes(demo_artifacts, damage):
    # Found: a None value, a memoryview or an int key raised TypeError deep inside the checks.
    from runtime.artifacts import read_files, verify_files

    files = read_files(demo_artifacts)
    graph = next(rel for rel in files if rel.endswith(".onnx"))
    sent = {"value None": {**files, graph: None}, "value memoryview": {**files, graph: memoryview(files[graph])},
            "key int": {**files, 1: b""}}[damage]
    with pytest.raises(ArtifactError, match="worker-0"):
        verify_files(sent, "worker-0")
    assert verify_files({k: bytearray(v) for k, v in files.items()}, "worker-0").build_id == \
        verify_files(files, "worker-0").build_id


# ------------------------------------------------------------------------------------------ evaluate

def _labelled(artifacts: Path, path: Path, timestamp: str) -> Path:
    import runtime

    ens = runtime.load(artifacts)
    row = centre(ens)  # a row the build takes: the times are under test
    path.write_text(",".join([*row, "label", "timestamp"]) + "\n"
                    + ",".join([*map(repr, row.values()), ens.classes[0], timestamp]) + "\n")
    return path


@pytest.mark.parametrize("timestamp, window, named", [
    ("1e20", "1d", "line 2, column 'timestamp': 1e+20 is outside the years 1 to 9999"),
    ("0001-01-01T00:00:00+01:00", "1d", "line 2, column 'timestamp': '0001-01-01T00:00:00+01:00' is outside"),
    ("2026-01-01", "1" + "0" * 400 + "d", "longer than 1000 years"),
])
def test_evaluate_refuses_times_no_date_has(demo_artifacts, tmp_path, timestamp, window, named):
    # Found: OverflowError / ValueError from datetime and float arithmetic, reported as internal errors.
    from click.testing import CliRunner

    from convert.cli import main

    data = _labelled(demo_artifacts, tmp_path / "rows.csv", timestamp)
    result = CliRunner().invoke(main, ["evaluate", str(demo_artifacts), "--data", str(data), "--window", window])
    assert result.exit_code in (1, 2), result.output
    assert "internal error" not in result.output and named in result.output, result.output


def test_a_window_reaching_back_before_year_one_is_named_by_its_first_row(demo_artifacts, tmp_path):
    # Found: a 1000-week window over a row of 0001-01-02 started in year -5: ValueError, an internal error.
    from click.testing import CliRunner

    from convert.cli import main

    data = _labelled(demo_artifacts, tmp_path / "rows.csv", "0001-01-02")
    result = CliRunner().invoke(main, ["evaluate", str(demo_artifacts), "--data", str(data), "--window", "1000w",
                                       "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert [w["start"] for w in json.loads(result.stdout)["windows"]] == ["0001-01-02T00:00:00+00:00"]


# ------------------------------------------------------------------------------------- huge batches

class _Recording:
    """The real onnxruntime session, with the row count of every call noted."""

    def __init__(self, session) -> None:
        self.session, self.rows = session, []

    def run(self, names, feeds):
        self.rows.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def test_a_huge_batch_is_run_in_bounded_chunks_and_errors_name_the_global_row(demo_artifacts, monkeypatch):
    # Found: predict_proba sent the caller's whole array to onnxruntime in one call: about 11 KB of
    # intermediates a row (530 MB peak at 40,000 rows), so a million-row backtest array needed ~11 GB.
    import numpy as np

    import runtime

    ens = runtime.load(demo_artifacts)
    whole = ens._session.run(None, {ens._session.get_inputs()[0].name: np.full((12, len(ens.feature_names)), 0.25)})
    monkeypatch.setattr(runtime, "RUN_CHUNK", 5)
    ens._session = recording = _Recording(ens._session)
    x = np.full((12, len(ens.feature_names)), 0.25)
    probabilities = ens.predict_proba(x)
    assert recording.rows == [5, 5, 2]
    np.testing.assert_allclose(probabilities, whole[0], rtol=0, atol=1e-6)
    x[8] = 1e308  # past the build's input domain: the refusal names the row among all 12, not within its chunk
    with pytest.raises(runtime.InputError, match=r"^row 8, feature 'rsi_14': 1e\+308 is outside"):
        ens.predict_proba(x)


@pytest.mark.parametrize("target, args", [("parity.json", ["--force"]), ("scores.parquet", []),
                                          ("scores.parquet", ["--on-error", "skip", "--rejects", "ARTIFACTS/r.csv"])])
def test_score_never_writes_into_the_artifacts_folder(artifacts_copy, tmp_path, target, args):
    # Found: `-o ARTIFACTS/parity.json --force` replaced a verified file with scores, and any new file there
    # made the next runtime.load refuse the folder as unlisted: the production build stopped serving.
    import pyarrow as pa
    import pyarrow.parquet as pq

    import runtime

    before = {p.name: p.read_bytes() for p in artifacts_copy.iterdir() if p.is_file()}
    pq.write_table(pa.table(_columns(artifacts_copy)), tmp_path / "in.parquet")
    output = (artifacts_copy / target) if "--rejects" not in args else (tmp_path / target)
    args = [a.replace("ARTIFACTS", str(artifacts_copy)) for a in args]
    _refused(_score(artifacts_copy, tmp_path / "in.parquet", output, *args), "inside the artifacts folder")
    assert {p.name: p.read_bytes() for p in artifacts_copy.iterdir() if p.is_file()} == before
    runtime.load(artifacts_copy)  # still serves


@pytest.mark.parametrize("source, named", [("lists.jsonl", "['tags'] hold lists or objects"),
                                           ("latin1.csv", "save the file as UTF-8")])
def test_a_passthrough_csv_cannot_hold_is_refused_naming_the_column(demo_artifacts, tmp_path, source, named):
    # Found: a list passthrough (JSON lines) or a column of non-UTF-8 bytes (a Latin-1 CSV) raised ArrowInvalid
    # from pyarrow's CSV writer: an internal error.
    import json

    import runtime

    features = runtime.load(demo_artifacts).feature_names
    if source.endswith(".jsonl"):
        (tmp_path / source).write_text(json.dumps({**{f: 0.1 for f in features}, "tags": [1, 2]}) + "\n")
    else:
        (tmp_path / source).write_bytes((",".join([*features, "sym"]) + "\n").encode()
                                        + (",".join(["0.1"] * len(features)) + ",Z\xfcrich\n").encode("latin-1"))
    result = _score(demo_artifacts, tmp_path / source, tmp_path / "out.csv")
    _refused(result, source if source.endswith(".csv") else "out.csv", named)
    assert not (tmp_path / "out.csv").exists()
    if source.endswith(".csv"):  # every CSV column is read as its text: a file that is not UTF-8 is none
        assert "In CSV column #18" in result.output and not (tmp_path / "out.parquet").exists()
    else:
        assert _score(demo_artifacts, tmp_path / source, tmp_path / "out.parquet").exit_code == 0  # Parquet holds it


def test_more_workers_than_cores_are_capped_at_the_cores(demo_artifacts, tmp_path):
    # Found: --workers 1000 started a process per pending batch and kept 2,000 batches in flight (about
    # 19 GB of features at the default batch size): a careless flag could take the host down.
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from runtime.batch.backfill import score_file

    pq.write_table(pa.table(_columns(demo_artifacts, 10)), tmp_path / "in.parquet")
    summary = score_file(demo_artifacts, tmp_path / "in.parquet", tmp_path / "out.parquet", workers=1000)
    assert summary.workers == (os.cpu_count() or 1) and summary.scored == 10


@pytest.mark.parametrize("gate", [["compare", "--max-flip-rate"], ["compare", "--max-share-shift"],
                                  ["drift", "--fail-psi"]])
def test_a_gate_of_nan_is_a_usage_error(demo_artifacts, tmp_path, gate):
    # Found: click's FloatRange let `nan` through, and `flip_rate > nan` is false: the gate passed every build.
    from click.testing import CliRunner

    from convert.cli import main

    data = tmp_path / "rows.csv"
    data.write_text(_csv_text(demo_artifacts))
    command, option = gate
    args = ([command, str(demo_artifacts), str(demo_artifacts), "--data", str(data)] if command == "compare"
            else [command, str(demo_artifacts), "--input", str(data)])
    result = CliRunner().invoke(main, [*args, option, "nan"])
    assert result.exit_code == 2 and "a gate of nan would never fail" in result.output, result.output
