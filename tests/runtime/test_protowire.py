"""The protobuf wire walker (`runtime/protowire.py`) that reads an ONNX graph's metadata and finds external
data without onnx: every wire type, runs of fields, nesting limits, refusals by byte. Every expected value is
written by hand here: protobuf bytes by a ten-line encoder, checked against what onnx itself reads."""

from __future__ import annotations

import pytest

from runtime import protowire

# -------------------------------------------------------------------------------- the wire walker


def _varint(n: int) -> bytes:
    n %= 1 << 64  # a negative int64 is written as its two's complement: ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def vint(number: int, value: int) -> bytes:
    return _tag(number, 0) + _varint(value)


def fixed64(number: int, value: int) -> bytes:
    return _tag(number, 1) + value.to_bytes(8, "little")


def fixed32(number: int, value: int) -> bytes:
    return _tag(number, 5) + value.to_bytes(4, "little")


def ld(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


RUN = protowire.RUN


@pytest.mark.parametrize(("buf", "want"), [
    (vint(1, 150), [(1, 0, 150)]),
    (vint(1, 2**64 - 1), [(1, 0, 2**64 - 1)]),
    (fixed64(2, 0x0102030405060708), [(2, 1, 0x0102030405060708)]),
    (fixed32(3, 0x01020304), [(3, 5, 0x01020304)]),
    (ld(4, b"abc") + vint(5, 1), [(4, 2, (2, 5)), (5, 0, 1)]),
    (ld(4, b""), [(4, 2, (2, 2))]),
    (vint(16, 1) + vint(16, 2), [(16, 0, 1), (16, 0, 2)]),             # two-byte tags are never a run
    (vint(1, 1) + vint(1, 300) + vint(1, -1) + ld(2, b"x"), [(1, 0, RUN), (2, 2, (18, 19))]),
    (vint(1, 1) + vint(2, 1) + vint(1, 1), [(1, 0, 1), (2, 0, 1), (1, 0, 1)]),
    (fixed32(3, 1) * 3 + vint(1, 5), [(3, 5, RUN), (1, 0, 5)]),
    (fixed32(3, 1) * 2 + fixed32(4, 1) + fixed32(3, 1), [(3, 5, RUN), (4, 5, 1), (3, 5, 1)]),
    (fixed64(2, 7) * 2 + fixed32(3, 1), [(2, 1, RUN), (3, 5, 1)]),
    (fixed32(3, 9) + fixed64(3, 9), [(3, 5, 9), (3, 1, 9)]),           # the same number, another wire type
    (fixed64(2, 5) + vint(1, 1), [(2, 1, 5), (1, 0, 1)]),
    (vint(1, 5) + vint(1, 6) + b"\x88\x08\x07", [(1, 0, RUN), (129, 0, 7)]),  # field 129's tag ends in 0x08
    (vint(1, 1) * 257 + b"\x88\x08\x07", [(1, 0, RUN), (129, 0, 7)]),  # ... and starts the run's second window
    (b"".join(vint(1, i) for i in range(3000)) + vint(2, 7), [(1, 0, RUN), (2, 0, 7)]),
    (vint(1, -1) * 400 + vint(2, 7), [(1, 0, RUN), (2, 0, 7)]),         # ten-byte varints, past the first window
    (fixed32(3, 1) * 700 + vint(2, 7), [(3, 5, RUN), (2, 0, 7)]),
    (fixed64(2, 1) * 300 + vint(2, 7), [(2, 1, RUN), (2, 0, 7)]),
    (vint(1, 3) * 2 + fixed32(1, 9), [(1, 0, RUN), (1, 5, 9)]),
])
def test_fields_reads_every_wire_type_and_reports_a_run_once(buf, want):
    assert list(protowire.fields(buf)) == want


def test_a_run_ends_where_its_message_ends():
    inner = vint(1, 4) * 3
    buf = inner + vint(1, 4) * 3 + vint(2, 9)
    assert list(protowire.fields(buf, 0, len(inner))) == [(1, 0, RUN)]
    assert list(protowire.fields(buf, len(inner))) == [(1, 0, RUN), (2, 0, 9)]
    inner32 = fixed32(3, 4) * 3
    buf32 = inner32 + fixed32(3, 4) * 3
    assert list(protowire.fields(buf32, 0, len(inner32))) == [(3, 5, RUN)]


def test_a_run_stops_at_its_last_full_value_when_the_message_ends_in_the_middle_of_one():
    buf = fixed32(3, 1) * 2 + b"\x1d\x00"
    with pytest.raises(ValueError, match=r"^field 3 runs past its message \(byte 15 of 12\)$"):
        list(protowire.fields(buf))
    with pytest.raises(ValueError, match=r"^truncated or overlong varint$"):
        list(protowire.fields(vint(1, 1) * 2 + b"\x08\x80"))


def test_an_overlong_varint_inside_a_run_is_refused_not_skipped():
    with pytest.raises(ValueError, match=r"^truncated or overlong varint$"):
        list(protowire.fields(vint(1, 1) * 2 + b"\x08" + b"\x80" * 10 + b"\x01" + vint(2, 1)))


@pytest.mark.parametrize(("buf", "message"), [
    (b"\x0a\xff", "truncated or overlong varint"),
    (b"\x08", "truncated or overlong varint"),
    (b"\x08" + b"\x80" * 10 + b"\x01", "truncated or overlong varint"),
    (b"\x0b", "wire type 3 of field 1 at byte 1"),
    (b"\x08\x01\x14", "wire type 4 of field 2 at byte 3"),
    (b"\x0e", "wire type 6 of field 1 at byte 1"),
    (b"\x0f", "wire type 7 of field 1 at byte 1"),
    (b"\x00\x00", "field 0 runs past its message (byte 2 of 2)"),
    (b"\x0a\x05ab", "field 1 runs past its message (byte 7 of 4)"),
    (b"\x11\x01\x02", "field 2 runs past its message (byte 9 of 3)"),
    (b"\x1d\x01", "field 3 runs past its message (byte 5 of 2)"),
])
def test_fields_refuses_what_is_no_protobuf_by_byte(buf, message):
    with pytest.raises(ValueError) as caught:
        list(protowire.fields(buf))
    assert str(caught.value) == message


def test_fields_with_want_yields_only_those_and_skips_runs_of_short_strings():
    buf = ld(7, b"ab") * 300 + ld(7, b"c" * 127) + ld(7, b"d" * 128) + ld(7, b"e") + vint(1, 9) + ld(7, b"f")
    assert list(protowire.fields(buf, want=frozenset({1}))) == [(1, 0, 9)]
    assert [n for n, _, _ in protowire.fields(buf)] == [7] * 303 + [1, 7]
    inner = ld(7, b"ab") * 3
    nested = inner + ld(7, b"ab") * 3 + vint(1, 9)
    assert list(protowire.fields(nested, 0, len(inner), want=frozenset({1}))) == []
    assert list(protowire.fields(nested, len(inner), want=frozenset({1}))) == [(1, 0, 9)]


def test_a_run_of_short_strings_that_is_wanted_is_read_field_by_field():
    buf = ld(7, b"ab") * 3 + ld(8, b"c")
    assert list(protowire.fields(buf, want=frozenset({7}))) == [(7, 2, (2, 4)), (7, 2, (6, 8)), (7, 2, (10, 12))]


def test_a_run_of_two_byte_tags_or_lengths_is_read_field_by_field():
    strings = ld(16, b"ab") * 3 + vint(1, 9)
    assert list(protowire.fields(strings, want=frozenset({1}))) == [(1, 0, 9)]
    assert [n for n, _, _ in protowire.fields(strings, want=frozenset({16}))] == [16] * 3
    long = ld(7, b"a" * 200) * 2 + vint(1, 9)
    assert list(protowire.fields(long, want=frozenset({1}))) == [(1, 0, 9)]
    short_then_long = ld(7, b"ab") + ld(7, b"c" * 200) + vint(1, 9)
    assert list(protowire.fields(short_then_long, want=frozenset({1}))) == [(1, 0, 9)]


# ONNX messages, by field number (onnx.proto3), written out by hand.

def tensor(name: bytes = b"w", location: int | None = None, external_data: bool = False) -> bytes:
    out = ld(1, b"\x02") + ld(8, name) if name else ld(1, b"\x02")
    if external_data:
        out += ld(13, ld(1, b"location") + ld(2, b"w.bin"))
    if location is not None:
        out += vint(14, location)
    return out


def attribute(*fields: bytes) -> bytes:
    return ld(1, b"attr") + b"".join(fields)


def node(*attributes: bytes) -> bytes:
    return ld(1, b"x") + ld(2, b"y") + ld(4, b"Op") + b"".join(ld(5, a) for a in attributes)


def graph(nodes: tuple[bytes, ...] = (), initializers: tuple[bytes, ...] = (), sparse: tuple[bytes, ...] = ()) -> bytes:
    return (b"".join(ld(1, n) for n in nodes) + ld(2, b"g") + b"".join(ld(5, t) for t in initializers)
            + b"".join(ld(15, s) for s in sparse))


def sparse_tensor(values: bytes, indices: bytes) -> bytes:
    return ld(1, values) + ld(2, indices) + vint(3, 2)


def model(g: bytes | None = None, functions: tuple[bytes, ...] = (), metadata: tuple[bytes, ...] = ()) -> bytes:
    out = vint(1, 8) + ld(2, b"test")
    if g is not None:
        out += ld(7, g)
    out += b"".join(ld(14, m) for m in metadata)
    return out + b"".join(ld(25, b"".join(ld(7, n) for n in f)) for f in functions)


def entry(key: bytes | None, value: bytes | None) -> bytes:
    return (ld(1, key) if key is not None else b"") + (ld(2, value) if value is not None else b"")


EXT = tensor(b"ext", location=1)


@pytest.mark.parametrize(("built", "found"), [
    (model(graph(initializers=(tensor(b"plain"),))), []),
    (model(graph(initializers=(tensor(b"plain", location=0),))), []),
    (model(graph(initializers=(tensor(b"plain"), EXT))), ["ext"]),
    (model(graph(initializers=(tensor(b"by_record", external_data=True),))), ["by_record"]),
    (model(graph(initializers=(tensor(b"", location=1),))), ["(unnamed)"]),
    (model(graph(initializers=(tensor(b"w\xff", location=1),))), ["w\ufffd"]),
    (model(graph(initializers=(tensor(b"odd", location=2),))), ["odd"]),
    (model(graph(sparse=(sparse_tensor(tensor(b"v", location=1), tensor(b"i")),))), ["v"]),
    (model(graph(sparse=(sparse_tensor(tensor(b"v"), tensor(b"i", location=1)),))), ["i"]),
    (model(graph(sparse=(vint(1, 0) + ld(2, tensor(b"i", location=1)),))), ["i"]),
    (model(graph((node(attribute(ld(5, EXT))),))), ["ext"]),
    (model(graph((node(attribute(ld(10, tensor(b"a")), ld(10, EXT))),))), ["ext"]),
    (model(graph((node(attribute(ld(22, sparse_tensor(EXT, tensor(b"i"))))),))), ["ext"]),
    (model(graph((node(attribute(ld(23, sparse_tensor(tensor(b"v"), EXT)))),))), ["ext"]),
    (model(graph((node(attribute(ld(6, graph(initializers=(EXT,))))),))), ["ext"]),
    (model(graph((node(attribute(ld(11, graph(sparse=(sparse_tensor(EXT, EXT),))))),))), ["ext", "ext"]),
    (model(graph((node(attribute(vint(5, 1), ld(10, EXT))),))), ["ext"]),          # a varint where a tensor goes
    (model(graph(initializers=(EXT,), sparse=(sparse_tensor(tensor(b"v", location=1), tensor(b"i")),))),
     ["ext", "v"]),
    (model(graph((node(attribute(ld(5, EXT), ld(22, sparse_tensor(tensor(b"v", location=1), tensor(b"i"))),
                             ld(6, graph(initializers=(tensor(b"g", location=1),))), ld(10, EXT))),))),
     ["ext", "v", "g", "ext"]),
    (model(graph((node(attribute(ld(3, EXT), ld(8, EXT))),))), []),                  # strings, not tensors
    (model(graph((node(attribute(fixed32(2, 0), ld(5, EXT))),))), ["ext"]),
    (model(vint(5, 1) + graph(initializers=(EXT,))), ["ext"]),
    (model(graph((node(attribute(ld(5, tensor(b"n1", location=1)))),),
                 initializers=(tensor(b"i1", location=1),))), ["i1", "n1"]),
    (model(graph((node(), node(attribute(ld(1, b"x")), attribute(ld(5, EXT)))),)), ["ext"]),
    (model(functions=((node(attribute(ld(5, EXT))),),)), ["ext"]),
    (model(graph(initializers=(tensor(b"g", location=1),)), functions=((node(attribute(ld(5, EXT))),),)),
     ["g", "ext"]),
    (model(graph(initializers=(tensor(b"a", location=1),))) + ld(7, graph(initializers=(tensor(b"b", location=1),))),
     ["a", "b"]),
    (vint(7, 3) + model(graph(initializers=(EXT,))), ["ext"]),
    (vint(25, 3) + model(functions=((node(attribute(ld(5, EXT))),),)), ["ext"]),
])
def test_external_tensors_are_found_wherever_they_sit(built, found):
    assert protowire.external_tensors(built) == found


def test_a_node_field_given_as_a_varint_hides_nothing():
    g = vint(1, 0) + ld(1, ld(1, b"x") + vint(5, 0) + ld(5, attribute(ld(5, EXT))))
    assert protowire.external_tensors(model(g)) == ["ext"]
    tensor_with_odd_name = vint(8, 3) + vint(14, 1)
    assert protowire.external_tensors(model(graph(initializers=(tensor_with_odd_name,)))) == ["(unnamed)"]


def _nested(depth: int, innermost: bytes = EXT) -> bytes:
    """A graph whose one node's attribute holds a graph, `depth` times, the last holding `innermost`."""
    g = graph(initializers=(innermost,))
    for _ in range(depth):
        g = graph((node(attribute(ld(6, g))),))
    return g


def test_subgraphs_nested_to_the_limit_are_walked_and_one_deeper_refused():
    assert protowire.MAX_GRAPH_DEPTH == 40
    assert protowire.external_tensors(model(_nested(40))) == ["ext"]
    with pytest.raises(ValueError, match=r"^subgraphs nested more than 40 deep$"):
        protowire.external_tensors(model(_nested(41)))


def test_a_function_body_counts_its_subgraphs_from_zero():
    body = (node(attribute(ld(6, _nested(39)))),)  # the attribute's graph is at depth 1, the innermost at 40
    assert protowire.external_tensors(model(functions=(body,))) == ["ext"]
    with pytest.raises(ValueError, match=r"^subgraphs nested more than 40 deep$"):
        protowire.external_tensors(model(functions=((node(attribute(ld(6, _nested(40)))),),)))


@pytest.mark.parametrize(("entries", "want"), [
    ((), {}),
    ((entry(b"k", b"v"), entry(b"x", b"")), {"k": "v", "x": ""}),
    ((entry(b"k", None),), {"k": ""}),
    ((entry(None, b"v"),), {"": "v"}),
    ((entry(b"k", b"1"), entry(b"k", b"2")), {"k": "2"}),
    ((vint(3, 1) + entry(b"k", b"v"),), {"k": "v"}),
    ((entry("é".encode(), "ü".encode()),), {"é": "ü"}),
])
def test_metadata_reads_every_entry_of_the_model(entries, want):
    assert protowire.metadata(model(graph(), metadata=entries)) == want


def test_metadata_reads_only_the_model_s_own_entries():
    nested = graph() + ld(14, entry(b"graph", b"doc"))
    assert protowire.metadata(vint(14, 3) + model(nested, metadata=(entry(b"k", b"v"),))) == {"k": "v"}


def test_metadata_that_is_no_text_is_refused():
    with pytest.raises(UnicodeDecodeError):
        protowire.metadata(model(metadata=(entry(b"k", b"\xff"),)))


def test_the_hand_written_messages_are_what_onnx_reads():
    onnx = pytest.importorskip("onnx")
    parsed = onnx.ModelProto.FromString(model(graph((node(attribute(ld(5, EXT))),), initializers=(EXT,)),
                                              metadata=(entry(b"k", b"v"),)))
    assert parsed.metadata_props[0].key == "k" and parsed.graph.initializer[0].name == "ext"
    assert parsed.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert parsed.graph.node[0].attribute[0].t.name == "ext"

