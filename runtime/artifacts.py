"""Verified reading of an artifacts folder: the manifest, then every file it lists, each read once and
checked against its sha256 on the very bytes that will be used. Anything missing, changed, extra, linked
or of an unknown schema is an ArtifactError naming the file and saying what to do.

The manifest itself is bound to the graph: ensemble.onnx carries, in its metadata, the manifest (without
`files`) it was built for and that object's digest (`contract.manifest_digest`). A manifest whose fields
differ from it in any value is refused, naming the field; one that differs only in whitespace or key order
parses to the same object and changes nothing. `files` is bound by the sha256 of each file it lists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import protowire
from .contract import (
    BUNDLE_FILE,
    MANIFEST_FILE,
    META_DIGEST,
    META_MANIFEST,
    OPSETS,
    SIGNATURE_FILE,
    FieldError,
    Manifest,
    bound_part,
    build_id,
    canonical,
    first_difference,
    manifest_digest,
    parse_manifest,
)
from .errors import ArtifactError as ArtifactError  # defined in errors.py; importable from here as before
from .errors import RepeatedKeyError, shortened
from .jsonstrict import loads_strict
from .limits import MAX_JSON_BYTES, env_limit, file_kind, read_capped

if TYPE_CHECKING:  # imported when a key is given: cryptography, lazily
    from .signing import Signed

REBUILD = "rebuild the folder with `ensemble-onnx convert` (make convert)"


# How deep a folder may sit in an artifacts folder: builds nest one (members/). The walk that looks for
# unlisted files stops here, with a message, rather than follow thousands of nested folders.
MAX_FOLDER_DEPTH = 32


def json_limit() -> int:
    """The most bytes manifest.json and a signature (model.sig, manifest.sig) may hold: the limit convert reads
    JSON under."""
    return env_limit("ENSEMBLE_ONNX_MAX_JSON_BYTES", MAX_JSON_BYTES, ArtifactError)


def _regular(info: os.stat_result, path: Path, rel: str, limit: int | None) -> None:
    """Refuse anything but a regular file (naming its kind), or one past `limit` bytes, before it is read."""
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: '{rel}' is not a regular file ({file_kind(info.st_mode)}); {REBUILD}.")
    if limit is not None and info.st_size > limit:
        raise ArtifactError(f"{path}: {info.st_size:,} bytes, over the {limit:,}-byte limit for JSON "
                            f"(ENSEMBLE_ONNX_MAX_JSON_BYTES); {REBUILD}.")


def _read_stream(stream: BinaryIO, path: Path, limit: int | None) -> bytes:
    if limit is None:
        return stream.read()
    data = read_capped(stream, limit)  # a file that grows past the limit while it is read
    if data is None:
        raise ArtifactError(f"{path}: grew past the {limit:,}-byte limit for JSON (ENSEMBLE_ONNX_MAX_JSON_BYTES) "
                            f"while it was read; {REBUILD}.")
    return data


def _read_regular(path: Path, rel: str, limit: int | None = None) -> bytes:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {REBUILD}.") from None
    _regular(info, path, rel, limit)
    with path.open("rb") as fh:
        return _read_stream(fh, path, limit)


# Reading relative to one descriptor of the folder needs openat(2) and friends; elsewhere files are read by path.
_AT = (os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd and os.scandir in os.supports_fd
       and hasattr(os, "O_DIRECTORY") and hasattr(os, "O_NOFOLLOW"))


class _Folder:
    """An artifacts folder opened once, when the load begins (a symlinked folder is resolved then), with every
    file read relative to that descriptor: a release that renames a new build over the folder, or re-points
    a link to it, while a load runs cannot hand that load files of two builds; it reads the build it opened,
    whole. Only regular files are read, and no link on the way to one is followed. Errors name files by path.
    Where the platform has no dir_fd (`_AT` false), files are read by path, as `_read_regular` does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd: int | None = None
        if not _AT:
            if not root.is_dir():
                raise ArtifactError(f"{root}: not an artifacts folder; {REBUILD}.")
            return
        try:
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactError(f"{root}: not an artifacts folder; {REBUILD}.") from None
        except OSError as exc:  # a link loop, no permission
            raise ArtifactError(f"{root}: cannot open the artifacts folder ({exc.strerror}).") from None

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def lexists(self, rel: str) -> bool:
        if self.fd is None:
            return os.path.lexists(self.root / rel)
        try:
            os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _open_folder(self, parts: list[str], rel: str) -> int:
        """A descriptor of the folder `parts` inside the root (the root's own for none), opened one name at a
        time without following a link, so that at most two are open at once; the caller closes it unless it
        is the root's. ArtifactError naming the first folder that is missing, no folder, or unreadable."""
        assert self.fd is not None
        at = self.fd
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=at)
                except FileNotFoundError:
                    raise ArtifactError(f"{self.root / rel}: missing; {REBUILD}.") from None
                except OSError as exc:
                    prefix = "/".join(parts[:depth])
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW on a link, or a file
                        raise ArtifactError(f"{self.root / prefix}: '{prefix}' (on the way to '{rel}') is not a "
                                            f"folder (a link or a file); {REBUILD}.") from None
                    raise ArtifactError(f"{self.root / prefix}: cannot read the folder '{prefix}' "
                                        f"({exc.strerror}).") from None
                if at != self.fd:
                    os.close(at)
                at = inner
        except BaseException:
            if at != self.fd:
                os.close(at)
            raise
        return at

    def read(self, rel: str, limit: int | None = None) -> bytes:
        """The regular file `rel` ('/'-separated, checked by `_check_entries`), at most `limit` bytes."""
        path = self.root / rel
        if self.fd is None:
            return _read_regular(path, rel, limit)
        *parents, name = rel.split("/")
        at = self._open_folder(parents, rel)
        try:
            # Its kind before any open: opening a device can act on it (rewind a tape, arm a watchdog).
            _regular(os.stat(name, dir_fd=at, follow_symlinks=False), path, rel, limit)
            # O_NOFOLLOW and O_NONBLOCK: a link or a FIFO swapped in since the stat neither leads out nor blocks.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=at)
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; {REBUILD}.") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a link: ELOOP (EMLINK on some BSDs)
                raise ArtifactError(f"{path}: '{rel}' is not a regular file (a link); {REBUILD}.") from None
            raise ArtifactError(f"{path}: cannot read it ({exc.strerror}).") from None
        finally:
            if at != self.fd:
                os.close(at)
        try:
            _regular(os.fstat(fd), path, rel, limit)  # what was opened: swapped since the stat, refused too
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as fh:
            return _read_stream(fh, path, limit)

    def refuse_unlisted(self, listed: set[str], by: str = "listed in manifest.json") -> None:
        """ArtifactError at the first file, link or other entry of the folder that `listed` does not name,
        at a folder that cannot be read, or one nested past MAX_FOLDER_DEPTH. Walked without recursion and
        with at most three descriptors open (os.fwalk recursed, held one per level, and skipped a folder it
        could not read); linked folders are entries, never entered."""
        folders: list[str] = [""]
        while folders:
            rel = folders.pop()
            for name, is_folder in self._list(rel):
                entry = f"{rel}/{name}" if rel else name
                if is_folder:
                    if entry.count("/") >= MAX_FOLDER_DEPTH:
                        raise ArtifactError(f"{self.root / entry}: a folder nested more than {MAX_FOLDER_DEPTH} "
                                            f"deep in the artifacts folder (builds nest one: members/); remove it "
                                            f"or {REBUILD}.")
                    folders.append(entry)
                elif entry not in listed:
                    raise ArtifactError(f"{self.root / entry}: not {by}; remove it or {REBUILD}.")

    def _list(self, rel: str) -> Iterator[tuple[str, bool]]:
        """(name, is a folder and no link) of each entry of the folder `rel` ("" for the root), as read: the
        walk stops at the first unlisted one, whatever else the folder holds."""
        try:
            if self.fd is None:
                listing = os.scandir(self.root / rel)
            else:
                at = self._open_folder(rel.split("/") if rel else [], rel)
                try:
                    listing = os.scandir(at)  # lists a duplicate of the descriptor: ours is closed at once
                finally:
                    if at != self.fd:
                        os.close(at)
            with listing:
                for each in listing:
                    yield each.name, each.is_dir(follow_symlinks=False)
        except OSError as exc:  # no permission (by path), a read error, an entry gone while listed
            raise ArtifactError(f"{self.root / rel}: cannot read the folder '{rel or '.'}' ({exc.strerror}).") \
                from None


@dataclass(frozen=True)
class Verified:
    """An artifacts folder whose every byte was checked: the manifest as read and as typed, the files it
    lists, the build id, and the signature's bytes if the folder holds one (model.sig's as `bundle`, the
    former format's manifest.sig as `signature`; checked only under a public key)."""

    manifest: dict[str, Any]
    typed: Manifest
    files: dict[str, bytes]
    build_id: str
    signature: bytes | None
    manifest_bytes: bytes = b""  # as read: what read_files sends on to workers
    bundle: bytes | None = None

    @property
    def manifest_digest(self) -> str:
        return manifest_digest(self.manifest)


def read_folder(folder: str | os.PathLike[str], expect_build_id: str | None = None,
                public_key: str | os.PathLike[str] | bytes | None = None) -> Verified:
    """Every file of the folder verified and bound to ensemble.onnx, or ArtifactError naming what is wrong.
    With `expect_build_id`, only that build; with `public_key`, only a folder that key signed."""
    root = Path(folder)
    limit = json_limit()
    with _Folder(root) as opened:
        raw = opened.read(MANIFEST_FILE, limit)
        signature = opened.read(SIGNATURE_FILE, limit) if opened.lexists(SIGNATURE_FILE) else None
        bundle = opened.read(BUNDLE_FILE, limit) if opened.lexists(BUNDLE_FILE) else None
        # Files are read as the checks reach them: an edited manifest is refused before the weights are hashed.
        verified = _verify(raw, opened.read, signature, root, expect_build_id, public_key, bundle)
        opened.refuse_unlisted(*_allowed(verified, public_key))
    return verified


def _allowed(verified: Verified, public_key: object) -> tuple[set[str], str]:
    """The files a verified folder may hold, and what names them: under a key that checked model.sig, exactly
    the files it signs (= the manifest's, and manifest.json) and itself; otherwise the manifest's files, the
    manifest and either signature file (unchecked without a key)."""
    listed = set(verified.typed.files) | {MANIFEST_FILE}
    if public_key is not None and verified.bundle is not None:
        return listed | {BUNDLE_FILE}, f"signed in {BUNDLE_FILE}"
    return listed | {SIGNATURE_FILE, BUNDLE_FILE}, "listed in manifest.json"


def verify_files(files: Mapping[str, bytes], where: str | os.PathLike[str] = "<artifacts in memory>",
                 expect_build_id: str | None = None,
                 public_key: str | os.PathLike[str] | bytes | None = None) -> Verified:
    """The folder reader's checks on a {relative path: bytes} mapping that includes manifest.json (and
    manifest.sig if signed): what a worker that received the folder's files over the wire (a Ray actor, a
    worker process) runs before it scores. `where` names the source in errors."""
    root = Path(where)
    if not isinstance(files, Mapping):
        raise ArtifactError(f"{root}: the artifacts sent are a {type(files).__name__}, not a mapping of file names "
                            f"to bytes.")
    for rel, data in files.items():  # what came over the wire is checked before any of it is used
        if not isinstance(rel, str) or not isinstance(data, (bytes, bytearray)):
            raise ArtifactError(f"{root}: entry {rel!r} of the artifacts sent is a {type(rel).__name__} -> "
                                f"{type(data).__name__}, not a file name -> bytes.")

    def read(rel: str) -> bytes:
        if rel not in files:
            raise ArtifactError(f"{root / rel}: missing; {REBUILD}.")
        return bytes(files[rel])

    verified = _verify(read(MANIFEST_FILE), read, files.get(SIGNATURE_FILE), root, expect_build_id, public_key,
                       files.get(BUNDLE_FILE))
    listed, by = _allowed(verified, public_key)
    for rel in sorted(set(files) - listed):
        raise ArtifactError(f"{root / rel}: not {by}; remove it or {REBUILD}.")
    return verified


def read_files(folder: str | os.PathLike[str], expect_build_id: str | None = None,
               public_key: str | os.PathLike[str] | bytes | None = None) -> dict[str, bytes]:
    """A folder's verified files as one mapping (manifest.json and the signature included), ready to be sent
    to workers that check them again with `verify_files` (and the same trust options)."""
    verified = read_folder(folder, expect_build_id, public_key)
    files = {MANIFEST_FILE: verified.manifest_bytes, **verified.files}
    if verified.signature is not None:
        files[SIGNATURE_FILE] = verified.signature
    if verified.bundle is not None:
        files[BUNDLE_FILE] = verified.bundle
    return files


def _verify(raw: bytes, read: Callable[[str], bytes], signature: bytes | None, root: Path,
            expect_build_id: str | None, public_key: str | os.PathLike[str] | bytes | None,
            bundle: bytes | None = None) -> Verified:
    manifest_path = root / MANIFEST_FILE
    # Under a key, model.sig first (or the former manifest.sig, checked below, where the folder holds no
    # model.sig): the manifest is read only once it is the one signed.
    signed = _signed(bundle, raw, root, public_key) if public_key is not None and (
        bundle is not None or signature is None) else None
    try:
        manifest = loads_strict(raw)
        canonical(manifest)  # 1e400 parses to infinity, of which no digest can be taken
    except RepeatedKeyError as exc:
        raise ArtifactError(f"{manifest_path}: key '{exc.key}' is written twice; {REBUILD}.") from None
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply, NaN or Infinity
        raise ArtifactError(f"{manifest_path}: not valid JSON ({str(exc)[:200]}); {REBUILD}.") from None
    try:
        typed = parse_manifest(manifest)
    except FieldError as exc:
        raise ArtifactError(f"{manifest_path}: {exc}; {REBUILD}.") from None
    for domain, version in typed.opsets.items():
        if domain not in OPSETS or version > OPSETS[domain]:
            raise ArtifactError(f"{manifest_path}: field 'opsets' needs {shortened(domain)} {shortened(version)}; "
                                f"this runtime runs {OPSETS}. Rebuild with a matching ensemble-onnx.")
    # Before the binding: a host too old for the build is told to upgrade (an edit that raises the
    # requirement is refused either way; one that lowers it fails the binding below).
    _check_onnxruntime(manifest, manifest_path)
    identity = build_id(manifest)
    if expect_build_id is not None and identity != expect_build_id:
        raise ArtifactError(f"{root}: build {identity}, not the expected build {expect_build_id}; serve the "
                            f"folder of that build, or change the pinned build id.")
    for rel in typed.files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (MANIFEST_FILE, SIGNATURE_FILE, BUNDLE_FILE):
            raise ArtifactError(f"{manifest_path}: file entry {shortened(rel)} points outside the folder or at "
                                f"the manifest.")
        # Read and listed as written: "", ".", "a//b" or "./a" would name no file, or one under another name.
        if "\0" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise ArtifactError(f"{manifest_path}: file entry {shortened(rel)} is not a path inside the folder "
                                f"(names joined by '/', none empty, '.' or '..', no NUL); {REBUILD}.")
    if signed is not None:
        _check_signed_set(signed, set(typed.files), identity, root)
    elif public_key is not None:
        from .signing import SignatureError, verify  # cryptography: only for a service that checks signatures

        try:
            verify(manifest, signature, public_key)
        except SignatureError as exc:
            raise ArtifactError(f"{root}: {exc}") from None
    elif signature is not None or bundle is not None:
        _refuse_stale_signature(signature, raw, identity, root, bundle, BUNDLE_FILE)
    graph_file = typed.ensemble.file
    if graph_file not in typed.files:
        raise ArtifactError(f"{manifest_path}: field 'ensemble.file' names no verified file.")
    # The graph's own record of the manifest first (metadata sits outside the graph field, so it is read
    # without walking the weights): a manifest edited after the build is refused before any file is hashed.
    graph = read(graph_file)
    _check_bound(manifest, graph, root / graph_file, manifest_path)
    files = {graph_file: graph}
    for rel in typed.files:
        files.setdefault(rel, read(rel))
    for rel, digest in typed.files.items():
        actual = hashlib.sha256(files[rel]).hexdigest()
        if signed is not None and actual != signed.files[rel]:
            raise ArtifactError(f"{root / rel}: sha256 does not match {BUNDLE_FILE} (changed after signing).")
        if actual != digest:
            raise ArtifactError(f"{root / rel}: sha256 does not match manifest.json (changed, truncated or "
                                f"swapped); {REBUILD}.")
    _refuse_external_data(graph, root / graph_file)
    return Verified(manifest, typed, files, identity, signature, raw, bundle)


def _signed(bundle: bytes | None, raw: bytes, root: Path, public_key: str | os.PathLike[str] | bytes) -> Signed:
    """What model.sig signs under `public_key`, with manifest.json's bytes (as read) among them; ArtifactError."""
    from .signing import SignatureError, verify_bundle  # cryptography: only for a service that checks signatures

    try:
        signed = verify_bundle(bundle, public_key)
    except SignatureError as exc:
        raise ArtifactError(f"{root}: {exc}") from None
    if MANIFEST_FILE not in signed.files:
        raise ArtifactError(f"{root}: {BUNDLE_FILE} does not sign {MANIFEST_FILE}: not a signed build; {REBUILD} "
                            f"--sign-key.")
    if hashlib.sha256(raw).hexdigest() != signed.files[MANIFEST_FILE]:
        raise ArtifactError(f"{root / MANIFEST_FILE}: sha256 does not match {BUNDLE_FILE} (changed after signing).")
    return signed


def _check_signed_set(signed: Signed, listed: set[str], identity: str, root: Path) -> None:
    """The files model.sig signs must be the manifest's and manifest.json, no more, no fewer; and the build
    it records (when `convert` signed it) this one."""
    for rel in sorted(listed - set(signed.files)):
        raise ArtifactError(f"{root / rel}: listed in {MANIFEST_FILE} but not signed in {BUNDLE_FILE}; {REBUILD} "
                            f"--sign-key.")
    for rel in sorted(set(signed.files) - listed - {MANIFEST_FILE}):
        if rel == SIGNATURE_FILE:  # a folder of the former format signed again without removing the old signature
            raise ArtifactError(f"{root}: {BUNDLE_FILE} signs {SIGNATURE_FILE}, the former signature: remove it and "
                                f"sign the folder again (docs/releasing.md).")
        raise ArtifactError(f"{root}: {BUNDLE_FILE} signs {shortened(rel)}, which {MANIFEST_FILE} does not list (a "
                            f"file the build does not hold); {REBUILD} --sign-key.")
    if signed.build_id is not None and signed.build_id != identity:
        raise ArtifactError(f"{root}: {BUNDLE_FILE} records build {shortened(signed.build_id)}, not this folder's "
                            f"build {identity}; {REBUILD} --sign-key.")


def _refuse_stale_signature(signature: bytes | None, raw: bytes, identity: str, root: Path,
                            bundle: bytes | None = None, bundle_name: str = "model.sig") -> None:
    """Without a key nothing can prove who signed, but a signature that names another build than this folder's
    is stale (the folder was changed or re-bound after signing) and is refused, not ignored: a folder that
    says it is signed must at least say it of this build. Read, not verified: manifest.sig's `build_id`, and
    in an OpenSSF bundle (model.sig) the statement's digest of manifest.json and its build annotation. A
    file this cannot read is left to the check under a key."""
    if signature is not None:
        try:
            record = loads_strict(signature)
        except ValueError:
            record = None
        signed = record.get("build_id") if isinstance(record, dict) else None
        if isinstance(signed, str) and signed != identity:
            raise ArtifactError(f"{root / SIGNATURE_FILE}: signs build {shortened(signed, 80)}, not this folder's "
                                f"build {identity}: the manifest changed after signing. Re-sign the build or "
                                f"remove {SIGNATURE_FILE}.")
    if bundle is not None:
        manifest_digest, build = _bundle_claims(bundle)
        if (manifest_digest is not None and manifest_digest != hashlib.sha256(raw).hexdigest()) or (
                build is not None and build != identity):
            raise ArtifactError(f"{root / bundle_name}: signs another {MANIFEST_FILE} than this folder's (build "
                                f"{identity}): the manifest changed after signing. Re-sign the build or remove "
                                f"{bundle_name}.")


def _bundle_claims(bundle: bytes) -> tuple[str | None, str | None]:
    """(the sha256 an OpenSSF model-signing bundle's statement gives manifest.json, the build id it records),
    read without verifying anything; (None, None) for what cannot be read as one."""
    import base64

    try:
        envelope = loads_strict(bundle)["dsseEnvelope"]
        statement = loads_strict(base64.b64decode(envelope["payload"], validate=True))
        digests = {r["name"]: str(r["digest"]).lower() for r in statement["predicate"]["resources"]}
        annotations = statement["subject"][0].get("annotations") or {}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None, None
    build = annotations.get("ensemble_onnx.build_id") if isinstance(annotations, dict) else None
    return digests.get(MANIFEST_FILE), build if isinstance(build, str) else None


def read_verified(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {relative path: verified bytes}) or ArtifactError."""
    verified = read_folder(folder)
    return verified.manifest, verified.files


def _refuse_external_data(graph: bytes, graph_path: Path) -> None:
    """onnxruntime resolves a tensor's external data itself, from the current directory for a graph loaded
    from bytes: outside the verified folder. Such a graph is refused, whatever file it names."""
    try:
        external = protowire.external_tensors(graph)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{graph_path}: not a readable ONNX model ({exc}); {REBUILD}.") from None
    if external:
        raise ArtifactError(f"{graph_path}: tensor(s) {external[:5]} keep their data in external files, outside "
                            f"the verified bytes; the runtime serves only self-contained graphs. {REBUILD}.")


def graph_metadata(graph: bytes, graph_path: Path) -> dict[str, str]:
    """An ONNX model's metadata_props, read off its bytes (what onnxruntime's custom_metadata_map gives)."""
    try:
        return protowire.metadata(graph)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{graph_path}: not a readable ONNX model ({exc}); {REBUILD}.") from None


def _check_bound(manifest: dict[str, Any], graph: bytes, graph_path: Path, manifest_path: Path) -> None:
    """The manifest (less `files`) must be the one the graph was built for, field by field."""
    meta = graph_metadata(graph, graph_path)
    if META_DIGEST not in meta or META_MANIFEST not in meta:
        raise ArtifactError(f"{graph_path}: carries no build contract ({META_DIGEST}); it was built by an older "
                            f"ensemble-onnx or by hand. {REBUILD}.")
    try:
        built_for = json.loads(meta[META_MANIFEST])
        canonical(built_for)  # NaN and Infinity parse, but no digest can be taken of them
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactError(f"{graph_path}: its build contract is not JSON ({exc}); {REBUILD}.") from None
    if not isinstance(built_for, dict) or manifest_digest(built_for) != meta[META_DIGEST]:
        raise ArtifactError(f"{graph_path}: its build contract does not match its own digest; {REBUILD}.")
    if manifest_digest(manifest) != meta[META_DIGEST]:
        where = first_difference(built_for, bound_part(manifest)) or "(encoding)"
        raise ArtifactError(f"{manifest_path}: field '{shortened(where, 100, quoted=False)}' differs from the build "
                            f"{graph_path.name} was made "
                            f"for (edited after the build, or swapped with another build's); {REBUILD}.")


def _check_onnxruntime(manifest: dict[str, Any], manifest_path: Path) -> None:
    """An int8 build names the first onnxruntime with its kernels; an older one is refused here, by field,
    rather than failing inside InferenceSession."""
    import onnxruntime  # the module, not a distribution name: onnxruntime-gpu and others install the same one

    precision = manifest.get("precision") or {}
    needs = precision.get("min_onnxruntime")
    if not needs:
        return
    try:
        # Major and minor are all a requirement here names ("1.22"); "1.32.0rc1" still compares by them.
        too_old = [int(p) for p in onnxruntime.__version__.split(".")[:2]] < [int(p) for p in str(needs).split(".")[:2]]
    except ValueError:
        raise ArtifactError(f"{manifest_path}: field 'precision.min_onnxruntime' is {shortened(needs)}, not a version; "
                            f"{REBUILD}.") from None
    if too_old:
        raise ArtifactError(f"{manifest_path}: field 'precision' says these "
                            f"{shortened(precision.get('weights'), quoted=False)} weights need onnxruntime>="
                            f"{shortened(needs, quoted=False)}; this host has {onnxruntime.__version__}. Upgrade "
                            f"onnxruntime, or serve a --precision fp32 build.")
