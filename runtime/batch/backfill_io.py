"""Backfill's files: Parquet, CSV and JSON lines read in Arrow record batches, and written whole or not at all.

Reading streams (a Parquet file without pre-buffering, CSV through pyarrow's streaming reader, JSON lines a
batch of lines at a time), so memory follows the batch size, not the file's. Writing goes through
`runtime.batch.results.AtomicOutput`: an unnamed file linked under its name only once complete. pyarrow is
imported inside the functions (`pip install 'ensemble-onnx[backfill]'`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import (
    InputError,
    LoneSurrogateError,
    LongIntegerError,
    RepeatedKeyError,
    install_hint,
    shortened,
    shortened_names,
)
from ..jsonstrict import loads_unique
from .results import AtomicOutput, dumps_strict

INSTALL_HINT = "backfill needs pyarrow: " + install_hint("backfill")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}

def require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return pyarrow


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown format '{path.suffix}'; use one of {sorted(FORMATS)}.")
    return fmt


# --------------------------------------------------------------------------------------------- reading

def open_batches(path: Path, features: tuple[str, ...], batch_rows: int, keep: Sequence[str] | None = None
                 ) -> tuple[list[str], int | None, Iterator[Any]]:
    """(column names, total rows if the format knows it, an iterator of Arrow record batches).

    `keep`: the passthrough columns the caller chose (None: every column), which JSON lines need to know."""
    import pyarrow as pa

    fmt = file_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # pre_buffer=False: the default pre-buffering keeps every column chunk it read (measured: the
            # whole file stayed allocated), which is exactly what a larger-than-memory history cannot afford.
            pf = pq.ParquetFile(path, pre_buffer=False)
            return (list(pf.schema_arrow.names), pf.metadata.num_rows,
                    _named_failures(path, fmt, pf.iter_batches(batch_size=batch_rows)))
        if fmt == "csv":
            import pyarrow.csv as pcsv

            read = pcsv.ReadOptions(block_size=max(1 << 20, batch_rows * 256))
            # The header first (pyarrow's reader needs each column's type before it opens), then every column
            # as text: see csv_text_options.
            names = list(pcsv.open_csv(path, read_options=read).schema.names)
            reader = pcsv.open_csv(path, read_options=read, convert_options=csv_text_options(names))
            return names, None, _named_failures(path, fmt, reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(_unreadable(path, fmt, exc)) from None
    return _jsonl_batches(path, features, batch_rows, keep)


STDIN_CHUNK = 1 << 20


def spool_stdin(stream: Any, folder: Path) -> Path:
    """stdin (`score -`) copied to a file in `folder`, a chunk at a time (memory stays one chunk; the disk holds
    what was piped), named for its format: Parquet by its magic bytes, JSON lines when the first text that is
    not blank is `{`, CSV otherwise. The readers need a file: CSV is opened twice (the header, then the rows)
    and Parquet is read from its footer. InputError for a closed or empty stdin."""
    if stream is None or getattr(stream, "closed", False):
        raise InputError("stdin is closed; pipe the rows in or name the file.")
    spooled = folder / "stdin"
    first = b""  # the first bytes, for Parquet's magic
    text = b""  # the first bytes after any leading blank lines (a BOM kept), however many blank lines come first
    with open(spooled, "wb") as out:
        while chunk := stream.read(STDIN_CHUNK):
            if len(first) < 4:
                first += chunk[:4]
            if len(text) < 4096:
                text = (text + chunk).lstrip()[:4096]
            out.write(chunk)
    if not text.removeprefix(b"\xef\xbb\xbf").strip():
        raise InputError("stdin: no rows in the input.")
    suffix = (".parquet" if first.startswith(b"PAR1")
              else ".jsonl" if text.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{") else ".csv")
    return spooled.rename(spooled.with_suffix(suffix))


def _unreadable(path: Path, fmt: str, exc: Exception) -> str:
    advice = "; save the file as UTF-8" if "UTF8" in str(exc) else ""  # every CSV column is read as text
    return f"{path}: cannot be read as {fmt} ({str(exc)[:200]}){advice}."


def _named_failures(path: Path, fmt: str, batches: Iterator[Any]) -> Iterator[Any]:
    """The reader's batches; a batch it cannot read past the first (a corrupt Parquet page, CSV text that is
    not UTF-8, a row of another width) is refused naming the file, not raised as pyarrow's own error."""
    import pyarrow as pa

    try:
        yield from batches
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InputError(_unreadable(path, fmt, exc)) from None


def csv_text_options(names: Sequence[str]) -> Any:
    """Every CSV column read as the text it holds; only an empty cell is null. Features are parsed by
    feature_matrix, so one bad cell names its row instead of failing the reader's type inference for the
    whole block; passthrough columns come out as written: pyarrow's inference would turn `007` into 7, `1e3`
    into 1000 and `NA`, `null` or `N/A` into null, and type each block on its own."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pcsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=True,
                               null_values=[""], quoted_strings_can_be_null=True)


def _jsonl_batches(path: Path, features: tuple[str, ...], batch_rows: int, keep: Sequence[str] | None
                   ) -> tuple[list[str], int | None, Iterator[Any]]:
    """JSON lines, one object a line. Features become their JSON text for feature_matrix to parse, so a
    string there (`"1.5"`, quotes included), a list or a bool is refused as not a number, as `predict` does;
    other values keep their JSON types, except a column Arrow cannot hold as one type (mixed types, an
    integer past 64 bits such as a big id, an empty object `{}` that Parquet cannot write), which becomes the
    JSON text of each value, losslessly, whatever the output format.

    A line that cannot be read is named by its line in the file; a row refused later (a feature that is not
    a number...) by its data row, as in every format (blank lines are not rows). The first line's keys name
    the columns, and every line is read by key, in whatever order it writes
    them (a JSON object's keys have none). A key a later line lacks reads as null, like an empty CSV cell (a
    feature's row is then refused as missing). A key the first line lacks cannot be written, so it is
    refused by row unless `keep` was chosen (then only the kept columns, all in the first line, pass)."""
    import pyarrow as pa

    def parse(line: str, number: int) -> Any:  # number: the line's in the file, as predict names a line
        # loads_unique: a key written twice is refused (json keeps the last silently), nesting too deep is a
        # ValueError, not a RecursionError.
        try:
            return loads_unique(line)
        except RepeatedKeyError as exc:
            raise InputError(f"{path}: line {number}: key {shortened(exc.key)} given more than once.") from None
        except (LongIntegerError, LoneSurrogateError) as exc:
            raise InputError(f"{path}: line {number}: {exc}.") from None
        except ValueError as exc:
            reason = getattr(exc, "msg", None) or str(exc)[:200]
            raise InputError(f"{path}: line {number}: not a JSON object ({reason}).") from None

    def lines() -> Iterator[tuple[int, str]]:
        """(line number in the file, line) for each non-blank line; text that is not UTF-8 is refused by line."""
        with open(path, "rb") as fh:
            for line_number, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8").removeprefix("\ufeff" if line_number == 1 else "")  # a BOM is no key
                except UnicodeDecodeError as exc:
                    raise InputError(f"{path}: line {line_number}: not UTF-8 text (byte {raw[exc.start]:#04x}); "
                                     f"save the file as UTF-8.") from None
                if line.strip():
                    yield line_number, line

    first = next(lines(), None)
    if first is None:  # blank lines only: said as predict says it, not as 18 missing features
        raise InputError(f"{path}: no rows in the input.")
    header_record = parse(first[1], first[0])
    if not isinstance(header_record, dict):
        raise InputError(f"{path}: line {first[0]}: not a JSON object.")
    header = list(header_record)
    columns = set(header)

    def text(value: Any) -> str | None:
        return None if value is None else value if isinstance(value, str) else json.dumps(value)

    def feature_text(value: Any) -> str | None:
        # A string keeps its quotes: '"1.5"' parses as no number, so the row is refused, as predict refuses it.
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def batches() -> Iterator[Any]:
        rows: list[dict[str, Any]] = []
        for number, line in lines():
            record = parse(line, number)
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number}: not a JSON object.")
            if keep is None and record.keys() - columns:
                raise InputError(f"{path}: line {number}: key(s) {shortened_names(sorted(record.keys() - columns))} "
                                 f"are not in the first row, whose keys name the columns "
                                 f"{shortened_names(header)}; add them to the first row "
                                 f"(null where a row has none), or choose the passthrough columns with --keep.")
            rows.append(record)
            if len(rows) == batch_rows:
                yield table(rows)
                rows = []
        if rows:
            yield table(rows)

    def table(rows: list[dict[str, Any]]) -> Any:
        columns = {}
        for name in header:
            values = [r.get(name) for r in rows]  # by key, never by position: null where a row lacks it
            if name in features:
                columns[name] = pa.array([feature_text(v) for v in values], type=pa.string())
            else:
                try:
                    values = _whole_numbers_kept(values)
                    columns[name] = pa.array(values)
                    if _holds_empty_object(columns[name].type):
                        raise pa.ArrowTypeError("Parquet cannot write an object with no fields")
                    if _holds_struct(columns[name].type) and not _same_keys(values):
                        raise pa.ArrowTypeError("a struct would add the keys an object lacks, as nulls")
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # OverflowError: an int past 64 bits
                    columns[name] = pa.array([text(v) for v in values], type=pa.string())
        return pa.RecordBatch.from_pydict(columns)

    return header, None, batches()


def _whole_numbers_kept(values: list[Any]) -> list[Any]:
    """A column of JSON integers beside floats, which Arrow would read as float64 (1 written back as 1.0, an id
    past 2**53 rounded): with NaN as its only floats (a missing integer, as Python's json writes one), the
    integers with null there (int64, missing as each output format spells it); with any other float,
    ArrowTypeError, so the caller keeps the column as JSON text. Any other column as it is."""
    import pyarrow as pa

    ints = floats = numbers = False
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            ints = True
        elif isinstance(v, float):
            floats, numbers = True, numbers or v == v  # NaN != NaN
    if not (ints and floats):
        return values
    if numbers:
        raise pa.ArrowTypeError("integers beside floats would all become floats")
    return [None if isinstance(v, float) else v for v in values]


def _holds_empty_object(kind: Any, empty_only: bool = True) -> bool:
    """Whether an Arrow type holds a struct with no fields (what `{}` infers as), at any depth: Parquet
    cannot write one (ArrowNotImplementedError), so such a column is kept as JSON text instead. With
    `empty_only=False`, whether it holds any struct."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return (not empty_only or kind.num_fields == 0
                or any(_holds_empty_object(kind.field(i).type, empty_only) for i in range(kind.num_fields)))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _holds_empty_object(kind.value_type, empty_only)
    return False


def _holds_struct(kind: Any) -> bool:
    return _holds_empty_object(kind, empty_only=False)


def _same_keys(values: list[Any]) -> bool:
    """Whether every object at each place in these JSON values (the column itself, a key of its objects, the
    items of its lists, at any depth) has the same keys. Arrow infers one struct over the union of the keys
    and fills the missing ones with null: `{}` beside `{"a": 1}` would come back as `{"a": null}`. A column
    where this is False is kept as JSON text, so no value is widened."""
    seen: dict[tuple[str | None, ...], frozenset[str]] = {}
    todo: list[tuple[tuple[str | None, ...], Any]] = [((), v) for v in values]
    while todo:  # a loop, not recursion: an object nested thousands deep is no RecursionError here
        place, value = todo.pop()
        if isinstance(value, dict):
            keys = frozenset(value)
            if seen.setdefault(place, keys) != keys:
                return False
            todo.extend(((*place, k), v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend(((*place, None), v) for v in value)  # a list's items share one place (None: no key)
    return True


# --------------------------------------------------------------------------------------------- writing

def _not_text(table: Any) -> list[str]:
    """The columns CSV's writer cannot turn into text (bytes that are not UTF-8, an interval...), by name."""
    import pyarrow as pa

    failing = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            column.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            failing.append(name)
    return failing


class TableSink:
    """Arrow tables appended to one file in the target's format (Parquet, CSV or JSON lines), atomically.

    Parquet row groups hold `group_rows` rows each (the last fewer), whatever the sizes of the tables handed
    in: the file's bytes do not depend on how an engine batched the rows (Ray's blocks, skipped rows)."""

    def __init__(self, target: Path, force: bool, group_rows: int = 65536) -> None:
        self.fmt = file_format(target)
        self.out = AtomicOutput(target, force)
        self.writer: Any = None
        self.schema: Any = None
        self.rows = 0
        self.group_rows = group_rows
        self.pending: list[Any] = []  # Parquet: tables not yet written as a whole row group
        self.pending_rows = 0

    def write(self, table: Any) -> None:
        import pyarrow as pa

        if self.schema is None:
            self.schema = table.schema
            if self.fmt == "parquet":
                import pyarrow.parquet as pq
                self.writer = pq.ParquetWriter(self.out.file, self.schema)
            elif self.fmt == "csv":
                import pyarrow.csv as pcsv
                # CSV holds flat values only; pyarrow's writer would raise ArrowInvalid on a list or a struct.
                if nested := [f.name for f in self.schema if pa.types.is_nested(f.type)]:
                    raise InputError(f"{self.out.target}: passthrough column(s) {nested} hold lists or objects, "
                                     f"which CSV cannot; write .parquet or .jsonl, or leave them out with --keep.")
                self.writer = pcsv.CSVWriter(self.out.file, self.schema)
        elif table.schema != self.schema:
            try:  # a passthrough column inferred differently in a later CSV block (int, then null...)
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                # JSON lines: a column of whole numbers that meets an integer past 64 bits (or another type)
                # only in a later batch became text there; the file already holds it as numbers.
                changed = [f"{shortened(f.name)} ({f.type}, then {g.type})"
                           for f, g in zip(self.schema, table.schema, strict=False) if f.type != g.type] or [
                    shortened_names(table.schema.names)]
                raise InputError(f"{self.out.target}: passthrough column(s) {', '.join(changed[:5])} changed type "
                                 f"in a later batch ({str(exc)[:200]}); write such a column as JSON strings (a big "
                                 f"id as \"123...\"), or leave it out with --keep.") from None
        if self.fmt == "jsonl":  # strict JSON: NaN and infinity as null, bytes as base64 (runtime.batch.results.strict)
            self.out.file.write("".join(dumps_strict(r) + "\n" for r in table.to_pylist()).encode())
        elif self.fmt == "csv":
            try:
                self.writer.write_table(table)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # bytes not UTF-8, a type with no text
                raise InputError(f"{self.out.target}: CSV cannot hold passthrough column(s) {_not_text(table)} "
                                 f"({exc}); write .parquet, or leave them out with --keep.") from None
        else:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self._write_groups(final=False)
        self.rows += table.num_rows

    def _write_groups(self, final: bool) -> None:
        import pyarrow as pa

        if self.pending_rows < self.group_rows and not (final and self.pending_rows):
            return
        rows = pa.concat_tables(self.pending)
        start = 0
        while rows.num_rows - start >= self.group_rows or (final and start < rows.num_rows):
            group = rows.slice(start, self.group_rows)
            self.writer.write_table(group, row_group_size=self.group_rows)
            start += group.num_rows
        rest = rows.slice(start)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        """Every row written and the format's footer closed; the file is not yet named (see commit)."""
        if self.schema is None:
            raise InputError(f"{self.out.target}: nothing to write.")
        if self.fmt == "parquet":
            self._write_groups(final=True)
        if self.writer is not None:
            self.writer.close()

    def commit(self) -> None:
        self.close()
        self.out.commit()

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):  # already failing; the unnamed file goes away below
                self.writer.close()
        self.out.abort()


