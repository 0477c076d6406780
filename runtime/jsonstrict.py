"""JSON as this package reads it: no key given twice, no NaN or Infinity, UTF-8 only, every failure a
ValueError (a manifest, a signature, a recorded row)."""

from __future__ import annotations

import json
from typing import Any

from .errors import LoneSurrogateError, LongIntegerError, RepeatedKeyError


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
        value = json.loads(text, object_pairs_hook=_unique_pairs)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
    except ValueError as exc:
        # int()'s digit limit is the one plain ValueError json.loads lets through (the rest are
        # JSONDecodeError, UnicodeDecodeError or ours); its message ends in advice for Python code.
        if type(exc) is ValueError and "digits" in str(exc):
            raise LongIntegerError("an integer of more than 4,300 digits, too long to read as a number") from None
        raise
    if ("\\u" in text if isinstance(text, str) else b"\\u" in text):  # only an escape can make one
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise LoneSurrogateError("a lone surrogate (an escape such as \\ud800, half of a character), which no "
                                     "output can write as UTF-8") from None
    return value


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
