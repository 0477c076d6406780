"""Aligning and validating what callers hand to the ensemble: every value a finite number, every feature
present exactly once, in the training column order. Errors name the row and the feature at fault."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import IO, Any, BinaryIO

import numpy as np

# Defined in errors.py; importable from here as before.
from .errors import InputError as InputError
from .errors import LongIntegerError as LongIntegerError
from .errors import RepeatedKeyError as RepeatedKeyError
from .errors import integer_size, shortened, shortened_names


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RepeatedKeyError(key)
        seen[key] = value
    return seen


def loads_unique(text: str | bytes) -> Any:
    """`json.loads` that refuses a repeated key (RepeatedKeyError) and turns nesting too deep for the parser
    into a ValueError; every failure is a ValueError (JSONDecodeError, UnicodeDecodeError included)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
    except ValueError as exc:
        # int()'s digit limit is the one plain ValueError json.loads lets through (the rest are
        # JSONDecodeError, UnicodeDecodeError or ours); its message ends in advice for Python code.
        if type(exc) is ValueError and "digits" in str(exc):
            raise LongIntegerError("an integer of more than 4,300 digits, too long to read as a number") from None
        raise


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(data: bytes) -> Any:
    """JSON as files this package writes hold it: UTF-8 bytes (json.loads alone would guess UTF-16 or UTF-32
    from the first bytes), no repeated key (RepeatedKeyError), no NaN or Infinity; any failure a ValueError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def _check_cell(value: Any, row: int, feature: str, missing: bool = False) -> float:
    """`value` as a float; NaN only with `missing` (the build's input domain then says where it is taken)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"row {row}, feature '{feature}': {_short(value)} is not a number.")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: too large for any float
        raise InputError(f"row {row}, feature '{feature}': {_short(value)} is too large for a float.") from None
    if math.isinf(number) or (math.isnan(number) and not missing):
        raise InputError(f"row {row}, feature '{feature}': {value!r} is not finite; impute it before scoring.")
    return number


def _short(value: Any) -> str:
    """The value for a message, cut short; a huge integer by its size (repr of one over 4,300 digits raises)."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return integer_size(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse_masked(x: Any) -> None:
    # np.asarray drops a mask silently: the values under it would be scored as if they were data.
    if isinstance(x, np.ma.MaskedArray):
        raise InputError("features are a masked array; fill or drop the masked values before scoring "
                         "(np.asarray would score the values under the mask).")


def as_matrix(x: Any, feature_names: Sequence[str], missing: bool = False) -> np.ndarray:
    """A 2-D array-like in feature order -> float64 [n, F], or InputError; NaN only with `missing`."""
    _refuse_masked(x)
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # ragged rows, nesting too deep
        raise InputError(f"features must be a rectangular 2-D array "
                         f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    width = len(feature_names)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InputError(f"features must have shape (n, {width}) in the order {list(feature_names)[:3]}...; "
                         f"got shape {arr.shape}." + (" Wrap a single row as [row]." if arr.ndim == 1 else ""))
    if arr.dtype.kind in "iuf":
        out = arr.astype(np.float64)
        if not np.isfinite(out).all():  # the cheap test first: a scored row pays for it on every call
            bad = np.isinf(out) if missing else ~np.isfinite(out)
            if not bad.any():
                return out
            r, c = np.argwhere(bad)[0]
            raise InputError(f"row {r}, feature '{feature_names[c]}': {out[r, c]} is not finite; impute it before "
                             "scoring.")
        return out
    if arr.dtype.kind != "O":
        raise InputError(f"features must be numbers; got an array of dtype {arr.dtype}.")
    return np.array([[_check_cell(v, r, feature_names[c], missing) for c, v in enumerate(row)]
                     for r, row in enumerate(arr)], dtype=np.float64).reshape(len(arr), width)


def _aligned_columns(columns: Sequence[Any], feature_names: Sequence[str], where: str) -> list[int]:
    """Positions of the training features among `columns`; refuses missing, unknown and repeated names."""
    columns = [str(c) for c in columns]
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)  # linear: a line may hold 20,000 keys
    missing = [n for n in feature_names if n not in columns]
    unknown = [c for c in columns if c not in feature_names]
    if repeated:
        raise InputError(f"{where}: feature(s) given more than once: {shortened_names(repeated)}.")
    if missing:
        raise InputError(f"{where}: missing feature(s) {missing}.")
    if unknown:
        raise InputError(f"{where}: unknown feature(s) {shortened_names(unknown)}; expected exactly "
                         f"{list(feature_names)}.")
    return [columns.index(n) for n in feature_names]


def rows_to_matrix(rows: Any, feature_names: Sequence[str], passthrough: Sequence[str] = (),
                   missing: bool = False) -> np.ndarray:
    """A mapping, a list of mappings, a DataFrame (duck-typed: no pandas import) or a 2-D array -> [n, F].

    Named inputs are aligned to the training column order; `passthrough` names (e.g. "symbol") are ignored.
    NaN only with `missing`."""
    _refuse_masked(rows)
    if isinstance(rows, Mapping):
        rows = [rows]
    if hasattr(rows, "columns") and hasattr(rows, "to_numpy"):  # a DataFrame
        columns = [c for c in rows.columns if str(c) not in passthrough]
        order = _aligned_columns(columns, feature_names, "DataFrame")
        return as_matrix(rows[[columns[i] for i in order]].to_numpy(), feature_names, missing)
    if isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)) and rows and all(
            isinstance(r, Mapping) for r in rows):
        out = np.empty((len(rows), len(feature_names)), dtype=np.float64)
        for r, row in enumerate(rows):
            keys = [k for k in row if str(k) not in passthrough]
            _aligned_columns(keys, feature_names, f"row {r}")
            out[r] = [_check_cell(row[n], r, n, missing) for n in feature_names]
        return out
    if isinstance(rows, (str, bytes)) or (isinstance(rows, Sequence) and any(isinstance(r, Mapping) for r in rows)):
        raise InputError("rows must be a mapping, a list of mappings, a DataFrame or a 2-D array of numbers.")
    return as_matrix(rows, feature_names, missing)


class InputDomain:
    """The rows a build proved parity on (manifest.json's `domain`): per feature a finite [lo, hi], edges
    included, and whether NaN is taken. `check` is on every scoring call: one vectorised pass for a row set
    that is all inside; only a refused one pays for finding and naming the first value at fault."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float], nan: Sequence[bool], nan_refused_by: Sequence[str],
                 feature_names: Sequence[str]) -> None:
        self.lo, self.hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        self.nan = np.asarray(nan, dtype=bool)
        self.nan_refused_by, self.feature_names = list(nan_refused_by), list(feature_names)

    def check(self, x: np.ndarray) -> None:
        """InputError naming the first row and feature outside the domain (its range, or the members that take
        no NaN); `x` is float64 [n, F] with no infinity (as_matrix refuses those)."""
        inside = (x >= self.lo) & (x <= self.hi)  # False for NaN
        if inside.all():
            return
        nan = np.isnan(x)
        bad = ~inside & ~(nan & self.nan)
        if not bad.any():
            return
        r, c = (int(i) for i in np.argwhere(bad)[0])
        name, rows = self.feature_names[c], int(bad.any(axis=1).sum())
        if nan[r, c]:
            members = ", ".join(f"'{m}'" for m in self.nan_refused_by[:5])
            more = f" and {len(self.nan_refused_by) - 5} more" if len(self.nan_refused_by) > 5 else ""
            error = InputError(f"row {r}, feature '{name}': nan (a missing value) cannot be scored: member(s) "
                               f"{members}{more} define no missing value; impute it before scoring ({rows} row(s) "
                               f"refused).")
        else:
            error = InputError(f"row {r}, feature '{name}': {float(x[r, c])!r} is outside [{float(self.lo[c])!r}, "
                               f"{float(self.hi[c])!r}], the range the build's parity gate proved it on ({rows} "
                               f"row(s) refused).")
        error.row = r
        raise error


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
    if lines[0][1].lstrip().startswith("{"):
        records = []
        for n, line in lines:
            try:
                record = loads_unique(line)
            except RepeatedKeyError as exc:  # any key: 'symbol' is no feature
                raise InputError(f"line {n}: key {shortened(exc.key)} given more than once.") from None
            except LongIntegerError as exc:
                raise InputError(f"line {n}: {exc}.") from None
            except ValueError as exc:  # malformed, nested too deeply, an integer beyond Python's digit limit
                raise InputError(f"line {n}: not a JSON object "
                                 f"({getattr(exc, 'msg', None) or str(exc)[:200]}).") from None
            if not isinstance(record, dict):
                raise InputError(f"line {n}: not a JSON object.")
            records.append((n, record))
        return records
    try:
        return _csv_records(text)
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit
        raise InputError(f"CSV input is malformed ({exc}).") from None


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
    return records


# Commands that read their rows whole (predict, compare, drift, evaluate) stop one byte past this many
# (ENSEMBLE_ONNX_MAX_INPUT_BYTES raises it): `--input /dev/zero` ends with a message, not with the memory.
MAX_INPUT_BYTES = 64 << 20
# The JSON files a build is described by (models' _meta.json, ensemble.json, a scaler's JSON for convert;
# manifest.json and manifest.sig for the load) are read up to this (ENSEMBLE_ONNX_MAX_JSON_BYTES raises it):
# they are a few kilobytes, and a sparse file of gigabytes must end with a message, not with the memory.
MAX_JSON_BYTES = 1 << 20
_CHUNK = 1 << 20


def env_limit(name: str, default: int, error: type[Exception] = InputError) -> int:
    """A positive whole number from environment variable `name` (a size limit someone raised), else `default`;
    `error` (the caller's family: InputError here, ConvertError for the build) names a value that is not one."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    # Plain ASCII digits only: int() also takes '1_000', ' 5 ', '+5' and other scripts' digits, which nobody
    # writing a byte count means; past 4,300 digits it refuses even plain ones (said below, by the variable).
    if not (raw.isascii() and raw.isdigit()):
        raise error(f"environment variable {name}={_shown(raw)} is not a whole number (digits 0-9 only).")
    if raw.strip("0") == "":
        raise error(f"environment variable {name}={_shown(raw)} must be above 0.")
    try:
        return int(raw)
    except ValueError:  # past Python's 4,300-digit limit on reading an integer
        raise error(f"environment variable {name}={_shown(raw)} has too many digits to read; a limit of "
                    f"30 digits is already beyond any input.") from None


def _shown(raw: str) -> str:
    """An environment value for a message: a byte that is not UTF-8 arrives as a surrogate, which repr
    writes '\\udcff'; it is shown as the byte it was, '\\xff' (an escaped backslash is left as it is)."""
    return re.sub(r"\\(\\|udc([89a-f][0-9a-f]))",
                  lambda m: m.group(0) if m.group(2) is None else "\\x" + m.group(2), shortened(raw))


def read_capped(stream: IO[bytes], limit: int) -> bytes | None:
    """The stream's bytes, read in chunks (a huge limit reserves nothing), or None past `limit` bytes."""
    parts, size = [], 0
    while size <= limit:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(parts)


def read_limited(stream: BinaryIO, where: str) -> bytes:
    """The stream's bytes, read in chunks (a huge limit reserves nothing), or InputError past the limit."""
    limit = env_limit("ENSEMBLE_ONNX_MAX_INPUT_BYTES", MAX_INPUT_BYTES)
    data = read_capped(stream, limit)
    if data is None:
        raise InputError(f"{where}: more than {limit:,} bytes of rows; this command reads its input whole: score "
                         f"large inputs with `ensemble-onnx score`, or raise ENSEMBLE_ONNX_MAX_INPUT_BYTES.")
    return data


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, from its st_mode (lstat's: a link is a link)."""
    for test, name in ((stat.S_ISLNK, "a link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "another kind of file"  # a Solaris door, a BSD whiteout


def decode_input(data: bytes, where: str) -> str:
    """Bytes handed to `predict` (or a build's recorded rows) as UTF-8 text, or InputError naming the byte."""
    try:
        # A byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{where}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                         f"{exc.start}); save the file as UTF-8.") from None


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
