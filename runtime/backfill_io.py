"""Backfill's files: Parquet, CSV and JSON lines read in Arrow record batches, and written whole or not at all.

Reading streams (a Parquet file without pre-buffering, CSV through pyarrow's streaming reader, JSON lines a
batch of lines at a time), so memory follows the batch size, not the file's. Writing goes through
`AtomicOutput`: an unnamed file linked under its name only once complete. pyarrow is imported inside the
functions (`pip install 'ensemble-onnx[backfill]'`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import install_hint, shortened, shortened_names
from .features import InputError, LongIntegerError, RepeatedKeyError, loads_unique

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
            return list(pf.schema_arrow.names), pf.metadata.num_rows, pf.iter_batches(batch_size=batch_rows)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            read = pcsv.ReadOptions(block_size=max(1 << 20, batch_rows * 256))
            # The header first (pyarrow's reader needs each column's type before it opens), then every column
            # as text: see csv_text_options.
            names = list(pcsv.open_csv(path, read_options=read).schema.names)
            reader = pcsv.open_csv(path, read_options=read, convert_options=csv_text_options(names))
            return names, None, _csv_blocks(path, reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(_unreadable(path, fmt, exc)) from None
    return _jsonl_batches(path, features, batch_rows, keep)


def _unreadable(path: Path, fmt: str, exc: Exception) -> str:
    advice = "; save the file as UTF-8" if "UTF8" in str(exc) else ""  # every CSV column is read as text
    return f"{path}: cannot be read as {fmt} ({str(exc)[:200]}){advice}."


def _csv_blocks(path: Path, reader: Any) -> Iterator[Any]:
    """The reader's blocks; a block it cannot read (text that is not UTF-8, a row of another width) past the
    first, which open_csv already read, is refused naming the file too, not raised as ArrowInvalid."""
    import pyarrow as pa

    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise InputError(_unreadable(path, "csv", exc)) from None


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
        except LongIntegerError as exc:
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
                    columns[name] = pa.array(values)
                    if _holds_empty_object(columns[name].type):
                        raise pa.ArrowTypeError("Parquet cannot write an object with no fields")
                    if _holds_struct(columns[name].type) and not _same_keys(values):
                        raise pa.ArrowTypeError("a struct would add the keys an object lacks, as nulls")
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # OverflowError: an int past 64 bits
                    columns[name] = pa.array([text(v) for v in values], type=pa.string())
        return pa.RecordBatch.from_pydict(columns)

    return header, None, batches()


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

class AtomicOutput:
    """A file that appears whole or not at all.

    Written to an unnamed file in the target's folder (Linux O_TMPFILE), fsynced, then linked under its
    name: a run killed at any point (even SIGKILL) leaves nothing behind. Where O_TMPFILE is unsupported, a
    hidden `.NAME.partial-*` file beside the target is used and removed on any error. An existing target is
    refused unless `force`; then it is replaced by rename, never truncated in place."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target, self.force = target, force
        self.temp_name: Path | None = None
        folder = target.parent  # Path("o.csv").parent is Path("."): never empty
        if target.exists() and not force:
            raise InputError(f"{target}: already exists; pass --force to replace it.")
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise InputError(f"{target}: cannot write in {folder} ({exc.strerror}).") from None
            fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.partial-")
            os.fchmod(fd, 0o644)
            self.temp_name = Path(name)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        folder = self.target.parent
        if self.temp_name is None:
            if self.force:  # link under a hidden name, then rename over the target: never a half-written target
                staged = Path(tempfile.mktemp(dir=folder, prefix=f".{self.target.name}.partial-"))
                _link_fd(self.file.fileno(), staged)
                os.replace(staged, self.target)
            else:
                try:
                    _link_fd(self.file.fileno(), self.target)
                except FileExistsError:
                    self.file.close()
                    raise InputError(f"{self.target}: appeared while scoring; pass --force to replace it.") from None
        elif self.force:
            os.replace(self.temp_name, self.target)
        else:
            try:
                os.link(self.temp_name, self.target)
            except FileExistsError:
                self.file.close()
                raise InputError(f"{self.target}: appeared while scoring; pass --force to replace it.") from None
            finally:
                os.unlink(self.temp_name)
        self.file.close()
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if self.temp_name is not None and self.temp_name.exists():
            os.unlink(self.temp_name)


def _link_fd(fd: int, target: Path) -> None:
    """Gives an O_TMPFILE file its name: linkat(AT_SYMLINK_FOLLOW) through /proc/self/fd, as open(2) shows.
    (os.link without a dir_fd calls link(2), which would link the /proc symlink itself.)"""
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


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
    """Arrow tables appended to one file in the target's format (Parquet, CSV or JSON lines), atomically."""

    def __init__(self, target: Path, force: bool) -> None:
        self.fmt = file_format(target)
        self.out = AtomicOutput(target, force)
        self.writer: Any = None
        self.schema: Any = None
        self.rows = 0

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
        if self.fmt == "jsonl":
            self.out.file.write("".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist()).encode())
        elif self.fmt == "csv":
            try:
                self.writer.write_table(table)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # bytes not UTF-8, a type with no text
                raise InputError(f"{self.out.target}: CSV cannot hold passthrough column(s) {_not_text(table)} "
                                 f"({exc}); write .parquet, or leave them out with --keep.") from None
        else:
            self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        if self.schema is None:
            raise InputError(f"{self.out.target}: nothing to write.")
        if self.writer is not None:
            self.writer.close()
        self.out.commit()

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):  # already failing; the unnamed file goes away below
                self.writer.close()
        self.out.abort()


