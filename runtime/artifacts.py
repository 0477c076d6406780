"""Verified reading of an artifacts folder: the manifest, then every file it lists, each read once and
checked against its sha256 on the very bytes that will be used. Anything missing, changed, extra, linked
or of an unknown schema is an ArtifactError naming the file and saying what to do."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from .features import RepeatedKeyError, loads_unique

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


def read_verified(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {relative path: verified bytes}) or ArtifactError."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifacts folder; {REBUILD}.")
    manifest_path = root / "manifest.json"
    raw = _read_regular(manifest_path, "manifest.json")
    try:
        manifest = loads_unique(raw)
    except RepeatedKeyError as exc:
        raise ArtifactError(f"{manifest_path}: key '{exc.key}' is written twice; {REBUILD}.") from None
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply
        raise ArtifactError(f"{manifest_path}: not valid JSON ({str(exc)[:200]}); {REBUILD}.") from None
    if not isinstance(manifest, dict) or (missing := [k for k in REQUIRED if k not in manifest]):
        raise ArtifactError(f"{manifest_path}: missing field(s) {missing if isinstance(manifest, dict) else REQUIRED}; {REBUILD}.")
    for key in ("files", "opsets", "ensemble", "members"):  # the shapes the checks below walk
        if not isinstance(manifest[key], dict):
            raise ArtifactError(f"{manifest_path}: field '{key}' must be an object; {REBUILD}.")
    if manifest["schema_version"] not in SCHEMA_VERSIONS:
        raise ArtifactError(f"{manifest_path}: schema_version {manifest['schema_version']!r} is not one this runtime "
                            f"reads ({SCHEMA_VERSIONS}); upgrade ensemble-onnx or rebuild with this version.")
    for domain, version in manifest["opsets"].items():
        if domain not in OPSETS or not isinstance(version, int) or version > OPSETS[domain]:
            raise ArtifactError(f"{manifest_path}: field 'opsets' needs {domain} {version}; this runtime runs "
                                f"{OPSETS}. Rebuild with a matching ensemble-onnx.")

    files: dict[str, bytes] = {}
    for rel, digest in manifest["files"].items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{manifest_path}: file entry '{rel}' points outside the folder.")
        data = _read_regular(root / rel, rel)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactError(f"{root / rel}: sha256 does not match manifest.json (changed, truncated or "
                                f"swapped); {REBUILD}.")
        files[rel] = data
    listed = set(manifest["files"]) | {"manifest.json"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in listed:
                raise ArtifactError(f"{root / rel}: not listed in manifest.json; remove it or {REBUILD}.")
    _check_onnxruntime(manifest, manifest_path)
    if manifest["ensemble"].get("file") not in files:
        raise ArtifactError(f"{manifest_path}: field 'ensemble.file' names no verified file.")
    return manifest, files


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
