"""Attacks on the serving and operating side, as a careless user and as an attacker would try them, each
one a bug that was found and fixed: crafted ONNX bytes, hostile inputs to the Ensemble, and the `score`,
`compare`, `drift` and `evaluate` commands on files with odd schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import protowire
from runtime.artifacts import ArtifactError, _refuse_external_data


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def _ld(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _nested_model(depth: int) -> bytes:
    """A ModelProto whose graph nests `depth` subgraphs (graph.node.attribute.g), a few bytes per level."""
    graph = _ld(5, _ld(8, b"w"))  # one initializer, stored inline
    for _ in range(depth):
        graph = _ld(1, _ld(5, _ld(6, graph)))
    return _ld(7, graph)


def test_deeply_nested_subgraphs_are_refused_not_a_recursion_error():
    # Found: 5,000 nested subgraphs (60 KB) raised RecursionError out of runtime.load instead of ArtifactError.
    model = _nested_model(5000)
    with pytest.raises(ValueError, match="nested"):
        protowire.external_tensors(model)
    with pytest.raises(ArtifactError, match="g.onnx: not a readable ONNX model"):
        _refuse_external_data(model, Path("g.onnx"))
    assert protowire.external_tensors(_nested_model(protowire.MAX_GRAPH_DEPTH)) == []
