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

import numpy as np
import pytest

from runtime import contract

Edit = Callable[[dict[str, Any]], None]

# How the runtime's load refusals end.
REBUILD = "rebuild the folder with `ensemble-onnx convert` (make convert)"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """manifest.json replaced by `manifest`, bound to nothing: refused unless the edit is one the binding allows."""
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def rebound(source: Path, folder: Path, edit: Edit, edit_statistics: Edit | None = None,
            edit_graph: Callable[[Any], None] | None = None) -> Path:
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
    if edit_graph is not None:
        edit_graph(model)
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


def reorder_features(manifest: dict[str, Any], order: list[int]) -> None:
    """`feature_names` in `order` (positions in the old list), the `domain` with them: a build's proven range and
    its missing-value rule belong to a feature by name, as a real build of that feature order holds them (a
    forgery that moved the names alone would give each moved feature another's range)."""
    manifest["feature_names"] = [manifest["feature_names"][i] for i in order]
    domain = manifest["domain"]
    for field in ("lo", "hi", "nan"):
        domain[field] = [domain[field][i] for i in order]


def reorder_members(model: Any, order: list[str], renames: dict[str, str]) -> None:
    """`edit_graph` for a manifest whose `ensemble.members` is `order` and whose members `renames` renamed (old
    name -> new): the graph's member_flat, and so member_probabilities and the blocks of the weighted sum, in
    that order and under those names, as convert would have built them (the load checks all three)."""
    from onnx import numpy_helper

    graph = model.graph
    at = next(i for i, node in enumerate(graph.node) if node.output[0] == "member_flat")
    concat = graph.node[at]
    built = [name.removesuffix("/probabilities") for name in concat.input]  # no temperatures in these builds
    old_name = {new: old for old, new in renames.items()}

    def renamed(name: str) -> str:  # convert names a member's every tensor under "NAME/": the load checks that too
        prefix, _, rest = name.partition("/")
        return f"{renames[prefix]}/{rest}" if rest and prefix in renames else name

    for node in graph.node:
        for names in (node.input, node.output):
            names[:] = [renamed(name) for name in names]
    for tensor in graph.initializer:
        tensor.name = renamed(tensor.name)
    del concat.input[:]
    concat.input.extend(f"{name}/probabilities" for name in order)
    weights = next(tensor for tensor in graph.initializer if tensor.name == "weights")
    n_classes = numpy_helper.to_array(weights).shape[1]
    blocks = numpy_helper.to_array(weights).reshape(len(built), n_classes, n_classes)
    weights.CopyFrom(numpy_helper.from_array(
        np.concatenate([blocks[built.index(old_name.get(name, name))] for name in order]), "weights"))
