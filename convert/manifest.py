"""Hashes, the manifest, and the atomic swap of the output folder.

Output is deterministic: sorted keys, no timestamps, no absolute paths, so the same inputs give
byte-identical files. The folder is written beside the target and swapped in whole; a failed or killed
build leaves an existing output folder as it was.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxmltools", "skl2onnx", "scikit-learn", "xgboost", "lightgbm",
             "numpy", "ensemble-onnx")
ARTIFACTS_README = Path(__file__).with_name("artifacts_README.md")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_record(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": sha256(path.read_bytes())}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_atomically(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` (relative path -> bytes) as the whole content of `out`, swapped in at the end."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out.exists() and _exchange(staging, out):
            shutil.rmtree(staging)  # it now holds the previous build
            return
        retired = None
        if out.exists():  # no atomic exchange here: a short window where `out` is missing
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, retired / out.name)
        os.rename(staging, out)
        if retired is not None:
            shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): at every instant `b` is a whole folder,
    the old one or the new one. False where the system cannot; OSError when it can and failed."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):  # an old kernel, or a filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))
