"""Aligning and validating what callers hand to the ensemble: every value a finite number, every feature
present exactly once, in the training column order. Errors name the row and the feature at fault. (Strict
JSON is in `jsonstrict`, size limits in `limits`, the commands' record reading in `records`.)"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError, integer_size, shortened_names


def _check_cell(value: Any, row: int, feature: str, missing: bool = False) -> float:
    """`value` as a float; NaN only with `missing` (the build's input domain then says where it is taken)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"row {row}, feature '{feature}': {_short(value)} is not a number.", row)
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: too large for any float
        raise InputError(f"row {row}, feature '{feature}': {_short(value)} is too large for a float.", row) from None
    if math.isinf(number) or (math.isnan(number) and not missing):
        raise InputError(f"row {row}, feature '{feature}': {value!r} is not finite; impute it before scoring.", row)
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
                             "scoring.", int(r))
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
            try:
                _aligned_columns(keys, feature_names, f"row {r}")
            except InputError as exc:
                exc.row = r
                raise
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
        if not inside.all():
            self._refuse(x, ~inside & ~(np.isnan(x) & self.nan))

    def check_missing(self, x: np.ndarray) -> None:
        """The NaN half of `check` alone: for `drift`, which measures how far rows moved and so takes a value
        outside the range, but holds a NaN to the rule predict holds it to."""
        nan = np.isnan(x)
        if nan.any():
            self._refuse(x, nan & ~self.nan)

    def _refuse(self, x: np.ndarray, bad: np.ndarray) -> None:
        """InputError for the first True of `bad` (values outside the domain), counting the rows refused."""
        if not bad.any():
            return
        r, c = (int(i) for i in np.argwhere(bad)[0])
        name, rows = self.feature_names[c], int(bad.any(axis=1).sum())
        if np.isnan(x[r, c]):
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
