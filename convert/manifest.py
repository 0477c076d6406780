"""Hashes, the manifest, the output folder guard, and the atomic swap of the output folder.

Output is deterministic: sorted keys, no timestamps, no absolute paths, so the same inputs give
byte-identical files. The folder is written beside the target and swapped in whole; a failed or killed
build leaves an existing output folder as it was.

The guard (`check_output`) runs before any work and again just before the swap: `convert -o DIR` replaces DIR
only if it does not exist, is an empty folder (or holds only the artifacts README every build ships, as a
fresh clone's `artifacts/` does), or is provably a previous build (its manifest.json parses,
has our schema_version, and the folder holds exactly the files it lists). Never the models folder, the
current folder, `/`, the home folder or an ancestor of any of them. `--force` relaxes only the "exactly the
files it lists" part, for a folder whose manifest.json still says it is a build.

The swap is `renameat2(RENAME_EXCHANGE)` on Linux: the new folder and the old one trade places in one
step, so a complete, loadable folder is at the path at every instant. Where the call is missing (not Linux,
glibc < 2.28) or the filesystem refuses it, two renames are used and, between them, the path is briefly
missing (a kill there leaves the previous build in a hidden `.NAME.old-*` folder beside it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.contract import BUNDLE_FILE, ENSEMBLE_FILE, SCHEMA_VERSIONS, SIGNATURE_FILE

from .errors import ConvertError, OutputError
from .loaders import file_limit  # the runtime's JSON limit (runtime.limits.MAX_JSON_BYTES), the same variable

# Recorded for every build; each member kind adds its own (`distributions` on its registry entry).
LIBRARIES = ("onnx", "onnxruntime", "onnxmltools", "skl2onnx", "scikit-learn", "numpy", "ensemble-onnx")
ARTIFACTS_README = Path(__file__).with_name("artifacts_README.md")
log = logging.getLogger(__name__)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file read a chunk at a time: a large file costs one chunk of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": sha256(path.read_bytes())}


def library_versions() -> dict[str, str]:
    from .members import kind_facts  # the registry: the kinds' own libraries

    versions = {}
    for name in dict.fromkeys(LIBRARIES + kind_facts("distributions")):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def dumps(obj: Any) -> bytes:
    """Indented UTF-8 JSON. Non-ASCII text is written as itself (2-3 bytes a character, not a 6-byte \\uXXXX
    escape: long Cyrillic feature names would otherwise push manifest.json past the runtime's JSON limit). The
    digests are over contract.canonical (ASCII escapes), not these bytes, so the two forms agree. A string the
    codec cannot write (a lone surrogate from a \\ud800 escape) is refused: the planning checks refuse such
    names by field, and a build holding one would load, then crash in every output writer."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ConvertError(f"a JSON file of the build would hold {text[exc.start:exc.end]!r}, which is not valid "
                           f"Unicode text (a lone surrogate cannot be written as UTF-8).") from None


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """manifest.json's bytes, or ConvertError when they are over the JSON limit the runtime loads it under:
    a build that is written must load, and a refusal at load that says "rebuild" would loop."""
    data = dumps(manifest)
    limit = file_limit("json")
    if len(data) > limit:
        names = manifest.get("feature_names", [])
        # What filled it: the feature names, or a torch member's code record (every .py under its code folder:
        # a code folder that is the models folder holding a virtualenv lists thousands).
        code = {name: m["code"] for name, m in manifest.get("members", {}).items() if m.get("code")}
        largest = max(code, key=lambda n: len(code[n]), default=None)
        cause = (f"It lists the {len(names):,} feature names ({sum(len(str(n)) for n in names):,} characters in "
                 f"all): shorten them or use fewer features")
        if largest is not None and len(dumps(code[largest])) > len(dumps(names)):
            cause = (f"members.{largest}.code lists {len(code[largest]):,} files ({len(dumps(code[largest])):,} "
                     f"bytes), every Python file under the member's code folder: name a folder that holds the "
                     f"training code alone (\"code\" in ensemble.json; default the models folder itself)")
        raise ConvertError(
            f"manifest.json would be {len(data):,} bytes, over the {limit:,}-byte limit for JSON that the runtime "
            f"loads it under; nothing was written. {cause}, or raise ENSEMBLE_ONNX_MAX_JSON_BYTES above "
            f"{len(data):,} for the build and for every process that loads it.")
    return data


def _folder_mode() -> int:
    """0o777 less the umask: what `mkdir` would have made (mkdtemp makes 0700)."""
    mask = os.umask(0o022)  # the only portable way to read it; set straight back
    os.umask(mask)
    return 0o777 & ~mask


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _listed_build(folder: Path) -> tuple[bool, str]:
    """(whether `folder` is an ensemble-onnx build whose manifest.json we can read, why it is not exactly one)."""
    from runtime.jsonstrict import loads_unique

    manifest_path = folder / "manifest.json"
    try:
        info = os.lstat(manifest_path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 64 << 20:
            return False, "its manifest.json is not a regular file of sensible size"
        manifest = loads_unique(manifest_path.read_bytes())
    except FileNotFoundError:
        return False, "it holds no manifest.json"
    except (OSError, ValueError) as exc:
        return False, f"its manifest.json cannot be read as an ensemble-onnx manifest ({str(exc)[:120]})"
    if not (isinstance(manifest, dict) and manifest.get("schema_version") in SCHEMA_VERSIONS
            and isinstance(manifest.get("files"), dict)):
        return False, "its manifest.json is not an ensemble-onnx manifest"
    # A build's files are plain relative paths, ensemble.onnx among them and present: a
    # manifest.json written by hand ({"schema_version": 1, "files": {}}) does not make a folder a build.
    rels = [rel for rel in manifest["files"] if isinstance(rel, str)]
    if (len(rels) != len(manifest["files"]) or ENSEMBLE_FILE not in rels
            or any(Path(rel).is_absolute() or ".." in Path(rel).parts or rel in ("", ".") for rel in rels)):
        return False, "its manifest.json does not list a build's files (ensemble.onnx, plain relative paths)"
    try:
        has_graph = stat.S_ISREG(os.lstat(folder / ENSEMBLE_FILE).st_mode)
    except OSError:
        has_graph = False
    if not has_graph:
        return False, f"it holds no {ENSEMBLE_FILE}, which its manifest.json lists"
    # A signed build's signature (model.sig, or manifest.sig before it) is the one file its manifest cannot list.
    listed = {Path(rel).as_posix() for rel in rels} | {"manifest.json", BUNDLE_FILE, SIGNATURE_FILE}
    dirs = {p.as_posix() for rel in listed for p in Path(rel).parents if p != Path(".")}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + dirnames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            mode = os.lstat(path).st_mode
            ok = rel in listed and stat.S_ISREG(mode) or rel in dirs and stat.S_ISDIR(mode)
            if not ok:
                return True, f"'{rel}' is not a file its manifest.json lists"
    return True, ""


def output_path(out: Path) -> Path:
    """The output folder where the system finds it: its parent walked as the system walks it (a lexical
    os.path.abspath reads `LINK/../out` as beside LINK, not in the folder LINK leads to), its own name kept."""
    try:
        return Path(out).parent.resolve() / Path(out).name
    except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError before Python 3.13
        raise OutputError(f"-o {out}: its folder cannot be followed ({exc}); name a real folder.") from None


def check_output(out: Path, models_dir: Path | None = None, force: bool = False) -> None:
    """Refuse (OutputError) an output folder `convert` may not replace; see the module docstring."""
    where = f"-o {out}"
    if out.is_symlink():
        raise OutputError(f"{where}: is a symbolic link; name the folder itself.")
    target = output_path(out).resolve()
    models = models_dir.resolve() if models_dir else None
    if models is not None and models != target and _is_within(target, models):
        # The next convert of MODELS would read the build's files as models (an .onnx, a manifest.json).
        raise OutputError(f"{where}: is inside the models folder {models_dir} ({target} in {models}); the next "
                          f"convert would read the build as models. Name a folder outside it, e.g. -o artifacts.")
    protected: list[tuple[Path, str]] = [(models, "the models folder")] if models else []
    protected += [(Path.cwd().resolve(), "the current folder"), (Path.home().resolve(), "your home folder"),
                  (Path(target.anchor), "the filesystem root")]
    for path, what in protected:
        if _is_within(path, target):
            relation = f"{what} ({path})" if path == target else f"an ancestor of {what} ({path})"
            raise OutputError(f"{where}: is {relation}; replacing it would delete it. Name a new folder, "
                              f"e.g. -o artifacts.")
    for parent in target.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{where}: {parent} is a file, not a folder; the output cannot be created there.")
            break
    for parent in target.parents:  # a folder inside a build is an unlisted file there: the build stops loading
        if (parent / "manifest.json").is_file() and _listed_build(parent)[0]:
            raise OutputError(f"{where}: is inside {parent}, an artifacts folder; a folder there stops that build "
                              f"from loading. Name a folder outside it.")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"{where}: is a file, not a folder; convert replaces only a previous build.")
    entries = list(target.iterdir())
    if not entries:
        return
    if [e.name for e in entries] == ["README.md"] and not entries[0].is_symlink() and entries[0].is_file() \
            and entries[0].read_bytes() == ARTIFACTS_README.read_bytes():
        return  # a fresh clone's artifacts/: only the README every build ships, byte for byte
    is_build, why = _listed_build(target)
    if is_build and (not why or force):
        return
    hint = ("; --force replaces a previous build that holds extra files" if is_build else
            "; remove it yourself or name a new folder (--force replaces only a folder whose manifest.json "
            "says it is an ensemble-onnx build)")
    raise OutputError(f"{where}: {target} is not provably a previous ensemble-onnx build ({why}); refused to "
                      f"replace it{hint}.")


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _rename(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False when the platform or filesystem does not offer it."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # e.g. a filesystem without RENAME_EXCHANGE: fall back to two renames
    raise OSError(err, os.strerror(err), str(dst))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One convert per output at a time: an exclusive flock on `.NAME.lock` beside the output, held for the
    whole build (the kernel drops it when the process dies, so a killed convert leaves no stale lock). The
    second convert is refused naming the output. Holding it, the staging folders a killed convert left
    (`.NAME.new-*`, named by write_atomically and by nothing else) are removed. Folders made to hold the
    lock are removed again if the build left nothing in them (a refused build writes nothing anywhere)."""
    out = output_path(out)
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]  # deepest first; removed if empty
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:  # a link, a folder or a read-only folder where the lock goes
            _remove_empty(made)
            raise OutputError(f"-o {out}: cannot take the lock {lock} ({exc.strerror}); remove what is there "
                              f"or name another folder.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"-o {out}: another convert is writing this output now (it holds {lock}); wait for "
                              f"it to finish, or name another folder.") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except FileNotFoundError:
            same = False
        if same:  # not a lock file the previous holder unlinked between our open and our flock
            break
        os.close(fd)
    try:
        _clean_staging(out)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
        _remove_empty(made)


def _remove_empty(made: list[Path]) -> None:
    """The folders made for the lock (deepest first), if nothing was left in them."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


def _clean_staging(out: Path) -> None:
    """Staging folders of a convert to this output that was killed: `.NAME.new-XXXXXXXX` (mkdtemp's), folders,
    never links. A `.NAME.old-*` is removed only when the output is in place (the swap completed); otherwise
    it holds the only copy of the previous build and is left, said in the log."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(new|old)-[A-Za-z0-9_]{{8}}")
    for entry in out.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        if match.group(1) == "old" and not out.is_dir():
            log.warning("%s holds the previous build of %s (a convert was killed while swapping); move it back "
                        "with: mv %s %s", entry, out, entry / out.name, out)
            continue
        log.info("removing %s, left by a convert to %s that did not finish", entry, out)
        shutil.rmtree(entry, ignore_errors=True)


def write_atomically(out: Path, files: dict[str, bytes], models_dir: Path | None = None,
                     force: bool = False) -> None:
    """Write `files` (relative path -> bytes) as the whole content of `out`, swapped in at the end.

    `check_output` runs again just before the swap: the folder may have changed while the build ran."""
    out = output_path(out)
    check_output(out, models_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        os.chmod(staging, _folder_mode())
        for rel, data in files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:  # never a byte outside the new folder
                raise OutputError(f"refused to write '{rel}': not a path inside the output folder.")
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        check_output(out, models_dir, force)
        if out.exists():
            if _rename(staging, out, RENAME_EXCHANGE):  # staging now holds the previous build
                _fsync_dir(out.parent)
                shutil.rmtree(staging)
                return
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, retired / out.name)
            os.rename(staging, out)
            shutil.rmtree(retired)
        else:
            try:
                renamed = _rename(staging, out, RENAME_NOREPLACE)
            except FileExistsError:  # another convert (or anyone) created it after the check: theirs stays
                raise OutputError(f"-o {out}: appeared while this build ran (another convert to the same "
                                  f"folder?); left as it is. Run again to replace it.") from None
            if not renamed:
                os.rename(staging, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
