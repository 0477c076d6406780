"""Safe reading of every model file the build touches. Nothing here can run code from a file.

- torch weights: `torch.load(weights_only=True)` only, or safetensors (tensors only by construction); the
  result must be a flat name -> tensor mapping.
- pickles and joblib files: one restricted unpickler, whose `find_class` admits exactly the globals the
  role needs (a scaler, a stacker, or a member kind's own, declared on its registry entry). Anything else is
  refused when the pickle asks for it, before any of it executes.
- JSON: size-capped, must be an object, a key written twice is refused with its line.
- every file: a regular file (a FIFO would block the build forever, a folder or device is a mistake) no
  larger than the limit of its category, checked before it is opened and again on the open descriptor.
- torch tensors: every tensor a plain, contiguous view inside its storage (no stride-0 or overlapping
  views that inflate a tiny file into a huge architecture), the total element count bounded, before any
  module is built.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from runtime.errors import RepeatedKeyError
from runtime.limits import MAX_JSON_BYTES, env_limit, file_kind, read_capped

from .errors import (
    ConvertError,
    MetadataError,
    ModelFileError,
    StateDictError,
    UnsafeFileError,
)

# Size limits per category of file, in bytes; each can be raised with ENSEMBLE_ONNX_MAX_<CATEGORY>_BYTES
# (e.g. ENSEMBLE_ONNX_MAX_MODEL_BYTES=4294967296). Sized to the formats with ample room: metadata,
# ensemble.json and scaler JSON are a few kilobytes; the demo's model files are under 2 MB.
FILE_LIMITS = {
    "json": MAX_JSON_BYTES,  # 1 MiB: _meta.json, ensemble.json, a scaler's JSON
    "model": 1 << 30,    # every member kind's model files: state_dicts, native tree formats, pickles, joblib
    "data": 512 << 20,   # --parity-data and --calibrate rows (read whole)
}
# The most tensor elements a state_dict may hold in all (ENSEMBLE_ONNX_MAX_TENSOR_ELEMENTS): 1 GiB of float32.
MAX_TENSOR_ELEMENTS = 1 << 28


def file_limit(category: str) -> int:
    return env_limit(f"ENSEMBLE_ONNX_MAX_{category.upper()}_BYTES", FILE_LIMITS[category], ConvertError)


def _check_stat(info: os.stat_result, path: Path, category: str, what: str, error: type[ConvertError]) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: the {what} is {file_kind(info.st_mode)}, not a regular file; the build reads "
                    f"only regular files.")
    limit = file_limit(category)
    if info.st_size > limit:
        raise error(f"{path}: the {what} is {info.st_size} bytes, over the {limit}-byte limit for {category} "
                    f"files; raise it with ENSEMBLE_ONNX_MAX_{category.upper()}_BYTES if the file is genuine.")


def check_regular(path: Path, category: str, what: str, error: type[ConvertError] = ModelFileError) -> None:
    """Refuse anything but a regular file within its category's size limit, without opening it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: the {what} does not exist.") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror}).") from None
    _check_stat(info, path, category, what, error)


def open_checked(path: Path, category: str, what: str, error: type[ConvertError] = ModelFileError) -> IO[bytes]:
    """The file opened for reading, checked on its descriptor: O_NONBLOCK, so a FIFO swapped in after
    `check_regular` cannot block the open, and fstat sees what was actually opened."""
    check_regular(path, category, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot open the {what} ({exc.strerror}).") from None
    try:
        _check_stat(os.fstat(fd), path, category, what, error)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_checked(path: Path, category: str, what: str, error: type[ConvertError] = ModelFileError) -> bytes:
    """The whole file, never more than its limit (a file that grows while read is cut off and refused)."""
    limit = file_limit(category)
    with open_checked(path, category, what, error) as fh:
        data = read_capped(fh, limit)  # in chunks: a raised limit of any size reserves nothing
    if data is None:
        raise error(f"{path}: the {what} grew past the {limit}-byte limit while it was read.")
    return data

# Globals every numpy-carrying pickle needs (both numpy 1.x and 2.x spellings) and joblib's array wrapper.
COMMON_PICKLE_GLOBALS = _COMMON = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "bytearray"),
})

# The roles that are not member kinds; a member kind's globals are on its registry entry (`pickle_globals`).
ALLOWED_GLOBALS: dict[str, frozenset[tuple[str, str]]] = {
    "scaler": _COMMON | {("sklearn.preprocessing._data", "StandardScaler")},
    "stacker": _COMMON | {("sklearn.linear_model._logistic", "LogisticRegression"),
                          ("sklearn.preprocessing._label", "LabelEncoder")},
}


def allowed_globals(role: str) -> frozenset[tuple[str, str]]:
    """The globals a pickle of `role` may name: a scaler's, a stacker's, or those a member kind declares."""
    if role in ALLOWED_GLOBALS:
        return ALLOWED_GLOBALS[role]
    from .members import get_kind  # imported here: the kind modules import this one

    return _COMMON | get_kind(role).pickle_globals


def _restricted_unpickler_class(role: str, path: Path, stand_ins: Mapping[tuple[str, str], type]) -> type:
    """A joblib-capable unpickler (it also reads plain pickles) that admits only the role's globals, and
    gives `stand_ins[(module, name)]` in place of an admitted global where there is one."""
    from joblib.numpy_pickle import NumpyUnpickler

    allowed = allowed_globals(role)

    class RestrictedUnpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise UnsafeFileError(
                    f"{path}: refused to unpickle global '{module}.{name}': it is not on the allowlist for a "
                    f"{role} file, and unpickling it could run code. " + _other_role(module, name, role))
            return stand_ins.get((module, name)) or super().find_class(module, name)

    return RestrictedUnpickler


def _other_role(module: str, name: str, role: str) -> str:
    """The way out of a refused global: the role whose files hold it (a model given the wrong kind, say), or
    re-saving in a native format."""
    from .members import get_kind, known_kinds

    holders = [r for r in ALLOWED_GLOBALS if r != role and (module, name) in ALLOWED_GLOBALS[r] - _COMMON]
    holders += [k for k in known_kinds() if k != role and (module, name) in get_kind(k).pickle_globals - _COMMON]
    if holders:
        return (f"That global belongs in a '{holders[0]}' file: check the kind (or the file) ensemble.json gives "
                f"this one.")
    return ("Re-save the model with its native format (each kind's is in docs/models-folder.md; a scaler's is "
            ".json) or retrain with a supported class.")


PICKLE_SUFFIXES = (".pkl", ".joblib")


def load_pickle(path: Path, role: str, stand_ins: Mapping[tuple[str, str], type] | None = None) -> Any:
    """Unpickle a .pkl or .joblib file admitting only the globals `role` needs. `stand_ins`: subclasses to
    build in place of admitted classes, which check the state a pickle gives them (a tree library's model text)
    before the real class reads it; a ModelFileError they raise passes through as it is."""
    # joblib's own reader detects compression and memory-maps nothing (mmap_mode=None); joblib >= 1.6 routes
    # the nested pickle of object arrays through our find_class too.
    from joblib.numpy_pickle import _validate_fileobject_and_memmap

    unpickler_class = _restricted_unpickler_class(role, path, stand_ins or {})
    opened = open_checked(path, "model", f"{role} pickle")
    try:
        with opened as raw, _validate_fileobject_and_memmap(raw, str(path), None) as (fobj, _):
            if isinstance(fobj, str):  # joblib < 0.10 layout, read through unrestricted legacy code
                raise UnsafeFileError(f"{path}: pre-0.10 joblib layout is not supported; re-save the model.")
            return unpickler_class(str(path), fobj, True).load()
    except (UnsafeFileError, ModelFileError, FileNotFoundError):
        raise
    except Exception as exc:  # truncated or corrupt streams raise a zoo of types
        if path.suffix.lower() not in PICKLE_SUFFIXES:  # read as a pickle for want of another format: say so
            raise ModelFileError(f"{path}: not a pickle ({type(exc).__name__}: {exc}), and a '{role}' file "
                                 f"named '*{path.suffix}' is read as one (each kind's formats: "
                                 f"docs/models-folder.md); check the kind ensemble.json gives it, or the file."
                                 ) from exc
        raise ModelFileError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc}); the file is truncated "
                             f"or is not a {role} pickle.") from exc


# A safetensors file: an 8-byte little-endian header length, then the JSON header.
_SAFETENSORS_HEADER = 8


def _is_safetensors(head: bytes) -> bool:
    return len(head) > _SAFETENSORS_HEADER and head[_SAFETENSORS_HEADER:_SAFETENSORS_HEADER + 1] == b"{"


def _load_safetensors(path: Path, data: bytes) -> dict[str, Any]:
    """safetensors holds tensors and nothing else: no code can run reading it, whatever the file says."""
    try:
        from safetensors.torch import load
    except ImportError:
        raise ModelFileError(f"{path}: a safetensors file; install the convert extra "
                             f"(pip install 'ensemble-onnx[convert]') to read it.") from None
    try:
        return load(data)
    except Exception as exc:  # SafetensorError, or torch refusing a dtype
        raise ModelFileError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); it may be truncated. Re-save it with "
                             f"safetensors.torch.save_file(model.state_dict(), path).") from exc


def load_state_dict(path: Path) -> dict[str, Any]:
    """A bare `state_dict`: saved with `torch.save(model.state_dict())` and read with `weights_only=True`, or
    a `.safetensors` file (recognised by its content, whatever its name)."""
    import torch

    try:
        with open_checked(path, "model", "torch state_dict") as fh:
            head = fh.read(_SAFETENSORS_HEADER + 1)
            if _is_safetensors(head):
                rest = read_capped(fh, file_limit("model") - len(head))
                if rest is None:
                    raise ModelFileError(f"{path}: the torch state_dict grew past the size limit while it was read.")
                state: Any = _load_safetensors(path, head + rest)
            else:
                fh.seek(0)
                state = torch.load(fh, map_location="cpu", weights_only=True)
    except ConvertError:
        raise
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"{path}: refused by torch.load(weights_only=True): it holds more than tensors "
                              f"({str(exc).splitlines()[0]}). Save `model.state_dict()`, not the model.") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc}); it may be "
                             f"truncated. Re-export it with torch.save(model.state_dict(), path).") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise UnsafeFileError(f"{path}: expected a plain state_dict (tensor name -> tensor), found {keys}. "
                              f"If this is a training checkpoint, save checkpoint['model_state_dict'] alone.")
    check_tensors(state, path)
    return dict(state)


def check_tensors(state: Mapping[str, Any], path: Path) -> None:
    """Every tensor a plain dense view that lies inside its own storage, and not too many elements in all.

    A stride-0 or overlapping view lets a file of a few kilobytes claim a tensor of any shape; the
    architecture is read off the shapes, so it would build (and allocate) a module of that size."""
    import torch

    limit = env_limit("ENSEMBLE_ONNX_MAX_TENSOR_ELEMENTS", MAX_TENSOR_ELEMENTS, ConvertError)
    total = 0
    for name, t in state.items():
        if t.layout != torch.strided:
            raise StateDictError(f"{path}: tensor '{name}' has layout {t.layout}; a state_dict holds dense tensors.")
        if any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride(), strict=True)):
            raise StateDictError(f"{path}: tensor '{name}' of shape {tuple(t.shape)} repeats one stored value "
                                 f"(stride {t.stride()}); a saved state_dict holds real weights, not expanded views.")
        if not t.is_contiguous():
            raise StateDictError(f"{path}: tensor '{name}' of shape {tuple(t.shape)} is a non-contiguous view "
                                 f"(stride {t.stride()}); save the model's own state_dict().")
        stored = t.untyped_storage().nbytes() // max(t.element_size(), 1)
        if t.storage_offset() + t.numel() > stored:
            raise StateDictError(f"{path}: tensor '{name}' claims {t.numel()} elements from a storage of {stored}.")
        total += t.numel()
        if total > limit:
            raise StateDictError(f"{path}: the tensors hold more than {limit} elements in all (at '{name}'); "
                                 f"raise ENSEMBLE_ONNX_MAX_TENSOR_ELEMENTS if the model is genuinely this large.")


class _RepeatedAt(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


def _line_of_repeat(text: str, start: int, key: str) -> int:
    """The line of the second `"key":` written directly in the object opening at `start` (nested objects
    and string contents skipped): where the repeat is."""
    import re

    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    depth, seen, i = 1, 0, start
    while i < len(text) and depth > 0:
        c = text[i]
        if c == '"':
            if depth == 1 and pattern.match(text, i):
                seen += 1
                if seen == 2:
                    break
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return text.count("\n", 0, i) + 1


def _parse_object(s_and_end: tuple[str, int], *args: Any) -> Any:
    try:
        return json.decoder.JSONObject(s_and_end, *args)  # type: ignore[attr-defined]
    except RepeatedKeyError as exc:  # raised by the pairs hook once the innermost object is read
        raise _RepeatedAt(exc.key, _line_of_repeat(s_and_end[0], s_and_end[1], exc.key)) from None


def _unique_decoder() -> json.JSONDecoder:
    from runtime.jsonstrict import _unique_pairs

    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs)
    decoder.parse_object = _parse_object  # type: ignore[attr-defined]
    # The pure-Python scanner calls parse_object (the C one does not): small files, so speed does not matter.
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def parse_json(text: str, path: Path, what: str) -> Any:
    """JSON text -> value; a repeated key, malformed text or nesting too deep is a MetadataError naming the
    file, the key and the line."""
    try:
        return _unique_decoder().decode(text)
    except _RepeatedAt as exc:
        raise MetadataError(f"{path}: line {exc.line}: key '{exc.key}' is written twice in one object ({what}); "
                            f"JSON would keep the last silently. Remove one.") from None
    except RecursionError:
        raise MetadataError(f"{path}: {what} is nested too deeply to parse.") from None
    except ValueError as exc:
        raise MetadataError(f"{path}: {what} is not valid JSON ({str(exc)[:200]}).") from None


def load_json(path: Path, what: str = "metadata") -> dict[str, Any]:
    """A small JSON object; refuses oversized, malformed, non-object files or a repeated key, naming the file."""
    raw = read_checked(path, "json", what, MetadataError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: {what} is not UTF-8 text ({exc}).") from None
    data = parse_json(text, path, what)
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: {what} must be a JSON object, found {type(data).__name__}.")
    return data
