"""Verified reading of an artifacts folder: the manifest, then every file it lists, each read once and
checked against its sha256 on the very bytes that will be used. Anything missing, changed, extra, linked
or of an unknown schema is an ArtifactError naming the file and saying what to do."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSIONS = (1,)
# The newest this runtime's onnxruntime floor (1.17) runs; com.microsoft holds MatMulNBits, which only an
# int8 build uses (and which needs the onnxruntime its manifest names under precision.min_onnxruntime).
OPSETS = {"ai.onnx": 17, "ai.onnx.ml": 3, "com.microsoft": 1}
REQUIRED = ("schema_version", "feature_names", "classes", "combine", "members", "ensemble", "opsets", "files")
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


def parse_manifest(raw: bytes, manifest_path: Path) -> dict[str, Any]:
    """The manifest's JSON, its required fields, schema version and opsets checked; or ArtifactError."""
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc}); {REBUILD}.") from None
    if not isinstance(manifest, dict) or (missing := [k for k in REQUIRED if k not in manifest]):
        raise ArtifactError(f"{manifest_path}: missing field(s) {missing if isinstance(manifest, dict) else REQUIRED}; {REBUILD}.")
    if manifest["schema_version"] not in SCHEMA_VERSIONS:
        raise ArtifactError(f"{manifest_path}: schema_version {manifest['schema_version']!r} is not one this runtime "
                            f"reads ({SCHEMA_VERSIONS}); upgrade ensemble-onnx or rebuild with this version.")
    for domain, version in manifest["opsets"].items():
        if domain not in OPSETS or not isinstance(version, int) or version > OPSETS[domain]:
            raise ArtifactError(f"{manifest_path}: field 'opsets' needs {domain} {version}; this runtime runs "
                                f"{OPSETS}. Rebuild with a matching ensemble-onnx.")
    for rel in manifest["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{manifest_path}: file entry '{rel}' points outside the folder.")
    return manifest


def verify_files(files: Mapping[str, bytes], where: str | os.PathLike[str] = "<artifacts in memory>"
                 ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The same checks as `read_verified`, on a {relative path: bytes} mapping that includes manifest.json:
    what a worker that received the folder's files over the wire (a Ray actor, a worker process) runs before
    it scores. Every listed file present with its sha256, nothing unlisted. `where` names the source in errors."""
    root = Path(where)
    manifest_path = root / "manifest.json"
    if "manifest.json" not in files:
        raise ArtifactError(f"{manifest_path}: missing; {REBUILD}.")
    manifest = parse_manifest(files["manifest.json"], manifest_path)
    verified: dict[str, bytes] = {}
    for rel, digest in manifest["files"].items():
        if rel not in files:
            raise ArtifactError(f"{root / rel}: missing; {REBUILD}.")
        if hashlib.sha256(files[rel]).hexdigest() != digest:
            raise ArtifactError(f"{root / rel}: sha256 does not match manifest.json (changed, truncated or "
                                f"swapped); {REBUILD}.")
        verified[rel] = files[rel]
    for rel in sorted(set(files) - set(manifest["files"]) - {"manifest.json"}):
        raise ArtifactError(f"{root / rel}: not listed in manifest.json; remove it or {REBUILD}.")
    _check_onnxruntime(manifest, manifest_path)
    if manifest["ensemble"].get("file") not in verified:
        raise ArtifactError(f"{manifest_path}: field 'ensemble.file' names no verified file.")
    return manifest, verified


def read_files(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """manifest.json and every file it lists, as bytes, refusing links, folders and unlisted files; not yet
    hash-checked (`verify_files` does that, here or wherever the bytes are sent)."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifacts folder; {REBUILD}.")
    raw = _read_regular(root / "manifest.json", "manifest.json")
    manifest = parse_manifest(raw, root / "manifest.json")
    files = {"manifest.json": raw}
    for rel in manifest["files"]:
        files[rel] = _read_regular(root / rel, rel)
    listed = set(manifest["files"]) | {"manifest.json"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in listed:
                raise ArtifactError(f"{root / rel}: not listed in manifest.json; remove it or {REBUILD}.")
    return files


def read_verified(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {relative path: verified bytes}) or ArtifactError."""
    return verify_files(read_files(folder), folder)


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
