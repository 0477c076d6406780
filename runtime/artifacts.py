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
from typing import Any, BinaryIO

import numpy as np

from . import protowire
from .contract import (
    AXIS1,
    CALIBRATED,
    COOLED,
    LABEL,
    LOG_P,
    MANIFEST_FILE,
    MEMBER_FLAT,
    MEMBER_INPUT,
    MEMBER_OUTPUT,
    MEMBER_PROBABILITIES,
    MEMBER_SHAPE,
    META_DIGEST,
    META_MANIFEST,
    OPSETS,
    POLICY_FALLBACK,
    PROBABILITIES,
    SIGNATURE_FILE,
    STACKER,
    TEMPERATURE,
    WEIGHTS,
    FieldError,
    Manifest,
    bound_part,
    build_id,
    canonical,
    decision_nodes,
    first_difference,
    float32,
    manifest_digest,
    parse_manifest,
    policy_values,
    scoped,
)
from .errors import EnsembleOnnxError, shortened
from .features import MAX_JSON_BYTES, RepeatedKeyError, env_limit, file_kind, loads_strict, read_capped

REBUILD = "rebuild the folder with `ensemble-onnx convert` (make convert)"


class ArtifactError(EnsembleOnnxError):
    """Artifacts that cannot be trusted or run: missing, corrupt, tampered with, or incompatible."""


# How deep a folder may sit in an artifacts folder: builds nest one (members/). The walk that looks for
# unlisted files stops here, with a message, rather than follow thousands of nested folders.
MAX_FOLDER_DEPTH = 32


def json_limit() -> int:
    """The most bytes manifest.json and manifest.sig may hold: the limit convert reads JSON under."""
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

    def refuse_unlisted(self, listed: set[str]) -> None:
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
                    raise ArtifactError(f"{self.root / entry}: not listed in manifest.json; remove it or {REBUILD}.")

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
    lists, the build id, and manifest.sig's bytes if the folder is signed."""

    manifest: dict[str, Any]
    typed: Manifest
    files: dict[str, bytes]
    build_id: str
    signature: bytes | None
    manifest_bytes: bytes = b""  # as read: what read_files sends on to workers

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
        # Files are read as the checks reach them: an edited manifest is refused before the weights are hashed.
        verified = _verify(raw, opened.read, signature, root, expect_build_id, public_key)
        opened.refuse_unlisted(set(verified.typed.files) | {MANIFEST_FILE, SIGNATURE_FILE})
    return verified


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

    verified = _verify(read(MANIFEST_FILE), read, files.get(SIGNATURE_FILE), root, expect_build_id, public_key)
    for rel in sorted(set(files) - set(verified.typed.files) - {MANIFEST_FILE, SIGNATURE_FILE}):
        raise ArtifactError(f"{root / rel}: not listed in manifest.json; remove it or {REBUILD}.")
    return verified


def read_files(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """A folder's verified files as one mapping (manifest.json and manifest.sig included), ready to be sent
    to workers that check them again with `verify_files`."""
    verified = read_folder(folder)
    files = {MANIFEST_FILE: verified.manifest_bytes, **verified.files}
    if verified.signature is not None:
        files[SIGNATURE_FILE] = verified.signature
    return files


def _verify(raw: bytes, read: Callable[[str], bytes], signature: bytes | None, root: Path,
            expect_build_id: str | None, public_key: str | os.PathLike[str] | bytes | None) -> Verified:
    manifest_path = root / MANIFEST_FILE
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
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (MANIFEST_FILE, SIGNATURE_FILE):
            raise ArtifactError(f"{manifest_path}: file entry {shortened(rel)} points outside the folder or at "
                                f"the manifest.")
        # Read and listed as written: "", ".", "a//b" or "./a" would name no file, or one under another name.
        if "\0" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise ArtifactError(f"{manifest_path}: file entry {shortened(rel)} is not a path inside the folder "
                                f"(names joined by '/', none empty, '.' or '..', no NUL); {REBUILD}.")
    if public_key is not None:
        from .signing import SignatureError, verify  # cryptography: only for a service that checks signatures

        try:
            verify(manifest, signature, public_key)
        except SignatureError as exc:
            raise ArtifactError(f"{root}: {exc}") from None
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
        if hashlib.sha256(files[rel]).hexdigest() != digest:
            raise ArtifactError(f"{root / rel}: sha256 does not match manifest.json (changed, truncated or "
                                f"swapped); {REBUILD}.")
    _refuse_external_data(graph, root / graph_file)
    return Verified(manifest, typed, files, identity, signature, raw)


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


class _Combiner:
    """The graph's combiner read back against the manifest (`check_combiner`); every refusal names the graph."""

    def __init__(self, graph: bytes, graph_path: Path) -> None:
        self.bytes, self.path = graph, graph_path
        try:
            self.g = protowire.main_graph(graph)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.error(f"not a readable ONNX model ({exc})") from None

    def error(self, what: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: {what}; {REBUILD}.")

    def node(self, output: str, op: str, inputs: tuple[str, ...], attributes: Mapping[str, object]) -> None:
        """`output` must come from exactly this node of the default operator set, attributes and all."""
        found = self.g.nodes.get(output)
        try:
            has = None if found is None else protowire.attributes(self.bytes, found)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.error(f"not a readable ONNX model ({exc})") from None
        if found is None or has is None or (found.op, found.domain, found.inputs, has) != (op, "", inputs, attributes):
            got = "nothing" if found is None else _node_text(found.domain, found.op, found.inputs, has or {})
            raise self.error(f"'{output}' is computed by {shortened(got, quoted=False)}, not by "
                             f"{_node_text('', op, inputs, attributes)} as convert writes it")

    def tensor(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """The initializer's values, if it is a `dtype` tensor of `shape` stored as convert stores it."""
        span = self.g.initializers.get(name)
        try:
            found = None if span is None else protowire.tensor(self.bytes, span)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.error(f"not a readable ONNX model ({exc})") from None
        if (found is None or found.values is None or found.values.dtype != np.dtype(dtype).newbyteorder("<")
                or found.dims != shape or found.values.size != int(np.prod(shape))):
            raise self.error(f"'{name}' is not the {dtype} tensor of shape {list(shape)} that convert writes "
                             f"(stored in raw_data)" if span is not None else f"holds no '{name}'")
        return found.values.reshape(shape)

    def owned(self, prefix: str, output: str, entries: Callable[[str], bool], fed: str) -> None:
        """Everything `output` is computed from lies under `prefix/` (an embedded member's or stacker's graph),
        back to its `prefix/input`, an Identity of a tensor `entries` accepts: another member's nodes, or a
        subgraph that could read them, cannot feed it."""
        todo, seen = [output], set()
        while todo:
            name = todo.pop()
            if name in seen or name == "":  # "" is an optional input left out
                continue
            seen.add(name)
            if not name.startswith(f"{prefix}/"):
                raise self.error(f"'{shortened(output, quoted=False)}' is computed from "
                                 f"{shortened(name)}, outside '{prefix}/' (its own graph)")
            node = self.g.nodes.get(name)
            if name == scoped(prefix, MEMBER_INPUT):
                if node is None or node.op != "Identity" or node.domain or len(node.inputs) != 1 \
                        or not entries(node.inputs[0]):
                    raise self.error(f"'{name}' is not {fed}")
                continue
            if node is None:
                if name not in self.g.initializers:
                    raise self.error(f"'{shortened(name, quoted=False)}' is neither computed nor stored in it")
                continue
            # A subgraph reads outer tensors without naming them. ai.onnx.ml has no operator that holds one (and
            # its tree nodes are the slow ones to read), and no function can stand in for one of its operators.
            if node.domain != "ai.onnx.ml" and protowire.has_subgraph(self.bytes, node):
                raise self.error(f"'{shortened(name, quoted=False)}' comes from a {shortened(node.op, quoted=False)} "
                                 f"holding a subgraph, which convert's members do not write")
            todo.extend(node.inputs)


def _node_text(domain: str, op: str, inputs: tuple[str, ...], attributes: Mapping[str, object]) -> str:
    """`Softmax(x) axis=1`, with its operator set unless the default one: `evil.Softmax(x)`."""
    return (f"{domain + '.' if domain else ''}{op}({', '.join(inputs)})"
            + "".join(f" {k}={list(v) if isinstance(v, tuple) else v}" for k, v in attributes.items()))


def _fed(scaled: bool) -> Callable[[str], bool]:
    """What convert/graph.py feeds a member: one scaler's output (`scalerK/float32`), or for a member whose
    manifest `scaler` is null the raw features (`raw/float32`), in float32."""
    def accepts(name: str) -> bool:
        prefix, _, rest = name.partition("/")
        return rest == "float32" and (prefix.startswith("scaler") and prefix[6:].isdigit() if scaled
                                      else prefix == "raw")
    return accepts


def check_combiner(m: Manifest, graph: bytes, graph_path: Path, manifest_path: Path) -> None:
    """The member order, temperatures, weights (for "weighted") and decision policy manifest.json reports must
    be the ones the graph computes with: a manifest re-bound with other values would otherwise load and be
    reported by describe(). The graph from the members' outputs on is compared node by node, operator set,
    inputs and attributes, with the nodes convert/graph.py writes (`runtime.contract` names them), and its
    constants with the manifest's values in float32; each member's output must be computed inside its own
    `NAME/` graph. A graph naming a tensor twice, defining functions of its own or importing operator sets
    other than the manifest's `opsets` is refused: there what the graph computes is not what its names say.
    Read with protowire (no onnx): a few milliseconds for the demo's 9 MB graph. A stacker's coefficients
    have no manifest field to compare: for "stacking" the member weights are not used, and not checked."""
    c = _Combiner(graph, graph_path)
    g = c.g
    if g.functions:
        raise c.error(f"defines {g.functions} function(s) of its own, which convert never writes (a node could "
                      f"call one by an operator's name)")
    imports = {domain or "ai.onnx": version for domain, version in g.opsets.items()}
    if imports != m.opsets:  # the manifest's were checked against OPSETS: the graph runs only those
        other = {domain: version for domain, version in imports.items() if m.opsets.get(domain) != version}
        what = f"the operator set(s) {shortened(other, quoted=False)}" if other else \
            f"none of {sorted(set(m.opsets) - set(imports))}"
        raise c.error(f"imports {what}, but field 'opsets' of {manifest_path.name} names {m.opsets}")
    if g.repeated:
        raise c.error(f"names {shortened(sorted(set(g.repeated)), quoted=False)} more than once (initializers or "
                      f"node outputs): onnxruntime could compute with another than the one this check reads")
    members, k, n_classes = m.ensemble.members, len(m.ensemble.members), len(m.classes)
    flat = g.nodes.get(MEMBER_FLAT)
    if flat is None or flat.op != "Concat" or len(flat.inputs) != k:
        raise c.error(f"{MEMBER_PROBABILITIES} is not the Concat of the {k} members' probabilities that convert "
                      f"writes")
    temperatures = m.decision.temperature if m.decision is not None else {}
    for i, (name, given) in enumerate(zip(members, flat.inputs, strict=True)):
        output, calibrated = scoped(name, MEMBER_OUTPUT), scoped(name, CALIBRATED)
        if given not in (output, calibrated):  # ensemble.members in another order: columns under others' names
            raise ArtifactError(f"{graph_path}: {MEMBER_PROBABILITIES}[{i}] is {shortened(given)}, not member "
                                f"'{name}' (field 'ensemble.members' of {manifest_path.name}); {REBUILD}.")
        in_graph = 1.0
        if given == calibrated:
            log_p, cooled, temperature = scoped(name, LOG_P), scoped(name, COOLED), scoped(name, TEMPERATURE)
            c.node(calibrated, "Softmax", (cooled,), {"axis": 1})
            c.node(cooled, "Div", (log_p, temperature), {})
            c.node(log_p, "Log", (output,), {})
            in_graph = float(c.tensor(temperature, "float32", ())[()])
        scaled = m.members[name].scaler is not None
        source = "a scaler's output ('scalerK/float32')" if scaled else "the raw features in float32 ('raw/float32')"
        c.owned(name, output, _fed(scaled), f"an Identity of {source}, as field 'members.{name}.scaler' of "
                                            f"{manifest_path.name} says ({'a scaler' if scaled else 'null'})")
        t = temperatures.get(name, 1.0)
        if float32(t) != in_graph:  # the graph holds t in float32
            raise ArtifactError(f"{manifest_path}: field 'decision.temperature.{name}' is {t!r}, but the graph "
                                f"divides member '{name}''s log-probabilities by {in_graph!r}; {REBUILD}.")
    c.node(MEMBER_FLAT, "Concat", flat.inputs, {"axis": 1})
    c.node(MEMBER_PROBABILITIES, "Reshape", (MEMBER_FLAT, MEMBER_SHAPE), {})
    if c.tensor(MEMBER_SHAPE, "int64", (3,)).tolist() != [-1, k, n_classes]:
        raise c.error(f"'{MEMBER_SHAPE}' is not [-1, {k}, {n_classes}]: {MEMBER_PROBABILITIES} would not be one "
                      f"row of members by classes")
    _check_combine(c, m, manifest_path)
    _check_decision(c, m, manifest_path)


def _check_combine(c: _Combiner, m: Manifest, manifest_path: Path) -> None:
    members, k, n_classes = m.ensemble.members, len(m.ensemble.members), len(m.classes)
    probabilities = c.g.nodes.get(PROBABILITIES)
    if m.combine.method == "stacking":
        stacked = scoped(STACKER, MEMBER_OUTPUT)
        if probabilities is None or (probabilities.op, probabilities.inputs) != ("Identity", (stacked,)):
            raise c.error(f"its probabilities are not a stacker's, but field 'combine.method' of "
                          f"{manifest_path.name} is 'stacking'")
        c.node(PROBABILITIES, "Identity", (stacked,), {})
        c.owned(STACKER, stacked, lambda name: name == MEMBER_FLAT, f"an Identity of '{MEMBER_FLAT}'")
        return
    if probabilities is None or (probabilities.op, probabilities.inputs) != ("MatMul", (MEMBER_FLAT, WEIGHTS)):
        raise c.error(f"its probabilities are not the MatMul of the members' by a [{k * n_classes}, {n_classes}] "
                      f"float32 '{WEIGHTS}', the 'weighted' combine convert writes")
    c.node(PROBABILITIES, "MatMul", (MEMBER_FLAT, WEIGHTS), {})
    blocks = c.tensor(WEIGHTS, "float32", (k * n_classes, n_classes)).reshape(k, n_classes, n_classes)
    identity = np.eye(n_classes, dtype=np.float32)
    for name, block in zip(members, blocks, strict=True):  # member i's block: its weight times the identity
        weight = m.members[name].weight
        if not np.array_equal(block, np.float32(weight) * identity):
            diagonal = np.array_equal(block, block[0, 0] * identity)
            used = repr(float(block[0, 0])) if diagonal else f"the block {shortened(block.tolist())}"
            raise ArtifactError(f"{manifest_path}: field 'members.{name}.weight' is {weight!r}, but the graph "
                                f"weighs member '{name}' by {used}; {REBUILD}.")


def _check_decision(c: _Combiner, m: Manifest, manifest_path: Path) -> None:
    """label and confidence: argmax and max of probabilities, or the minimum-confidence policy with the
    manifest's minimums and fallback as its constants."""
    decision = m.decision
    policy = decision is not None and bool(decision.min_confidence)
    label = c.g.nodes.get(LABEL)
    if policy != (label is not None and label.op == "Where"):  # the policy's last step; argmax has none
        minimum = shortened(decision.min_confidence if decision is not None else {}, quoted=False)
        raise ArtifactError(f"{manifest_path}: field 'decision.min_confidence' is {minimum}, but the graph's "
                            f"label applies {'no' if policy else 'a'} minimum confidence; {REBUILD}.")
    for op, inputs, output, attributes in decision_nodes(policy):
        c.node(output, op, inputs, attributes)
    if not policy or decision is None:
        return
    if decision.fallback is None:  # parse_manifest refuses this already; a Manifest built in code must not pass
        raise ArtifactError(f"{manifest_path}: field 'decision.fallback' is null, but a minimum confidence needs "
                            f"one; {REBUILD}.")
    if c.tensor(AXIS1, "int64", (1,)).tolist() != [1]:
        raise c.error(f"'{AXIS1}' is not [1]")
    constants = policy_values(m.classes, decision.min_confidence, decision.fallback)
    for name in sorted(constants, key=lambda name: name != POLICY_FALLBACK):  # another fallback: named as that
        dtype, value = constants[name]
        want = np.array(value, dtype=dtype)
        if not np.array_equal(c.tensor(name, dtype, want.shape), want):
            field = "fallback" if name == POLICY_FALLBACK else "min_confidence"
            raise ArtifactError(f"{manifest_path}: field 'decision.{field}' is "
                                f"{shortened(getattr(decision, field), quoted=False)}, but the graph's '{name}' holds "
                                f"{shortened(c.tensor(name, dtype, want.shape).tolist(), quoted=False)}; {REBUILD}.")


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
