"""One way to write a result file: every command that writes one (score's output and rejects, the HTML
reports of compare and evaluate, drift's and predict's --out, bench's files) goes through here.

`check_target` refuses, before any work, what would lose data or break a build: a folder, one of the run's
inputs, a path inside an artifacts folder (a file there is refused at the next load as unlisted) or the
models folder, and an existing file without `force`. `AtomicOutput` writes a file that appears whole or not
at all (an unnamed O_TMPFILE, or a hidden `.NAME.partial-*` file, in the target's folder; fsync; link or
rename). `commit_together` publishes a run's files together: if any cannot take its name, the ones already
published are taken back (an earlier file restored), so a run leaves all its files or none. `dumps_strict`
is the JSON every command prints or writes: strict JSON (non-finite numbers as null, bytes as base64).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..contract import ENSEMBLE_FILE, MANIFEST_FILE, MODEL_STAMP, MODELS_SPEC_FILE
from ..errors import CannotRunError, InputError
from ..limits import file_kind

# The faults of the machine, not of the inputs or the check: disk full, a file-size limit, a quota, a failing
# disk, a read-only filesystem. Said as such, with exit code 3 (CannotRunError), never as an internal error.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file-size limit was reached",
                      errno.EDQUOT: "the disk quota was reached", errno.EIO: "an I/O error",
                      errno.EROFS: "the filesystem is read-only"}


def environment_fault(exc: BaseException, where: str | os.PathLike[str]) -> CannotRunError | None:
    """A CannotRunError naming `where` for a fault of the machine (ENOSPC, EFBIG ...), else None. pyarrow's
    IO errors carry the errno in their text only ("[Errno 28] No space left on device")."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno if exc.errno in ENVIRONMENT_ERRNOS else next(
        (c for c in ENVIRONMENT_ERRNOS if f"[Errno {c}]" in str(exc) or os.strerror(c) in str(exc)), None)
    if code is None:
        return None
    return CannotRunError(f"{where}: {ENVIRONMENT_ERRNOS[code]} ({errno.errorcode[code]}); nothing was written. "
                          f"Free space or raise the limit, then run again.")


def is_build_folder(folder: Path) -> bool:
    """Whether `folder` holds an artifacts folder's manifest.json and ensemble.onnx (read no further: a
    result file is refused in anything that looks like a build)."""
    return (folder / MANIFEST_FILE).is_file() and (folder / ENSEMBLE_FILE).exists()


def is_models_folder(folder: Path) -> bool:
    """Whether `folder` holds what `convert` reads as a models folder (an ensemble.json, or a file named like a
    model, `xgboost_v20260205_231109_v5.pkl`): a result file there is read as one of them, or replaces one."""
    if os.path.lexists(folder / MODELS_SPEC_FILE):
        return True
    try:
        with os.scandir(folder) as entries:
            return any(MODEL_STAMP.match(entry.name) for entry in entries)
    except OSError:  # a folder that cannot be listed holds no models this run could harm
        return False


def refuse_kind(target: Path, where: str) -> None:
    """Only a regular file, or a link to one (or to nothing), is ever replaced: never a folder, a device, a
    FIFO or a socket, nor a link to one (`--force -o /dev/stdout` would replace the system's link)."""
    try:
        info = os.stat(target)  # what a link leads to
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there, or a link to nothing: the link itself is replaced
    except OSError as exc:
        raise InputError(f"{where}: cannot be examined ({exc.strerror}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{where}: is a folder; name a file.")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{where}: is {file_kind(info.st_mode)}, not a regular file; name a file.")


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def placed(target: Path) -> Path:
    """Where `target` lands: its folder as the system walks it (links followed first, then each '..': a lexical
    os.path.abspath would read `LINK/../out.csv` as beside LINK, where the write goes to LINK's target's folder),
    and its own name (a link there is replaced, not followed)."""
    try:
        return Path(target).parent.resolve() / Path(target).name
    except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError before Python 3.13, OSError after
        raise InputError(f"{target}: its folder cannot be followed ({exc}); name a file in a real folder.") from None


def check_target(target: Path, *, force: bool, flag: str = "-o", inputs: Iterable[Path | str] = (),
                 builds: Iterable[Path | str] = (), models: Path | str | None = None) -> None:
    """InputError unless a result file may be written at `target` (see the module docstring)."""
    where = f"{flag} {target}"
    # The link itself is what gets replaced (never the file it points to): judged where it lies.
    lands = placed(target)
    if target.name in ("", ".", ".."):
        raise InputError(f"{where}: names a folder, not a file.")
    if str(target) == "-":  # stdout to predict; a file named '-' in the current folder is never what was meant
        raise InputError(f"{where}: '-' (stdout) is not a file this command can write; name a file.")
    refuse_kind(target, where)
    for source in inputs:
        source = Path(source)
        if str(source) == "-":
            continue
        if lands == source.resolve() or target.resolve() == source.resolve() or (
                target.exists() and source.exists() and os.path.samefile(target, source)):
            raise InputError(f"{where}: is an input of this run ({source}); write the result to another file.")
    for build in builds:
        if _within(lands, Path(build).resolve()):
            raise InputError(f"{where}: is inside the artifacts folder {build}: an unlisted file there stops the "
                             f"build from loading; write the result elsewhere.")
    if models is not None and _within(lands, Path(models).resolve()):
        raise InputError(f"{where}: is inside the models folder {models}; write the result elsewhere.")
    if is_models_folder(lands.parent):
        raise InputError(f"{where}: is in {lands.parent}, a models folder (it holds an ensemble.json or model "
                         f"files): convert would read a file there as a model, or it would replace one; write the "
                         f"result elsewhere.")
    for folder in lands.parents:
        if is_build_folder(folder):
            raise InputError(f"{where}: is inside {folder}, an artifacts folder: an unlisted file there stops the "
                             f"build from loading; write the result elsewhere.")
    if not lands.parent.is_dir():
        raise InputError(f"{where}: the folder {lands.parent} does not exist.")
    if os.path.lexists(target) and not force:
        raise InputError(f"{where}: already exists; pass --force to replace it.")


class AtomicOutput:
    """A file that appears whole or not at all.

    Written to an unnamed file in the target's folder (Linux O_TMPFILE), so a run killed at any point (even
    SIGKILL) leaves nothing behind; where O_TMPFILE is unsupported, to a hidden `.NAME.partial-*` file
    beside the target, removed on any error. `commit` (or `commit_together`) fsyncs it and gives it the
    target's name: without `force` only if the name is still free, with `force` by rename over the old
    file (a symbolic link there is replaced, never written through)."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target, self.force = Path(target), force
        self.temp_name: Path | None = None
        self.staged: Path | None = None  # the hidden name the complete file holds before it takes the target's
        self.backup: Path | None = None  # the replaced file, kept until every file of the run is published
        self.published = False
        refuse_kind(self.target, str(self.target))
        if os.path.lexists(self.target) and not force:
            raise InputError(f"{self.target}: already exists; pass --force to replace it.")
        folder = self.target.parent  # Path("o.csv").parent is Path("."): never empty
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise InputError(f"{self.target}: cannot write in {folder} ({exc.strerror}).") from None
            try:  # a filesystem without O_TMPFILE (procfs, sysfs, some network mounts) and no say in it
                fd, name = tempfile.mkstemp(dir=folder, prefix=f".{self.target.name}.partial-")
            except OSError as error:
                fault = environment_fault(error, self.target)
                if fault is not None:
                    raise fault from None
                raise InputError(f"{self.target}: cannot write in {folder} ({error.strerror}).") from None
            os.fchmod(fd, 0o644)
            self.temp_name = Path(name)
        self.file = os.fdopen(fd, "wb")

    def _hidden(self, tag: str) -> Path:
        return Path(tempfile.mktemp(dir=self.target.parent, prefix=f".{self.target.name}.{tag}-"))

    def stage(self) -> None:
        """Flushed, fsynced and named (hidden) beside the target; nothing visible changes yet."""
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.temp_name is None:
            while True:
                staged = self._hidden("partial")
                try:
                    _link_fd(self.file.fileno(), staged)
                    break
                except FileExistsError:  # mktemp's name taken meanwhile: another one
                    continue
            self.staged = staged
        else:
            self.staged = self.temp_name
        self.file.close()

    def publish(self) -> None:
        assert self.staged is not None
        refuse_kind(self.target, str(self.target))  # what may have appeared there while the run went on
        if self.force:
            if os.path.lexists(self.target):
                backup = self._hidden("old")
                os.link(self.target, backup, follow_symlinks=False)  # the link itself, if it is one
                self.backup = backup
            os.replace(self.staged, self.target)
        else:
            try:
                os.link(self.staged, self.target)
            except FileExistsError:
                raise InputError(f"{self.target}: appeared while this run wrote it; nothing was written. Pass "
                                 f"--force to replace it.") from None
            os.unlink(self.staged)
        self.staged, self.published = None, True

    def take_back(self) -> None:
        """Undo publish: the replaced file restored, or the new one removed (it is ours: just published)."""
        if not self.published:
            return
        if self.backup is not None:
            os.replace(self.backup, self.target)
            self.backup = None
        else:
            os.unlink(self.target)
        self.published = False

    def finish(self) -> None:
        if self.backup is not None:
            os.unlink(self.backup)
            self.backup = None
        _fsync_dir(self.target.parent)

    def commit(self) -> None:
        commit_together([self])

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        for name in (self.temp_name, self.staged):
            if name is not None and os.path.lexists(name):
                os.unlink(name)
        self.temp_name = self.staged = None


def commit_together(outputs: Sequence[AtomicOutput]) -> None:
    """Publish every output, or none: on any failure those already published are taken back."""
    done: list[AtomicOutput] = []
    try:
        for out in outputs:
            out.stage()
        for out in outputs:
            out.publish()
            done.append(out)
    except BaseException as exc:
        for out in reversed(done):
            out.take_back()
        for out in outputs:
            out.abort()
        fault = environment_fault(exc, outputs[len(done)].target if len(done) < len(outputs) else outputs[0].target)
        if fault is not None:
            raise fault from None
        raise
    for out in outputs:
        out.finish()


def _link_fd(fd: int, target: Path) -> None:
    """Gives an O_TMPFILE file its name: linkat(AT_SYMLINK_FOLLOW) through /proc/self/fd, as open(2) shows.
    (os.link without a dir_fd calls link(2), which would link the /proc symlink itself.)"""
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(target: Path, data: bytes, *, force: bool) -> None:
    """`data` as the whole content of `target`, atomically (call check_target first)."""
    out = AtomicOutput(target, force)
    try:
        out.file.write(data)
    except BaseException as exc:
        out.abort()
        fault = environment_fault(exc, target)
        if fault is not None:
            raise fault from None
        raise
    out.commit()


def strict(value: Any) -> Any:
    """A value as strict JSON holds it: a non-finite number as null, bytes as base64 text, a date or time as
    its text (2024-01-31 09:30:00), a Decimal as its text, a tuple or set as a list; everything else as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, (set, frozenset)):
        return [strict(v) for v in sorted(value, key=str)]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, int)):  # a numpy scalar
        return strict(value.item())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _default(value: Any) -> Any:
    """What json's encoder cannot hold itself, in the form `strict` gives it (its C path stays in use)."""
    if isinstance(value, (bytes, bytearray, memoryview, datetime.date, datetime.time, datetime.timedelta,
                          decimal.Decimal, set, frozenset)):
        return strict(value)
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return value.item()
    return str(value)


def dumps_strict(value: Any, **options: Any) -> str:
    """Strict JSON of `value` (see `strict`), refusing any NaN or infinity left (allow_nan=False). Only a value
    holding a non-finite number takes the slow path through `strict`: a backfill writes millions of rows."""
    try:
        return json.dumps(value, allow_nan=False, default=_default, **options)
    except ValueError:  # a NaN or an infinity somewhere
        return json.dumps(strict(value), allow_nan=False, default=_default, **options)
