"""`verify`'s deep check: the combiner and decision policy ensemble.onnx computes with are the ones
manifest.json reports.

`runtime.load` binds the manifest to the graph (the graph carries the manifest's digest) but does not read
the graph's arithmetic: a manifest re-bound by hand with other weights, temperatures, member order or policy
loads, and `describe()` reports values the graph does not use. This reads the graph's nodes from the
members' outputs on, as convert/graph.py writes them (by the names in `runtime.contract`), off the protobuf
bytes (`runtime.protowire`), and refuses anything shaped otherwise. `verify` runs it on the folder it checks,
`convert` on the graph it is about to write. It proves the manifest describes the combiner; it cannot prove
a member's own graph is the model that was converted: signing, and verify's parity run, defend that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from runtime import protowire
from runtime.artifacts import REBUILD, ArtifactError
from runtime.contract import (
    AXIS1,
    CALIBRATED,
    COOLED,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUTS,
    LABEL,
    LOG_P,
    MEMBER_DTYPES,
    MEMBER_FLAT,
    MEMBER_INPUT,
    MEMBER_OUTPUT,
    MEMBER_PROBABILITIES,
    MEMBER_SHAPE,
    POLICY_FALLBACK,
    PROBABILITIES,
    RAW,
    SCALED,
    SCALED64,
    SCALER_DIV,
    SCALER_MEAN,
    SCALER_SCALE,
    SCALER_SUB,
    STACKER,
    TEMPERATURE,
    WEIGHTS,
    Manifest,
    decision_nodes,
    float32,
    policy_values,
    scaler_prefixes,
    scoped,
)
from runtime.errors import shortened


class _Combiner:
    """The graph's combiner read back against the manifest (`check_combiner`); every refusal names the graph."""

    def __init__(self, graph: bytes, graph_path: Path) -> None:
        self.bytes, self.path = graph, graph_path
        self.g = protowire.main_graph(graph)  # ValueError for bytes that are no ONNX model (check_combiner)

    def error(self, what: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: {what}; {REBUILD}.")

    def node(self, output: str, op: str, inputs: tuple[str, ...], attributes: Mapping[str, object]) -> None:
        """`output` must come from exactly this node of the default operator set, attributes and all."""
        found = self.g.nodes.get(output)
        has = None if found is None else protowire.attributes(self.bytes, found)
        if found is None or has is None or (found.op, found.domain, found.inputs, has) != (op, "", inputs, attributes):
            got = "nothing" if found is None else _node_text(found.domain, found.op, found.inputs, has or {})
            raise self.error(f"'{output}' is computed by {shortened(got, quoted=False)}, not by "
                             f"{_node_text('', op, inputs, attributes)} as convert writes it")

    def tensor(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """The initializer's values, if it is a `dtype` tensor of `shape` stored as convert stores it."""
        span = self.g.initializers.get(name)
        found = None if span is None else protowire.tensor(self.bytes, span)
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


def _check_scaling(c: _Combiner, prefix: str, read: set[str]) -> None:
    """`PREFIX/float32` and `PREFIX/float64` (those in `read`, the ones members read) must be computed from the
    features alone, as convert/graph.py `_scaling` writes them: for `raw`, Cast(to float32) or Identity of
    features; for a scaler, the Cast or Identity of Div(Sub(features, PREFIX/mean), PREFIX/scale) in float64
    (Sub or Div left out for a scaler without a mean or a scale, never both), the constants stored tensors.
    Another member's output, or anything else, cannot feed a member through its scaler. Whether the constants
    are the scaler file's is not read here: signing covers them."""
    current = ENSEMBLE_INPUT
    if prefix != RAW:
        for op, constant, result in (("Sub", SCALER_MEAN, SCALER_SUB), ("Div", SCALER_SCALE, SCALER_DIV)):
            if scoped(prefix, result) in c.g.nodes:  # present when the scaler has the mean or the scale
                c.node(scoped(prefix, result), op, (current, scoped(prefix, constant)), {})
                if scoped(prefix, constant) not in c.g.initializers:
                    raise c.error(f"'{scoped(prefix, constant)}' is not a stored tensor, as convert writes it")
                current = scoped(prefix, result)
        if current == ENSEMBLE_INPUT:  # convert refuses a scaler with neither (a member would read raw features)
            dtype = SCALED if SCALED in read else SCALED64
            raise c.error(f"'{scoped(prefix, dtype)}' {'casts' if dtype == SCALED else 'takes'} the features with "
                          f"neither a Sub nor a Div, but a scaler's output always has one of them as convert writes it")
    if SCALED in read:
        c.node(scoped(prefix, SCALED), "Cast", (current,), {"to": 1})  # 1: TensorProto.FLOAT
    if SCALED64 in read:
        c.node(scoped(prefix, SCALED64), "Identity", (current,), {})


def check_combiner(m: Manifest, graph: bytes, graph_path: Path, manifest_path: Path) -> None:
    """The member order, temperatures, weights (for "weighted") and decision policy manifest.json reports must
    be the ones the graph computes with: a manifest re-bound with other values would otherwise load and be
    reported by describe(). The graph from the members' outputs on is compared node by node, operator set,
    inputs and attributes, with the nodes convert/graph.py writes (`runtime.contract` names them), and its
    constants with the manifest's values in float32; each member's output must be computed inside its own
    `NAME/` graph, from its own scaler's output (`scaler_prefixes`) computed from the features as convert
    scales them (`_check_scaling`). Without a minimum confidence the graph holds no fallback, and
    `decision.fallback` (any class ensemble.json names) changes no label: it is not compared. A graph
    naming a tensor twice, defining functions of its own or importing operator sets other than the
    manifest's `opsets` (or one twice) is refused: there what the graph computes is not what its names say.
    Read with protowire: about 2 ms for the demo's 9 MB graph. A stacker's coefficients
    have no manifest field to compare: for "stacking" the member weights are not used, and not checked.
    Bytes protowire cannot read as an ONNX model (anywhere the check reads) are refused as such."""
    try:
        _check_graph(_Combiner(graph, graph_path), m, graph_path, manifest_path)
    except (ValueError, UnicodeDecodeError) as exc:  # protowire's: a malformed message, a name not UTF-8
        raise ArtifactError(f"{graph_path}: not a readable ONNX model ({exc}); {REBUILD}.") from None


def _check_graph(c: _Combiner, m: Manifest, graph_path: Path, manifest_path: Path) -> None:
    g = c.g
    if g.functions:
        raise c.error(f"defines {g.functions} function(s) of its own, which convert never writes (a node could "
                      f"call one by an operator's name)")
    if g.opsets_twice:  # onnxruntime and this reader could each take another of the two versions
        twice = g.opsets_twice[0]
        aside = ' ("" and "ai.onnx" are one)' if twice == "ai.onnx" else ""
        raise c.error(f"imports the operator set {shortened(twice)} more than once{aside}")
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
    # Each member reads its own scaler's output, numbered as convert numbers them (a member fed another
    # member's scaler, or a scaler computed from anything but the features, would load with other predictions).
    scalers = [m.members[name].scaler for name in members]
    prefixes = scaler_prefixes([None if r is None else (r.file, r.sha256) for r in scalers])
    read: dict[str, set[str]] = {prefix: set() for prefix in prefixes}  # per prefix: float32, float64 or both
    for i, (name, given, prefix) in enumerate(zip(members, flat.inputs, prefixes, strict=True)):
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
        # The member reads its scaler's float32 output, or the float64 one where manifest.json says its graph takes
        # float64 (a graph fed the other would load, and compute otherwise than the build proved).
        dtype = MEMBER_DTYPES.get(m.members[name].input_dtype)
        if dtype is None:
            raise ArtifactError(f"{manifest_path}: field 'members.{name}.input_dtype' is "
                                f"{shortened(m.members[name].input_dtype)}, not one of {sorted(MEMBER_DTYPES)}; "
                                f"{REBUILD}.")
        feed = scoped(prefix, dtype)
        field = (f"field 'members.{name}.scaler' of {manifest_path.name}" if dtype == SCALED else
                 f"fields 'members.{name}.scaler' and 'members.{name}.input_dtype' of {manifest_path.name}")
        c.owned(name, output, feed.__eq__,
                f"an Identity of the raw features in {dtype} ('{feed}'), as {field} says (null)" if prefix == RAW
                else f"an Identity of '{feed}' (its scaler's output, as {field} and the member order say)")
        read[prefix].add(dtype)
        t = temperatures.get(name, 1.0)
        if float32(t) != in_graph:  # the graph holds t in float32
            raise ArtifactError(f"{manifest_path}: field 'decision.temperature.{name}' is {t!r}, but the graph "
                                f"divides member '{name}''s log-probabilities by {in_graph!r}; {REBUILD}.")
    for prefix in dict.fromkeys(prefixes):  # after the members: a member fed otherwise is named as that
        _check_scaling(c, prefix, read[prefix] or {SCALED})  # one no member reads: as convert wrote it before
    c.node(MEMBER_FLAT, "Concat", flat.inputs, {"axis": 1})
    c.node(MEMBER_PROBABILITIES, "Reshape", (MEMBER_FLAT, MEMBER_SHAPE), {})
    if c.tensor(MEMBER_SHAPE, "int64", (3,)).tolist() != [-1, k, n_classes]:
        raise c.error(f"'{MEMBER_SHAPE}' is not [-1, {k}, {n_classes}]: {MEMBER_PROBABILITIES} would not be one "
                      f"row of members by classes")
    _check_combine(c, m, manifest_path)
    _check_decision(c, m, manifest_path)
    _check_nothing_else(c)


def _check_nothing_else(c: _Combiner) -> None:
    """Every node and stored tensor is one some output depends on: convert drops the others
    (`convert.graph.drop_dead_nodes`); a graph carrying them is not what the manifest describes, and costs
    every load (10,000 Identity nodes: 521 ms against the demo's 61 ms). Run last: every node an output
    depends on has been compared by then, so none holds a subgraph that could read a tensor unnamed."""
    needed: set[str] = set()
    live: set[int] = set()
    todo = list(ENSEMBLE_OUTPUTS)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        node = c.g.nodes.get(name)
        if node is not None:
            live.add(id(node))
            todo.extend(node.inputs)
    dead = sorted({out for out, node in c.g.nodes.items() if id(node) not in live})
    if dead:
        raise c.error(f"computes {len(dead)} tensor(s) no output depends on (the first: {shortened(dead[0])}), "
                      f"which convert never writes")
    unused = sorted(set(c.g.initializers) - needed)
    if unused:
        raise c.error(f"stores {len(unused)} tensor(s) no node reads (the first: {shortened(unused[0])}), which "
                      f"convert never writes")


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
