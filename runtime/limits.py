"""How much the package reads of a file or a stream, and the environment variables that raise it."""

from __future__ import annotations

import os
import re
import stat
from typing import IO, BinaryIO

from .errors import InputError, shortened

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
