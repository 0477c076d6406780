"""A consistent forgery, for tests: a copy of a build whose manifest (and, optionally, statistics.json) was
edited, then bound into ensemble.onnx again and re-hashed, as a careful attacker or a release engineer would.
The copy loads; what each output means is known without running anything new."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import contract

Edit = Callable[[dict[str, Any]], None]


def rebound(source: Path, folder: Path, edit: Edit, edit_statistics: Edit | None = None) -> Path:
    onnx = pytest.importorskip("onnx")
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    if edit_statistics is not None:
        statistics = json.loads((folder / "statistics.json").read_text())
        edit_statistics(statistics)
        data = json.dumps(statistics).encode()
        (folder / "statistics.json").write_bytes(data)
        manifest["files"]["statistics.json"] = hashlib.sha256(data).hexdigest()
    model = onnx.load_from_string((folder / "ensemble.onnx").read_bytes())
    bound = contract.bound_part(manifest)
    onnx.helper.set_model_props(model, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                        contract.META_DIGEST: contract.manifest_digest(bound)})
    graph = model.SerializeToString()
    (folder / "ensemble.onnx").write_bytes(graph)
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(graph).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def set_path(obj: Any, path: str, value: object) -> None:
    """Set `obj[a][b][c] = value` for the path "a/b/c"; the value KeyError deletes the key instead."""
    *parents, last = path.split("/")
    for key in parents:
        obj = obj[key]
    if value is KeyError:
        del obj[last]
    else:
        obj[last] = value
