"""Verified reading of an artifacts folder: the manifest, then every file it lists, each read once and
checked against its sha256 on the very bytes that will be used. Anything missing, changed, extra, linked
or of an unknown schema is an ArtifactError naming the file and saying what to do.

The manifest itself is bound to the graph: ensemble.onnx carries, in its metadata, the manifest (without
`files`) it was built for and that object's digest (`contract.manifest_digest`). A manifest whose fields
differ from it in any value is refused, naming the field; one that differs only in whitespace or key order
parses to the same object and changes nothing. `files` is bound by the sha256 of each file it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protowire
from .contract import (
    MANIFEST_FILE,
    META_DIGEST,
    META_MANIFEST,
    OPSETS,
    SIGNATURE_FILE,
    FieldError,
    Manifest,
    bound_part,
    build_id,
    first_difference,
    manifest_digest,
    parse_manifest,
)

REBUILD = "rebuild the folder with `ensemble-onnx convert` (make convert)"


class ArtifactError(Exception):
    """Artifacts that cannot be trusted or run: missing, corrupt, tampered with, or incompatible."""


def _read_regular(path: Path, rel: str) -> bytes:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {REBUILD}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: '{rel}' is not a regular file (a link or a folder); {REBUILD}.")
    return path.read_bytes()


@dataclass(frozen=True)
class Verified:
    """An artifacts folder whose every byte was checked: the manifest as read and as typed, the files it
    lists, the build id, and manifest.sig's bytes if the folder is signed."""

    manifest: dict[str, Any]
    typed: Manifest
    files: dict[str, bytes]
    build_id: str
    signature: bytes | None

    @property
    def manifest_digest(self) -> str:
        return manifest_digest(self.manifest)


def read_folder(folder: str | os.PathLike[str], expect_build_id: str | None = None,
                public_key: str | os.PathLike[str] | bytes | None = None) -> Verified:
    """Every file of the folder verified and bound to ensemble.onnx, or ArtifactError naming what is wrong.
    With `expect_build_id`, only that build; with `public_key`, only a folder that key signed."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifacts folder; {REBUILD}.")
    manifest_path = root / MANIFEST_FILE
    raw = _read_regular(manifest_path, MANIFEST_FILE)
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc}); {REBUILD}.") from None
    except RecursionError:
        raise ArtifactError(f"{manifest_path}: nested too deeply to be a manifest; {REBUILD}.") from None
    try:
        typed = parse_manifest(manifest)
    except FieldError as exc:
        raise ArtifactError(f"{manifest_path}: {exc}; {REBUILD}.") from None
    for domain, version in typed.opsets.items():
        if domain not in OPSETS or version > OPSETS[domain]:
            raise ArtifactError(f"{manifest_path}: field 'opsets' needs {domain} {version}; this runtime runs "
                                f"{OPSETS}. Rebuild with a matching ensemble-onnx.")
    # Before the binding: a host too old for the build is told to upgrade (an edit that raises the
    # requirement is refused either way; one that lowers it fails the binding below).
    _check_onnxruntime(manifest, manifest_path)
    identity = build_id(manifest)
    if expect_build_id is not None and identity != expect_build_id:
        raise ArtifactError(f"{root}: build {identity}, not the expected build {expect_build_id}; serve the "
                            f"folder of that build, or change the pinned build id.")
    for rel in typed.files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (MANIFEST_FILE, SIGNATURE_FILE):
            raise ArtifactError(f"{manifest_path}: file entry '{rel}' points outside the folder or at the manifest.")
    signature_path = root / SIGNATURE_FILE
    signature = _read_regular(signature_path, SIGNATURE_FILE) if os.path.lexists(signature_path) else None
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
    graph = _read_regular(root / graph_file, graph_file)
    _check_bound(manifest, graph, root / graph_file, manifest_path)
    if hashlib.sha256(graph).hexdigest() != typed.files[graph_file]:
        raise ArtifactError(f"{root / graph_file}: sha256 does not match manifest.json (changed, truncated or "
                            f"swapped); {REBUILD}.")
    _refuse_external_data(graph, root / graph_file)
    files = {graph_file: graph}
    for rel, digest in typed.files.items():
        if rel not in files:
            files[rel] = _read_listed(root, rel, digest)
    listed = set(typed.files) | {MANIFEST_FILE, SIGNATURE_FILE}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in listed:
                raise ArtifactError(f"{root / rel}: not listed in manifest.json; remove it or {REBUILD}.")
    return Verified(manifest, typed, files, identity, signature)


def read_verified(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {relative path: verified bytes}) or ArtifactError."""
    verified = read_folder(folder)
    return verified.manifest, verified.files


def _read_listed(root: Path, rel: str, digest: str) -> bytes:
    data = _read_regular(root / rel, rel)
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactError(f"{root / rel}: sha256 does not match manifest.json (changed, truncated or "
                            f"swapped); {REBUILD}.")
    return data


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
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{graph_path}: its build contract is not JSON ({exc}); {REBUILD}.") from None
    if not isinstance(built_for, dict) or manifest_digest(built_for) != meta[META_DIGEST]:
        raise ArtifactError(f"{graph_path}: its build contract does not match its own digest; {REBUILD}.")
    if manifest_digest(manifest) != meta[META_DIGEST]:
        where = first_difference(built_for, bound_part(manifest)) or "(encoding)"
        raise ArtifactError(f"{manifest_path}: field '{where}' differs from the build {graph_path.name} was made "
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
        raise ArtifactError(f"{manifest_path}: field 'precision.min_onnxruntime' is {needs!r}, not a version; "
                            f"{REBUILD}.") from None
    if too_old:
        raise ArtifactError(f"{manifest_path}: field 'precision' says these {precision.get('weights')} weights "
                            f"need onnxruntime>={needs}; this host has {onnxruntime.__version__}. Upgrade "
                            f"onnxruntime, or serve a --precision fp32 build.")
