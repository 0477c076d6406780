"""The backfill's files (`runtime/batch/backfill_io.py`): the readers of each format, the atomic files, the
table sinks, and the JSON lines values Arrow or the writers cannot hold as typed. Real pyarrow, real
onnxruntime on the prebuilt demo build; expected values come from the runtime's own calls, numpy or the text
written here, never from the function under test."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from backfill_support import one_thread, rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")

import runtime  # noqa: E402  (after the skip: these tests need pyarrow)
from runtime.batch import backfill, backfill_io  # noqa: E402
from runtime.batch.backfill_io import AtomicOutput, TableSink, file_format, open_batches  # noqa: E402
from runtime.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def ens(demo_artifacts: Path) -> runtime.Ensemble:
    return one_thread(demo_artifacts)


# ------------------------------------------------------------------------------------ formats and readers

def test_require_pyarrow_returns_it_or_says_how_to_install_it(monkeypatch):
    assert backfill_io.require_pyarrow() is pa
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra gives: ImportError
    with pytest.raises(InputError) as err:
        backfill_io.require_pyarrow()
    assert str(err.value) == ("backfill needs pyarrow: pip install --find-links dist/ 'ensemble-onnx[backfill]' "
                              "(dist/: the folder with the wheel `make dist` builds), or pip install '.[backfill]' in "
                              "a clone of the repository")


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.csv", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
    ("a.json", "jsonl"), ("A.PARQUET", "parquet"), ("b.x.CSV", "csv"),
])
def test_the_format_is_the_extension(name, fmt):
    assert file_format(Path(name)) == fmt


def test_an_unknown_extension_is_refused_listing_the_known():
    with pytest.raises(InputError) as err:
        file_format(Path("d/scores.xlsx"))
    assert str(err.value) == ("d/scores.xlsx: unknown format '.xlsx'; use one of ['.csv', '.json', '.jsonl', "
                              "'.ndjson', '.parquet', '.pq'].")


def test_parquet_is_read_in_batches_of_the_asked_size_with_its_row_count(tmp_path):
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({"id": list(range(7)), "f": [0.5] * 7}), path)
    columns, total, batches = open_batches(path, ("f",), 3)
    assert (columns, total) == (["id", "f"], 7)
    assert [b.num_rows for b in batches] == [3, 3, 1]


def test_csv_features_are_read_as_text_and_an_empty_cell_as_null(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("id,f,g\n1,0.5,x\n2,,y\n3,1e3,\n")
    columns, total, batches = open_batches(path, ("f",), 100)
    assert (columns, total) == (["id", "f", "g"], None)
    table = pa.Table.from_batches(list(batches))
    assert table.schema.field("f").type == pa.string() and table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == ["1", "2", "3"]  # every column as written: see the passthrough test
    assert table.column("f").to_pylist() == ["0.5", None, "1e3"]
    assert table.column("g").to_pylist() == ["x", "y", None]


@pytest.mark.parametrize(("batch_rows", "block"), [(10, 1 << 20), (8192, 8192 * 256)])
def test_csv_is_read_in_blocks_of_256_bytes_a_batch_row_and_at_least_a_mebibyte(tmp_path, batch_rows, block):
    line = "%015d,%047d\n"  # 64 bytes a line
    path = tmp_path / "h.csv"
    path.write_text("id,f" + " " * 59 + "\n" + "".join(line % (i, i) for i in range(40_000)))
    _, _, batches = open_batches(path, ("f",), batch_rows)
    first = next(batches).num_rows
    assert abs(first - block // 64) <= 1, first


@pytest.mark.parametrize(("name", "content", "fmt"), [
    ("h.parquet", b"not parquet at all", "parquet"),
    ("h.csv", b"", "csv"),
])
def test_a_file_its_reader_cannot_open_is_refused_by_name(tmp_path, name, content, fmt):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        open_batches(path, ("f",), 10)
    assert str(err.value).startswith(f"{path}: cannot be read as {fmt} (") and str(err.value).endswith(").")


def test_a_missing_parquet_file_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path}/gone.parquet: cannot be read as parquet \("):
        open_batches(tmp_path / "gone.parquet", ("f",), 10)


def jsonl(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "h.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_json_lines_features_become_text_and_other_values_keep_their_types(tmp_path):
    path = jsonl(tmp_path, '\ufeff{"id": 1, "f": 1.5, "g": [1, 2], "s": "a"}\n\n  \n'
                           '{"id": 2, "f": "2", "g": null, "s": 3}\n{"id": 3, "f": null, "g": true, "s": null}\n')
    columns, total, batches = open_batches(path, ("f", "g"), 100)
    assert (columns, total) == (["id", "f", "g", "s"], None)
    (batch,) = list(batches)
    assert batch.schema.field("id").type == pa.int64() and batch.column(0).to_pylist() == [1, 2, 3]
    # a string keeps its quotes: '"2"' parses as no number (refused, as predict refuses it), never as 2
    assert batch.schema.field("f").type == pa.string() and batch.column(1).to_pylist() == ["1.5", '"2"', None]
    assert batch.schema.field("g").type == pa.string() and batch.column(2).to_pylist() == ["[1, 2]", None, "true"]
    assert batch.column(3).to_pylist() == ["a", "3", None]  # a passthrough of mixed types: as text


def test_a_json_lines_feature_that_is_null_in_every_row_is_still_text(tmp_path):
    _, _, batches = open_batches(jsonl(tmp_path, '{"f": null, "id": null}\n{"f": null, "id": null}\n'), ("f",), 10)
    (batch,) = list(batches)
    assert batch.schema.field("f").type == pa.string() and batch.column(0).to_pylist() == [None, None]


def test_json_lines_are_batched_by_row(tmp_path):
    path = jsonl(tmp_path, "".join(json.dumps({"f": i}) + "\n" for i in range(5)))
    _, _, batches = open_batches(path, ("f",), 2)
    assert [b.column(0).to_pylist() for b in batches] == [["0", "1"], ["2", "3"], ["4"]]


def test_an_empty_json_lines_file_is_refused_as_having_no_rows(tmp_path):
    path = jsonl(tmp_path, "\n\n")
    with pytest.raises(InputError) as err:
        open_batches(path, ("f",), 2)
    assert str(err.value) == f"{path}: no rows in the input."


def test_json_lines_are_read_by_key_whatever_each_lines_key_order(tmp_path):
    # A JSON object's keys have no order: a line written {"g", "id", "f"} under a first line {"f", "g", "id"}
    # holds the same row, and its values must land in the columns they are named for.
    path = jsonl(tmp_path, '{"f": 1.5, "g": 2.5, "id": "a"}\n{"g": 20.5, "id": "b", "f": 10.5}\n'
                           '{"id": "c", "f": 100.5, "g": 200.5}\n')
    columns, _, batches = open_batches(path, ("f", "g"), 10)
    (batch,) = list(batches)
    assert columns == batch.schema.names == ["f", "g", "id"]
    assert batch.to_pydict() == {"f": ["1.5", "10.5", "100.5"], "g": ["2.5", "20.5", "200.5"], "id": ["a", "b", "c"]}


def test_a_key_missing_from_a_later_json_line_reads_as_null_like_an_empty_csv_cell(tmp_path):
    path = jsonl(tmp_path, '{"f": 1, "id": "a", "note": "x"}\n{"id": "b"}\n{"f": 3, "id": "c"}\n')
    _, _, batches = open_batches(path, ("f",), 10)
    assert next(batches).to_pydict() == {"f": ["1", None, "3"], "id": ["a", "b", "c"], "note": ["x", None, None]}


def test_a_key_only_a_later_json_line_has_is_refused_unless_keep_leaves_it_out(tmp_path):
    # Every non-feature column passes through by default, and the columns are the first line's: a key first
    # seen on row 3 would be dropped from the output without a word. With --keep the user chose what to keep.
    path = jsonl(tmp_path, '{"f": 1, "id": "a"}\n{"f": 2, "id": "b"}\n{"venue": "X", "f": 3, "id": "c", "z": 0}\n')
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == (f"{path}: line 3: key(s) ['venue', 'z'] are not in the first row, whose keys name the "
                              f"columns ['f', 'id']; add them to the first row (null where a row has none), or "
                              f"choose the passthrough columns with --keep.")
    _, _, batches = open_batches(path, ("f",), 10, keep=["id"])
    assert next(batches).to_pydict() == {"f": ["1", "2", "3"], "id": ["a", "b", "c"]}


@pytest.mark.parametrize(("content", "message"), [
    (b'{"f": 1}\n[1]\n', "line 2: not a JSON object."),
    (b"[1]\n", "line 1: not a JSON object."),
    (b'\n[1]\n', "line 2: not a JSON object."),  # the first line that holds a row, named by its line
    (b'{"f": 1}\n{"f": \n', "line 2: not a JSON object (Expecting value)."),
    (b'{"f": 1, "f": 2}\n', "line 1: key 'f' given more than once."),
    (b'\n{"f": 1}\n{"f": 1, "f": 2}\n', "line 3: key 'f' given more than once."),
    ('{"f": 1}\n\ufeff{"f": 1}\n'.encode(),
     "line 2: not a JSON object (Unexpected UTF-8 BOM (decode using utf-8-sig))."),
    (b'{"f": 1}\n\n{"f": "\xe9"}\n', "line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8."),
    (b'{"f": 1}\nXXXX{"f": 1}\n', "line 2: not a JSON object (Expecting value)."),  # only row 1 loses a prefix (a BOM)
    (b"[" * 100_000 + b"\n", "line 1: not a JSON object (nested too deeply to parse)."),
])
def test_json_lines_refusals_name_the_line(tmp_path, content, message):
    path = jsonl(tmp_path, content)
    with pytest.raises(InputError) as err:
        _, _, batches = open_batches(path, ("f",), 10)
        list(batches)
    assert str(err.value) == f"{path}: {message}"


# --------------------------------------------------------------------------------------- atomic files

@pytest.fixture(params=["O_TMPFILE", "partial file"])
def how(request, monkeypatch) -> str:
    """Both ways to write: Linux's unnamed file, and the hidden partial file of a platform without it."""
    if request.param == "partial file":
        monkeypatch.delattr(os, "O_TMPFILE")
    return request.param


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_atomic_file_appears_only_when_committed(tmp_path, how):
    out = AtomicOutput(tmp_path / "o.csv", False)
    out.file.write(b"hello")
    assert names(tmp_path) == ([] if how == "O_TMPFILE" else [out.temp_name.name])
    if how == "partial file":
        assert out.temp_name.name.startswith(".o.csv.partial-") and out.temp_name.parent == tmp_path
    out.commit()
    assert names(tmp_path) == ["o.csv"] and (tmp_path / "o.csv").read_bytes() == b"hello"
    umask = os.umask(0)
    os.umask(umask)
    # open(2) applies the umask to the unnamed file; the partial file is chmod-ed to exactly 0o644
    assert stat.S_IMODE((tmp_path / "o.csv").stat().st_mode) == (0o644 & ~umask if how == "O_TMPFILE" else 0o644)
    assert out.file.closed


def test_an_aborted_atomic_file_leaves_nothing(tmp_path, how):
    out = AtomicOutput(tmp_path / "o.csv", False)
    out.file.write(b"hello")
    out.abort()
    assert names(tmp_path) == [] and out.file.closed
    out.abort()  # twice is harmless


def test_an_existing_target_is_refused_unless_forced_then_replaced_whole(tmp_path, how):
    target = tmp_path / "o.csv"
    target.write_bytes(b"old")
    with pytest.raises(InputError) as err:
        AtomicOutput(target, False)
    assert str(err.value) == f"{target}: already exists; pass --force to replace it."
    out = AtomicOutput(target, True)
    out.file.write(b"new")
    assert target.read_bytes() == b"old"
    out.commit()
    assert target.read_bytes() == b"new" and names(tmp_path) == ["o.csv"]


def test_a_forced_replace_stages_its_file_beside_the_target_not_in_the_temp_folder(tmp_path):
    """A link cannot cross filesystems: the staged name must be in the target's own folder (here a tmpfs)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp folder")
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        target = folder / "o.csv"
        target.write_bytes(b"old")
        out = AtomicOutput(target, True)
        out.file.write(b"new")
        out.commit()
        assert target.read_bytes() == b"new" and names(folder) == ["o.csv"]
    finally:
        shutil.rmtree(folder)


def test_a_target_that_appears_while_writing_is_refused_and_kept(tmp_path, how):
    target = tmp_path / "o.csv"
    out = AtomicOutput(target, False)
    out.file.write(b"mine")
    target.write_bytes(b"theirs")
    with pytest.raises(InputError) as err:
        out.commit()
    assert str(err.value) == (f"{target}: appeared while this run wrote it; nothing was written. Pass --force to "
                              f"replace it.")
    assert target.read_bytes() == b"theirs" and names(tmp_path) == ["o.csv"]


def test_an_atomic_file_in_a_missing_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError) as err:
        AtomicOutput(tmp_path / "no" / "o.csv", False)
    assert str(err.value) == f"{tmp_path}/no/o.csv: cannot write in {tmp_path}/no (No such file or directory)."


def test_an_atomic_file_in_the_working_folder(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    out = AtomicOutput(Path("o.csv"), False)
    out.file.write(b"x")
    out.commit()
    assert (tmp_path / "o.csv").read_bytes() == b"x"


# ------------------------------------------------------------------------------------------ table sinks

def sample(ids: list[int]) -> Any:
    return pa.table({"id": pa.array(ids, pa.int64()), "p": pa.array([i / 4 for i in ids], pa.float32()),
                     "t": pa.array([i * 1_000_000 for i in ids], pa.timestamp("us"))})


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_sink_appends_tables_in_its_format(tmp_path, suffix):
    path = tmp_path / f"o{suffix}"
    sink = TableSink(path, False)
    sink.write(sample([1, 2]))
    sink.write(sample([3]))
    assert sink.rows == 3 and not path.exists()
    sink.commit()
    if suffix == ".parquet":
        assert pq.read_table(path).equals(pa.concat_tables([sample([1, 2]), sample([3])]))
    elif suffix == ".csv":
        assert path.read_text().splitlines() == ['"id","p","t"', "1,0.25,1970-01-01 00:00:01.000000",
                                                 "2,0.5,1970-01-01 00:00:02.000000",
                                                 "3,0.75,1970-01-01 00:00:03.000000"]
    else:
        assert path.read_text().splitlines() == [
            '{"id": 1, "p": 0.25, "t": "1970-01-01 00:00:01"}', '{"id": 2, "p": 0.5, "t": "1970-01-01 00:00:02"}',
            '{"id": 3, "p": 0.75, "t": "1970-01-01 00:00:03"}']


def test_a_later_batch_is_cast_to_the_first_batchs_types(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(pa.table({"id": pa.array([1], pa.int64())}))
    sink.write(pa.table({"id": pa.array([None], pa.null())}))  # a CSV block of empty cells
    sink.commit()
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("id").type == pa.int64() and table.column("id").to_pylist() == [1, None]


def test_a_later_batch_that_cannot_be_cast_is_refused_naming_the_file(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(pa.table({"id": pa.array([1], pa.int64())}))
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": pa.array(["x"], pa.string())}))
    assert str(err.value).startswith(f"{tmp_path}/o.parquet: passthrough column(s) 'id' (int64, then string) changed "
                                     f"type in a later batch (")
    assert str(err.value).endswith("; write such a column as JSON strings (a big id as \"123...\"), or leave it out "
                                   "with --keep.")
    sink.abort()
    assert names(tmp_path) == []


def test_an_id_past_64_bits_first_met_in_a_later_batch_is_refused_naming_the_column(demo_artifacts, ens, tmp_path):
    # The first batch's ids were int64 when the file was opened; the later one holds text: refused, not cut.
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, 2, 35, id=[1, 2**70]))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=1)
    assert str(err.value).startswith(f"{source}: data row 2, passthrough column 'id' changed type between batches "
                                     f"(int64, then string): ")
    assert 'write such ids as JSON strings (a big id as "123...")' in str(err.value)
    assert not out.exists()
    source.write_text(feature_lines(ens, 2, 35, id=["1", str(2**70)]))  # as strings: every batch text
    backfill.score_file(demo_artifacts, source, out, batch_rows=1)
    assert pq.read_table(out).column("id").to_pylist() == ["1", str(2**70)]


def test_csv_refuses_nested_passthrough_by_name(tmp_path):
    sink = TableSink(tmp_path / "o.csv", False)
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "tags": [[1, 2]], "meta": [{"a": 1}]}))
    assert str(err.value) == (f"{tmp_path}/o.csv: passthrough column(s) ['tags', 'meta'] hold lists or objects, "
                              f"which CSV cannot; write .parquet or .jsonl, or leave them out with --keep.")


def test_csv_refuses_bytes_that_are_not_text_by_name(tmp_path):
    sink = TableSink(tmp_path / "o.csv", False)
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "raw": pa.array([b"\xff\xfe"], pa.binary())}))
    assert str(err.value).startswith(f"{tmp_path}/o.csv: CSV cannot hold passthrough column(s) ['raw'] (")
    assert str(err.value).endswith("); write .parquet, or leave them out with --keep.")
    sink.abort()
    assert names(tmp_path) == []


def test_a_sink_with_nothing_written_refuses_to_commit(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    with pytest.raises(InputError) as err:
        sink.commit()
    assert str(err.value) == f"{tmp_path}/o.parquet: nothing to write."


def test_an_aborted_parquet_sink_closes_its_writer(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(sample([1]))
    sink.abort()
    assert not sink.writer.is_open


def test_an_abort_after_the_file_itself_failed_still_removes_it_quietly(tmp_path, how):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(sample([1]))
    sink.out.file.close()  # as a failed disk leaves it: the writer's own close cannot write its footer
    sink.abort()
    assert names(tmp_path) == []


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_an_aborted_sink_leaves_nothing(tmp_path, suffix, how):
    sink = TableSink(tmp_path / f"o{suffix}", False)
    sink.write(sample([1]))
    sink.abort()
    assert names(tmp_path) == [] and sink.out.file.closed


def test_csv_names_a_passthrough_column_with_no_text_form(tmp_path):
    """An interval column is neither nested nor binary: the refusal named no column at all before."""
    sink = TableSink(tmp_path / "o.csv", False)
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "span": interval}))
    assert str(err.value).startswith(f"{tmp_path}/o.csv: CSV cannot hold passthrough column(s) ['span'] (")
    sink.abort()
    assert names(tmp_path) == []


# ------------------------------------------------- JSON lines values Arrow or the writers cannot hold as typed

def feature_lines(ens: runtime.Ensemble, n: int, seed: int, **extra: list[Any]) -> str:
    """n JSON lines of finite features, each line also holding extra[key][i]."""
    x = rows(ens, n, seed=seed)
    return "".join(json.dumps({**{k: v[i] for k, v in extra.items()},
                               **dict(zip(ens.feature_names, map(float, r), strict=True))}) + "\n"
                   for i, r in enumerate(x))


def read_back(path: Path) -> dict[str, list[Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pydict()
    if path.suffix == ".csv":  # every column as text: what the file holds, not what a reader infers
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types={"id": pa.string(), "meta": pa.string()})).to_pydict()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {k: [r[k] for r in records] for k in records[0]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_an_id_column_of_integers_past_64_bits_passes_through_as_their_exact_digits(demo_artifacts, ens, tmp_path,
                                                                                      suffix):
    # pa.array raises OverflowError (not ArrowInvalid) for 2**63 and up: the run died with a traceback.
    ids = [1, 2**70, int("9" * 400)]
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, 3, 31, id=ids))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["id"] == [str(i) for i in ids]  # the JSON text of each: every digit kept


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("meta", [{}, [{}], {"a": {}}])
def test_a_column_of_empty_objects_passes_through_as_json_text_whatever_the_output(demo_artifacts, ens, tmp_path,
                                                                                   suffix, meta):
    # `{}` reads as a struct with no fields, which Parquet cannot write (ArrowNotImplementedError, a traceback)
    # and CSV refused: it is kept as its JSON text, the same in every output format.
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, 2, 32, meta=[meta, meta]))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["meta"] == [json.dumps(meta)] * 2


def test_a_json_lines_feature_given_as_a_string_is_refused_by_row_and_column_as_predict_refuses_it(
        demo_artifacts, ens, tmp_path):
    source, out, rejects = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    records = [json.loads(line) for line in feature_lines(ens, 3, 33, id=[0, 1, 2]).splitlines()]
    records[1]["rsi_14"] = "1.5"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out)
    assert str(err.value).startswith(f"{source}: data row 2, column 'rsi_14': '\"1.5\"' is not a number. Nothing was")
    summary = backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=rejects)
    assert (summary.scored, summary.rejected) == (2, 1)
    assert [json.loads(s) for s in rejects.read_text().splitlines()] == [
        {"row": 2, "id": 1, "reason": "column 'rsi_14': '\"1.5\"' is not a number"}]


def test_a_long_feature_value_is_cut_short_in_the_refusal_and_the_rejects_file(demo_artifacts, ens, tmp_path):
    source, out, rejects = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    records = [json.loads(line) for line in feature_lines(ens, 2, 34, id=[0, 1]).splitlines()]
    records[1]["macd"] = "x" * 100_000
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out)
    assert len(str(err.value)) < 400 and "(100002 characters)" in str(err.value), str(err.value)[:400]
    backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=rejects)
    (reject,) = [json.loads(s) for s in rejects.read_text().splitlines()]
    assert reject["reason"] == "column 'macd': '\"" + "x" * 78 + "... (100002 characters) is not a number"


def test_a_later_key_under_a_header_of_20000_keys_names_the_first_few_and_how_many_more(tmp_path):
    header = {f"k{i}": i for i in range(20_000)}
    path = jsonl(tmp_path, json.dumps({"f": 1, **header}) + "\n" + json.dumps({"f": 2, "new": 1, **header}) + "\n")
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == (f"{path}: line 2: key(s) ['new'] are not in the first row, whose keys name the "
                              f"columns ['f', 'k0', 'k1', 'k2', 'k3', ... 19,996 more]; add them to the first row "
                              f"(null where a row has none), or choose the passthrough columns with --keep.")


def test_an_integer_past_4300_digits_in_a_json_line_is_named_as_that(tmp_path):
    path = jsonl(tmp_path, '{"f": 1}\n{"f": ' + "7" * 5000 + "}\n")
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == f"{path}: line 2: an integer of more than 4,300 digits, too long to read as a number."


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_score_says_no_rows_for_a_json_lines_file_with_none(demo_artifacts, tmp_path, content):
    source = jsonl(tmp_path, content)
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet")
    assert str(err.value) == f"{source}: no rows in the input."


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("metas", [
    [{}, {"a": 1}, {"a": 1}],              # the attack: {} came back as {"a": null}
    [{"a": 1}, {}, {"a": 2}],
    [{"a": 1}, {"b": 2}, {"a": 3}],          # each gained the other's key as null
    [{"a": {"x": 1}}, {"a": {}}, {"a": {"x": 2}}],  # the same one level down
    [[{"a": 1}], [{"b": 2}, {"a": 1}], []],  # objects in lists
])
def test_objects_with_different_keys_pass_through_as_their_json_text_never_widened(demo_artifacts, ens, tmp_path,
                                                                                   suffix, metas):
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, len(metas), 35, meta=metas))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["meta"] == [None if m is None else json.dumps(m) for m in metas]


def test_objects_with_the_same_keys_stay_a_struct_column_in_parquet(demo_artifacts, ens, tmp_path):
    import pyarrow.parquet as pq

    metas = [{"a": 1, "b": [{"x": 1}]}, {"b": [], "a": None}, None, {"a": 2, "b": [{"x": None}, {"x": 3}]}]
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, len(metas), 36, meta=metas))
    backfill.score_file(demo_artifacts, source, out)
    column = pq.read_table(out).column("meta")
    assert str(column.type) == "struct<a: int64, b: list<element: struct<x: int64>>>"
    assert column.to_pylist() == metas


def test_csv_passthrough_columns_are_read_as_the_text_written_and_only_an_empty_cell_as_null(tmp_path):
    # pyarrow's inference read `007` as 7, `1e3` as 1000 and `NA`, `null`, `N/A` as null (attack report 3, H2).
    path = tmp_path / "h.csv"
    path.write_text('symbol,code,f\nNA,007,0.5\nnull,0012,NA\nN/A,1e3,\n,,""\n')
    columns, _, batches = open_batches(path, ("f",), 100)
    table = pa.Table.from_batches(list(batches))
    assert columns == ["symbol", "code", "f"] and set(table.schema.types) == {pa.string()}
    assert table.to_pydict() == {"symbol": ["NA", "null", "N/A", None], "code": ["007", "0012", "1e3", None],
                                 "f": ["0.5", "NA", None, None]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_csv_passthrough_text_reaches_every_output_format_unchanged(demo_artifacts, ens, tmp_path, suffix):
    x = rows(ens, 4, seed=37)
    source, out = tmp_path / "in.csv", tmp_path / f"o{suffix}"
    source.write_text(",".join(["symbol", "code", *ens.feature_names]) + "\n" + "".join(
        f"{s},{c}," + ",".join(map(repr, map(float, r))) + "\n"
        for s, c, r in zip(["NA", "null", "N/A", "x"], ["007", "0012", "1e3", "12"], x, strict=True)))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    if suffix == ".csv":  # the file's own text: what a reader would infer is no test of what was written
        got = [line.split(",")[:2] for line in out.read_text().splitlines()[1:]]
        assert got == [['"NA"', '"007"'], ['"null"', '"0012"'], ['"N/A"', '"1e3"'], ['"x"', '"12"']]
    else:
        back = read_back(out) if suffix == ".parquet" else {
            k: [json.loads(line)[k] for line in out.read_text().splitlines()] for k in ("symbol", "code")}
        assert back["symbol"] == ["NA", "null", "N/A", "x"] and back["code"] == ["007", "0012", "1e3", "12"]


OBJECTS_THAT_CHANGE = [
    [{"a": 1}, {"a": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2}],  # b was dropped from rows 3-4
    [{"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1}, {"a": 1}],  # "b": null was added to rows 3-4
    [{"a": [{"k": 1}]}, {"a": [{"k": 1}]}, {"a": [{"k": 1, "z": []}]}, {"a": [{"k": 1, "z": []}]}],  # z dropped
]


@pytest.mark.parametrize("objects", OBJECTS_THAT_CHANGE)
def test_objects_whose_keys_change_in_a_later_batch_are_refused_naming_input_column_and_row(
        demo_artifacts, ens, tmp_path, objects):
    # The sink cast a later batch's struct to the first's by field name: keys dropped or added as nulls,
    # silently (attack report 3, H1).
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, 4, 36, obj=objects))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    message = str(err.value)
    assert message.startswith(f"{source}: data row 3, passthrough column 'obj' changed type between batches (")
    assert "make the column's objects have the same keys" in message and "big id" not in message
    assert not out.exists()
    backfill.score_file(demo_artifacts, source, out, batch_rows=4)  # one batch: the JSON text of each, whole
    assert [json.loads(v) for v in pq.read_table(out).column("obj").to_pylist()] == objects


def test_a_column_null_in_the_first_batch_and_objects_later_is_refused_without_big_id_advice(
        demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text(feature_lines(ens, 4, 38, obj=[None, None, None, {"a": 1}]))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert str(err.value).startswith(f"{source}: data row 4, passthrough column 'obj' changed type between "
                                     f"batches (null, then struct<a: int64>): the first batch of --batch-rows rows")
    assert "big id" not in str(err.value) and not out.exists()


def test_a_column_null_in_a_later_batch_takes_the_first_batchs_type(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text(feature_lines(ens, 4, 39, obj=[{"a": 1}, {"a": 2}, None, None]))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert [json.loads(line)["obj"] for line in out.read_text().splitlines()] == [{"a": 1}, {"a": 2}, None, None]


def test_a_csv_block_past_the_first_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    # open_csv reads the first block (at least a mebibyte); a later one raised ArrowInvalid while iterating.
    path = tmp_path / "h.csv"
    path.write_bytes(b"sym,f\n" + b"abc,0.5\n" * 200_000 + b"Z\xfcrich,0.5\n")
    _, _, batches = open_batches(path, ("f",), 10)
    with pytest.raises(InputError) as err:
        list(batches)
    assert str(err.value).startswith(f"{path}: cannot be read as csv (")
    assert str(err.value).endswith("; save the file as UTF-8.")


def test_rejects_take_the_first_batchs_types_when_their_first_refused_row_is_null(demo_artifacts, ens, tmp_path):
    # The rejects file's first table held the column as nulls only: a later refused object could not be cast.
    lines = [json.loads(line) for line in feature_lines(ens, 3, 40, obj=[{"a": 1}, None, {"a": 2}]).splitlines()]
    for record in lines[1:]:
        record[ens.feature_names[0]] = None
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = backfill.score_file(demo_artifacts, source, out, batch_rows=1, on_error="skip")
    assert summary.rejected == 2
    rejects = [json.loads(line) for line in Path(summary.rejects_file).read_text().splitlines()]
    assert [(r["row"], r["obj"]) for r in rejects] == [(2, None), (3, {"a": 2})]

