"""The rows the commands read: JSON lines or CSV text as (line, record), CSV cells kept as text until a
feature reads them as numbers, a header checked by name, and refusals restated at the file's line. Not
loaded by `import runtime`: a service hands `Ensemble` its rows itself."""

from __future__ import annotations

import csv
import io
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError, LoneSurrogateError, LongIntegerError, RepeatedKeyError, shortened, shortened_names
from .features import rows_to_matrix
from .jsonstrict import loads_unique
from .limits import read_limited


class CsvText(str):
    """A CSV cell: text as the file wrote it (a passthrough column stays "0700", never 700.0), which a feature
    reads as a number (records_to_matrix, parse_number). A JSON string is plain str, and is no number."""


def _csv_numbers(record: dict[str, Any], feature_names: Sequence[str]) -> dict[str, Any]:
    """A record's CSV feature cells as numbers where they parse (text that does not stays text, refused later
    as no number); every other column as it is."""
    out = dict(record)
    for name in feature_names:
        cell = out.get(name)
        if isinstance(cell, CsvText):
            try:
                out[name] = parse_number(cell)
            except ValueError:
                out[name] = str(cell)
    return out


def read_records(text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) from JSON lines or CSV with a header; CSV cells are CsvText (features parse them)."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError("no rows in the input.")
    if lines[0][1].lstrip().startswith(("{", "[")):  # JSON lines; a JSON array is refused by its line below
        records = []
        for n, line in lines:
            try:
                record = loads_unique(line)
            except RepeatedKeyError as exc:  # any key: 'symbol' is no feature
                raise InputError(f"line {n}: key {shortened(exc.key)} given more than once.") from None
            except (LongIntegerError, LoneSurrogateError) as exc:
                raise InputError(f"line {n}: {exc}.") from None
            except ValueError as exc:  # malformed, nested too deeply, an integer beyond Python's digit limit
                raise InputError(f"line {n}: not a JSON object "
                                 f"({getattr(exc, 'msg', None) or str(exc)[:200]}).{_array_hint(n, lines)}") from None
            if not isinstance(record, dict):
                raise InputError(f"line {n}: not a JSON object.{_array_hint(n, lines)}")
            records.append((n, record))
        return records
    try:
        return _csv_records(text)
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit
        raise InputError(f"CSV input is malformed ({exc}).") from None


def _array_hint(n: int, lines: list[tuple[int, str]]) -> str:
    """The way out when the input's first line starts with '[': a JSON array, or a CSV header whose first name
    starts with '[' (read as JSON: quoted, it is CSV)."""
    if n != lines[0][0] or not lines[0][1].lstrip().startswith("["):
        return ""
    return (" A JSON array is not JSON lines (one object a line); a CSV header whose first name starts with '[' "
            "is read as JSON: quote that name.")


def _csv_records(text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    repeated = sorted(h for h, n in Counter(header).items() if n > 1)
    if repeated:
        raise InputError(f"line 1: the header names column(s) {shortened_names(repeated)} more than once.")
    records = []
    for cells in reader:
        n = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise InputError(f"line {n}: {len(cells)} cells under a header of {len(header)}.")
        records.append((n, {h: CsvText(c) for h, c in zip(header, cells, strict=True)}))
    if not records:  # said with the line it read, so a file that is no CSV at all is seen as such
        raise InputError(f"no rows in the input: line 1 is read as a CSV header ({shortened(','.join(header))}) "
                         f"and no data row follows it.")
    return records


def decode_input(data: bytes, where: str) -> str:
    """Bytes handed to `predict` (or a build's recorded rows) as UTF-8 text, or InputError naming the byte."""
    if data.startswith(b"PAR1"):  # a Parquet file's magic: no text to decode, and "save it as UTF-8" misleads
        raise InputError(f"{where}: a Parquet file; this command reads CSV with a header or JSON lines "
                         f"(`ensemble-onnx score` scores Parquet).")
    try:
        # A byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{where}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                         f"{exc.start}); save the file as UTF-8.") from None


def read_input(name: str) -> str:
    """The rows as UTF-8 text from a file or stdin ("-"); InputError for a closed stdin, an unreadable file, an
    input past ENSEMBLE_ONNX_MAX_INPUT_BYTES or bytes that are not UTF-8."""
    if name == "-":
        stream = sys.stdin.buffer if sys.stdin is not None and hasattr(sys.stdin, "buffer") else None
        if stream is None or stream.closed:
            raise InputError("stdin is closed; pipe the rows in or pass --input FILE.")
        try:
            data = read_limited(stream, "stdin")
        except InputError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
            raise InputError(f"cannot read stdin ({exc}); pipe the rows in or pass --input FILE.") from None
        return decode_input(data, "stdin")
    try:
        with open(name, "rb") as fh:
            data = read_limited(fh, name)
    except OSError as exc:
        raise InputError(f"{name}: cannot read the input ({exc.strerror}).") from None
    return decode_input(data, name)


def parse_number(cell: str) -> float:
    """float(cell), but only for numbers as data files write them: Python's float also reads digit-group
    underscores ('1_0' is 10.0) and non-ASCII digits, which a file never means. ValueError otherwise."""
    if "_" in cell or not cell.isascii():
        raise ValueError(f"not a number: {cell!r}")
    return float(cell)


def at_line(error: InputError, records: Sequence[tuple[int, Any]], first: int = 0) -> InputError:
    """A refusal of one row of the matrix built from `records[first:]`, restated at that record's line (the
    matrix's row number means nothing to whoever wrote the file); any other refusal as it is."""
    if error.row is None:
        return error
    # "row 3: ..." and "row 3, feature 'x': ..." both read "line 5: ..." ("line 5: feature 'x': ...").
    told = str(error).removeprefix(f"row {error.row}: ").removeprefix(f"row {error.row}, ")
    return InputError(f"line {records[first + error.row][0]}: {told}")


def records_to_matrix(records: list[tuple[int, dict[str, Any]]], feature_names: Sequence[str],
                      passthrough: Sequence[str] = ("symbol",), missing: bool = False) -> np.ndarray:
    """Every record validated and aligned; one InputError naming each bad line, or the [n, F] matrix."""
    # A header problem every record shares (a misspelt CSV column) is one refusal, not one per row.
    problem = header_problem(list(records[0][1]), feature_names, passthrough) if len(records) > 1 else None
    if problem is not None and all(r.keys() == records[0][1].keys() for _, r in records):
        raise InputError(f"{problem} (every row).")
    if records and any(isinstance(v, CsvText) for v in records[0][1].values()):
        records = [(n, _csv_numbers(r, feature_names)) for n, r in records]
    rows, problems = [], []
    for n, record in records:
        try:
            rows.append(rows_to_matrix(record, feature_names, passthrough, missing)[0])
        except InputError as exc:  # one record is the matrix's row 0: its line is the only location to say
            problems.append(f"line {n}: {str(exc).removeprefix('row 0: ').removeprefix('row 0, ')}")
    if problems:
        raise InputError(f"{len(problems)} row(s) refused, nothing scored:\n  " + "\n  ".join(problems))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(feature_names))


def header_problem(columns: Sequence[Any], feature_names: Sequence[str], passthrough: Sequence[str] | None = ()
                   ) -> str | None:
    """What is wrong with a header, in one sentence: the missing features, the unknown columns (None for
    `passthrough`: every other column passes through, none is unknown), the closest match of each missing
    one, and a hint for a file split on another delimiter; None if nothing is. Linear in the header's size
    but for the closest match, which looks at a few short names only (difflib is quadratic per pair)."""
    import difflib

    names = [str(c) for c in columns]
    have, features = set(names), set(feature_names)
    missing = [f for f in feature_names if f not in have]
    unknown = [] if passthrough is None else [c for c in names if c not in features and c not in passthrough]
    if not missing and not unknown:
        return None
    parts = [f"missing feature column(s) {shortened_names(missing, 25)}"] if missing else []
    if unknown:
        parts.append(f"unknown column(s) {shortened_names(unknown, 8)}")

    def plain(name: str) -> str:  # rsi14, RSI_14 and rsi-14 are one name to a reader
        return re.sub(r"[^0-9a-z]", "", name.lower())

    candidates = [c for c in names if c not in features and len(c) <= 64]
    by_plain = {plain(c): c for c in candidates}
    guesses = []
    for f in missing[:20]:
        close = by_plain.get(plain(f)) or next(iter(difflib.get_close_matches(f, candidates[:100], n=1, cutoff=0.8)
                                                    if len(f) <= 64 else []), None)
        if close is not None:
            guesses.append(f"{shortened(close)} for '{f}'")
    if guesses:
        parts.append(f"did you mean {', '.join(guesses[:5])}?")
    if len(names) == 1 and (delimiter := next((d for d in ";\t|" if d in names[0]), None)):
        parts.append(f"the header is one column holding {delimiter!r}: the file is split on {delimiter!r}, "
                     f"not commas; save it as comma-separated CSV")
    return "; ".join(parts)
