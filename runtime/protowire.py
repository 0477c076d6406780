"""Just enough of the protobuf wire format to read an ONNX model's metadata and find external data, without
importing onnx (the runtime must stay light) and before onnxruntime sees the bytes.

Why: onnxruntime resolves a tensor stored as external data (`data_location = EXTERNAL`, a `location` path)
itself, relative to the process's current directory when a model is loaded from bytes: those weights would
come from outside the verified folder. The runtime refuses any such tensor, wherever it sits (graph
initializers, sparse initializers, tensor attributes, subgraphs of If/Loop/Scan, function bodies).

It also reads the main graph's nodes, initializers, operator sets and functions (`main_graph`, `attributes`,
`tensor`): for verify's check that the combiner is the one the manifest reports (convert/verify_graph.py),
and the host benchmark's count of a graph's weights (runtime.bench.floors), where onnx is not installed.

Field numbers are onnx.proto3's; a malformed message raises ValueError.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# ModelProto
_MODEL_GRAPH, _MODEL_METADATA, _MODEL_FUNCTIONS = 7, 14, 25
# GraphProto
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
# NodeProto / FunctionProto
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _FUNCTION_NODE = 1, 2, 4, 5, 7
# AttributeProto
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_ATTR_WANT = frozenset((_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES))
# SparseTensorProto
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
# TensorProto
_TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 2, 8, 9, 13, 14
_FLOAT = 1  # TensorProto.FLOAT
_DEFAULT = 0  # data_location: anything else (EXTERNAL = 1, or a repeated field) is refused
# StringStringEntryProto
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
# Subgraphs nested deeper than this are refused: protobuf's own parser stops at 100 message levels (each
# subgraph is graph -> node -> attribute -> graph, 3 levels), and a crafted model must not exhaust the stack.
MAX_GRAPH_DEPTH = 40


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


RUN = -1  # the value reported for a field repeated back to back: which value counts is not decided here


def _run_end(buf: bytes, pos: int, end: int, tag: int, width: int) -> int:
    """Where a run of scalar fields with the one-byte `tag` that starts at `pos` ends. `width` is the value's
    size in bytes, 0 for a varint. onnx.proto is proto2, so a tree's `nodes_*` attributes are tens of
    thousands of unpacked values, each with its tag: numpy checks them in growing windows, not one by one."""
    window = 512
    while pos < end:
        stop = min(end, pos + window)
        a = np.frombuffer(buf, np.uint8, stop - pos, pos)
        if width:
            step = width + 1
            same = a[: len(a) // step * step: step] == tag
            count, complete = (int(np.argmin(same)) if not same.all() else len(same)), len(same)
            pos += count * step
        else:
            low = np.flatnonzero(a < 0x80)  # every tag byte and every varint's last byte
            ends = low[1::2]
            tags = low[0::2][: len(ends)]
            ok = (a[tags] == tag) & (ends - tags <= 10)
            # Each tag right after the value before it, the first at `pos`: a later window can start on the
            # first byte of a two-byte tag, whose second byte may equal `tag`.
            ok &= tags == np.concatenate(([0], ends[:-1] + 1))
            count, complete = (int(np.argmin(ok)) if not ok.all() else len(ok)), len(ok)
            if count:
                pos += int(ends[count - 1]) + 1
        if count < complete or count == 0 or stop == end:
            return pos
        window *= 4
    return pos


@functools.cache
def _short_strings(tag: int) -> re.Pattern[bytes]:
    """A run of length-delimited fields with this one-byte tag, each under 128 bytes (a tree's `nodes_modes`
    holds one string per node), matched at C speed: one alternative per length byte."""
    lengths = b"|".join(re.escape(bytes([n])) + b".{%d}" % n for n in range(128))
    return re.compile(b"(?:" + re.escape(bytes([tag])) + b"(?:" + lengths + b"))+", re.DOTALL)


def fields(buf: bytes, start: int = 0, end: int | None = None,
           want: frozenset[int] | None = None) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """(field number, wire type, value): an int for varints and fixed values, (start, end) for
    length-delimited ones (sub-messages, strings, packed arrays), which are skipped, not copied.
    With `want`, only those fields are yielded, and runs of other short strings are skipped in one loop
    (a tree's `nodes_modes` holds one string per node)."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        number, wire, one_byte_tag = key >> 3, key & 7, pos - start == 1
        value: int | tuple[int, int]
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
            if want is not None and number not in want and pos - start == length + 2 and pos < end \
                    and buf[pos] == buf[start]:  # a run of short strings, one-byte tag and length each
                run = _short_strings(buf[start]).match(buf, pos, end)
                pos = run.end() if run else pos
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:  # groups (3, 4) are not in onnx.proto
            raise ValueError(f"wire type {wire} of field {number} at byte {pos}")
        if wire in (0, 1, 5) and one_byte_tag and pos < end and buf[pos] == buf[start]:  # the same tag again
            pos, value = _run_end(buf, pos, end, buf[start], {0: 0, 1: 8, 5: 4}[wire]), RUN
        if pos > end or number == 0:
            raise ValueError(f"field {number} runs past its message (byte {pos} of {end})")
        if want is None or number in want:
            yield number, wire, value


def _messages(buf: bytes, span: tuple[int, int], wanted: int) -> Iterator[tuple[int, int]]:
    for number, _, value in fields(buf, *span, want=frozenset((wanted,))):
        if number == wanted and isinstance(value, tuple):
            yield value


def metadata(model: bytes) -> dict[str, str]:
    """ModelProto.metadata_props as a dict (as onnxruntime's custom_metadata_map gives it)."""
    out: dict[str, str] = {}
    for span in _messages(model, (0, len(model)), _MODEL_METADATA):
        entry = {n: model[v[0]:v[1]].decode() for n, w, v in fields(model, *span) if w == 2 and isinstance(v, tuple)}
        out[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    return out


def _tensor_external(buf: bytes, span: tuple[int, int]) -> str | None:
    """The tensor's name if it keeps its data outside the model, else None."""
    name, external = "", False
    for number, _, value in fields(buf, *span):
        if number == _TENSOR_NAME and isinstance(value, tuple):
            name = buf[value[0]:value[1]].decode(errors="replace")
        elif (number == _TENSOR_DATA_LOCATION and value != _DEFAULT) or number == _TENSOR_EXTERNAL_DATA:
            external = True
    return (name or "(unnamed)") if external else None


def _sparse_external(buf: bytes, span: tuple[int, int]) -> list[str]:
    found = [_tensor_external(buf, value) for number, _, value in fields(buf, *span)
             if number in (_SPARSE_VALUES, _SPARSE_INDICES) and isinstance(value, tuple)]
    return [name for name in found if name]


def _nodes_external(buf: bytes, span: tuple[int, int], node_field: int, depth: int = 0) -> list[str]:
    if depth > MAX_GRAPH_DEPTH:
        raise ValueError(f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep")
    found: list[str] = []
    for node in _messages(buf, span, node_field):
        for attr in _messages(buf, node, _NODE_ATTRIBUTE):
            for number, _, value in fields(buf, *attr, want=_ATTR_WANT):
                if not isinstance(value, tuple):  # a length-delimited field: the only kind that holds messages
                    continue
                if number in (_ATTR_T, _ATTR_TENSORS) and (name := _tensor_external(buf, value)):
                    found.append(name)
                elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                    found += _sparse_external(buf, value)
                elif number in (_ATTR_G, _ATTR_GRAPHS):
                    found += _graph_external(buf, value, depth + 1)
    return found


def _graph_external(buf: bytes, span: tuple[int, int], depth: int = 0) -> list[str]:
    found: list[str] = []
    for number, _, value in fields(buf, *span):
        if not isinstance(value, tuple):
            continue
        if number == _GRAPH_INITIALIZER and (name := _tensor_external(buf, value)):
            found.append(name)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            found += _sparse_external(buf, value)
    return found + _nodes_external(buf, span, _GRAPH_NODE, depth)


def external_tensors(model: bytes) -> list[str]:
    """Names of every tensor in the model that stores its data in an external file."""
    whole = (0, len(model))
    found: list[str] = []
    for graph in _messages(model, whole, _MODEL_GRAPH):
        found += _graph_external(model, graph)
    for function in _messages(model, whole, _MODEL_FUNCTIONS):
        found += _nodes_external(model, function, _FUNCTION_NODE)
    return found


def _text(buf: bytes, span: tuple[int, int]) -> str:
    return buf[span[0]:span[1]].decode()


def _plain(buf: bytes, span: tuple[int, int]) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """Every field of a small message one by one, a repeated scalar as many values (`fields` reports a run of
    them as RUN): for the few tensors and attributes the graph check reads."""
    pos, end = span
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int]
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"wire type {wire} of field {number} at byte {pos}")
        if pos > end or number == 0:
            raise ValueError(f"field {number} runs past its message (byte {pos} of {end})")
        yield number, wire, value


def _signed(value: int) -> int:
    """An int64 read as a varint (negative numbers are 10 bytes of two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# ModelProto, OpsetIdProto
_MODEL_OPSET_IMPORT, _OPSET_DOMAIN, _OPSET_VERSION = 8, 1, 2
_NODE_DOMAIN = 7
# AttributeProto: name, f, i, ints (the kinds of value convert writes on the nodes the check reads)
_ATTR_NAME, _ATTR_F, _ATTR_I, _ATTR_INTS = 1, 2, 3, 8
# TensorProto: dims, the one field numpy_helper.from_array writes besides data_type, name and raw_data
_TENSOR_DIMS = 1
_INT64 = 7  # TensorProto.INT64
OTHER = "..."  # an attribute value that is not one int, one float or a list of ints (or is given twice)


@dataclass(frozen=True)
class Node:
    op: str
    domain: str  # "" is the default operator set (ai.onnx)
    inputs: tuple[str, ...]
    attributes: tuple[tuple[int, int], ...]  # spans of its AttributeProtos, read by `attributes` when needed


@dataclass(frozen=True)
class Tensor:
    data_type: int
    dims: tuple[int, ...]
    values: np.ndarray | None  # raw_data as float32 or int64, None if stored any other way


@dataclass(frozen=True)
class MainGraph:
    nodes: dict[str, Node]                   # by each of its outputs
    initializers: dict[str, tuple[int, int]]  # name -> span of the TensorProto, read by `tensor` when needed
    repeated: list[str]                      # names given twice: initializers, sparse ones, node outputs
    opsets: dict[str, int]                   # ModelProto.opset_import, domain -> version (the last import)
    opsets_twice: list[str]                  # domains imported more than once ("" counted as "ai.onnx")
    functions: int                           # how many model-local functions the model defines


def main_graph(model: bytes) -> MainGraph:
    """The main graph's nodes by each of their outputs and its initializers by name, as spans (subgraphs
    and the tensors' bytes are skipped, not read: a few milliseconds for a graph of MBs), with the names it
    gives twice, the model's operator sets and how many functions it defines. A name given twice is where
    onnxruntime and a reader of the bytes could each take another one."""
    nodes: dict[str, Node] = {}
    initializers: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    repeated: list[str] = []
    opsets: dict[str, int] = {}
    opsets_twice: list[str] = []
    functions = 0

    def name_once(name: str) -> None:
        if name == "":  # an optional output left out
            return
        if name in seen:
            repeated.append(name)
        seen.add(name)

    node_fields = frozenset((_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN))
    for number, _, span in fields(model, 0, len(model),
                                  want=frozenset((_MODEL_GRAPH, _MODEL_OPSET_IMPORT, _MODEL_FUNCTIONS))):
        if not isinstance(span, tuple):
            continue
        if number == _MODEL_FUNCTIONS:
            functions += 1
        elif number == _MODEL_OPSET_IMPORT:
            entry = dict((n, v) for n, _, v in _plain(model, span))
            where, version = entry.get(_OPSET_DOMAIN), entry.get(_OPSET_VERSION, 0)
            domain = _text(model, where) if isinstance(where, tuple) else ""
            # onnx names the default domain both ways; a dict would keep only the last of two imports of one
            if any((known or "ai.onnx") == (domain or "ai.onnx") for known in opsets):
                opsets_twice.append(domain or "ai.onnx")
            opsets[domain] = _signed(version) if isinstance(version, int) else -1
            continue
        if number != _MODEL_GRAPH:
            continue
        for part, _, value in fields(model, *span, want=frozenset((_GRAPH_NODE, _GRAPH_INITIALIZER,
                                                                    _GRAPH_SPARSE_INITIALIZER))):
            if not isinstance(value, tuple):
                continue
            if part == _GRAPH_NODE:
                op, domain = "", ""
                inputs: list[str] = []
                outputs: list[str] = []
                attributes: list[tuple[int, int]] = []
                for n, _, v in fields(model, *value, want=node_fields):
                    if not isinstance(v, tuple):
                        continue
                    if n == _NODE_INPUT:
                        inputs.append(_text(model, v))
                    elif n == _NODE_OUTPUT:
                        outputs.append(_text(model, v))
                    elif n == _NODE_ATTRIBUTE:
                        attributes.append(v)
                    elif n == _NODE_OP_TYPE:
                        op = _text(model, v)
                    else:
                        domain = _text(model, v)
                node = Node(op, domain, tuple(inputs), tuple(attributes))
                for out in outputs:
                    name_once(out)
                    nodes[out] = node
            elif part == _GRAPH_INITIALIZER:
                name = next((v for n, _, v in fields(model, *value, want=frozenset((_TENSOR_NAME,)))
                             if isinstance(v, tuple)), None)
                text = _text(model, name) if name is not None else ""
                name_once(text)
                initializers[text] = value
            else:  # a sparse initializer is named by its values tensor
                for values in _messages(model, value, _SPARSE_VALUES):
                    name = next((v for n, _, v in fields(model, *values, want=frozenset((_TENSOR_NAME,)))
                                 if isinstance(v, tuple)), None)
                    name_once(_text(model, name) if name is not None else "")
    return MainGraph(nodes, initializers, repeated, opsets, opsets_twice, functions)


def attributes(model: bytes, node: Node) -> dict[str, object]:
    """A node's attributes by name: an int, a float, a tuple of ints, or OTHER for any other kind of value
    (or an attribute named twice). Enough to compare with the attributes convert writes."""
    out: dict[str, object] = {}
    for span in node.attributes:
        name, other = "", False
        value: object = None
        ints: list[int] = []
        for number, wire, v in _plain(model, span):
            if number == _ATTR_NAME and isinstance(v, tuple):
                name = _text(model, v)
            elif number == _ATTR_I and wire == 0 and isinstance(v, int):
                value = _signed(v)
            elif number == _ATTR_F and wire == 5 and isinstance(v, int):
                value = float(np.frombuffer(v.to_bytes(4, "little"), "<f4")[0])
            elif number == _ATTR_INTS and (wire == 0 or isinstance(v, tuple)):  # a varint, or packed ones
                ints += _repeated_ints(model, v)
            elif number != 20:  # AttributeProto.type: says which of the fields above holds the value
                other = True
        if ints:
            other = other or value is not None
            value = tuple(ints)
        out[name] = OTHER if other or value is None or name in out else value
    return out


def _repeated_ints(model: bytes, v: int | tuple[int, int]) -> list[int]:
    """One element of a repeated int64 field: a single varint, or a packed span of them."""
    if isinstance(v, int):
        return [_signed(v)]
    out, pos = [], v[0]
    while pos < v[1]:
        item, pos = _varint(model, pos)
        out.append(_signed(item))
    return out


def has_subgraph(model: bytes, node: Node) -> bool:
    """Whether one of the node's attributes holds a graph (If, Loop, Scan): a subgraph reads outer tensors
    without listing them as inputs."""
    wanted = frozenset((_ATTR_G, _ATTR_GRAPHS))
    return any(True for span in node.attributes for _ in fields(model, *span, want=wanted))


def tensor(model: bytes, span: tuple[int, int]) -> Tensor:
    """An initializer's type, shape and values, the values only when it holds them as numpy_helper writes
    them (raw_data, float32 or int64, nothing else set): None for any other encoding."""
    data_type, dims, raw, other = 0, [], None, False
    for number, wire, v in _plain(model, span):
        if number == _TENSOR_DATA_TYPE and isinstance(v, int):
            data_type = v
        elif number == _TENSOR_DIMS and (wire == 0 or isinstance(v, tuple)):  # a varint, or packed ones
            dims += _repeated_ints(model, v)
        elif number == _TENSOR_RAW_DATA and isinstance(v, tuple):
            raw = v
        elif number != _TENSOR_NAME:  # float_data, int64_data, external data, segments, ...
            other = True
    dtype = {_FLOAT: "<f4", _INT64: "<i8"}.get(data_type)
    values = None
    if raw is not None and dtype is not None and not other and (raw[1] - raw[0]) % np.dtype(dtype).itemsize == 0:
        values = np.frombuffer(model[raw[0]:raw[1]], dtype=dtype)
    return Tensor(data_type, tuple(dims), values)
