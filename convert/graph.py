"""ensemble.onnx: the whole ensemble as one graph, scored by a single `InferenceSession.run`.

    features (float64 [N, F])
      -> per scaler: (x - mean) / scale in float64, one Cast to float32   (bit-identical to sklearn)
         members on raw features: one Cast to float32
         a member whose framework reads the float64 row in double (its kind's `takes_float64`) gets the
         float64 tensor itself, never cast
      -> each member's own graph (prefixed "NAME/"), then its temperature: softmax(log p / t), if t != 1
      -> member_probabilities [N, M, C]
      -> weighted sum, or the stacker over the concatenated member probabilities
      -> probabilities [N, C], label = argmax, confidence = max
         with a minimum confidence (decision.py states the policy): an action under its minimum becomes the
         fallback class; the fallback under its own minimum becomes the most probable other class
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import (
    AXIS1,
    CALIBRATED,
    CONFIDENCE,
    COOLED,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUTS,
    IR_VERSION,
    LABEL,
    LOG_P,
    MEMBER_FLAT,
    MEMBER_PROBABILITIES,
    MEMBER_SHAPE,
    PROBABILITIES,
    SCALED,
    SCALED64,
    SCALER_DIV,
    SCALER_MEAN,
    SCALER_SCALE,
    SCALER_SUB,
    STACKER,
    TEMPERATURE,
    WEIGHTS,
    decision_nodes,
    policy_values,
    scaler_prefixes,
    scoped,
)

from .decision import Decision
from .errors import ConvertError
from .members import LoadedMember, input_dtype
from .members.export import CONTRACT
from .scaler import Scaler

__all__ = ["ENSEMBLE_INPUT", "ENSEMBLE_OUTPUTS", "IR_VERSION", "build_ensemble_graph", "drop_dead_nodes"]


def _scaling(scaler: Scaler | None, prefix: str) -> tuple[list, list, dict[str, str]]:
    """Nodes and initializers that turn float64 features into this scaler's member inputs: {dtype: tensor},
    the float32 Cast and the float64 Identity (the one no member reads is dropped with the dead nodes)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits, current = [], [], ENSEMBLE_INPUT
    if scaler is not None:
        # The names and ops verify_graph reads the scaler back by (verify, and convert before it writes).
        for op, values, name, result in (("Sub", scaler.mean, SCALER_MEAN, SCALER_SUB),
                                         ("Div", scaler.scale, SCALER_SCALE, SCALER_DIV)):
            if values is not None:
                inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float64), scoped(prefix, name)))
                nodes.append(helper.make_node(op, [current, scoped(prefix, name)], [scoped(prefix, result)],
                                              name=f"{prefix}/{op}"))
                current = scoped(prefix, result)
    out, out64 = scoped(prefix, SCALED), scoped(prefix, SCALED64)
    nodes += [helper.make_node("Cast", [current], [out], to=onnx.TensorProto.FLOAT, name=f"{prefix}/Cast"),
              helper.make_node("Identity", [current], [out64], name=f"{prefix}/Float64")]
    return nodes, inits, {"float32": out, "float64": out64}


def _embed(model: Any, prefix: str, input_from: str) -> tuple[list, list, str]:
    """A sub-model's nodes and initializers, renamed under `prefix/` and fed from `input_from`."""
    import onnx
    from onnx import helper

    renamed = onnx.compose.add_prefix(model, f"{prefix}/")
    identity = helper.make_node("Identity", [input_from], [f"{prefix}/{CONTRACT.input_name}"], name=f"{prefix}/In")
    return [identity, *renamed.graph.node], list(renamed.graph.initializer), f"{prefix}/{CONTRACT.output_name}"


def _graph_input(member: LoadedMember) -> str:
    """The dtype the member's kind declares, held to the one its graph reads (a kind whose export and
    declaration disagree would otherwise be fed the wrong tensor, refused only by onnx's checker)."""
    from onnx import TensorProto

    declared = input_dtype(member)
    (graph_input,) = [i for i in member.onnx_model.graph.input
                      if i.name not in {t.name for t in member.onnx_model.graph.initializer}]
    reads = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}.get(graph_input.type.tensor_type.elem_type)
    if reads != declared:
        raise ConvertError(f"member '{member.source.name}': its kind declares a {declared} input, but its graph "
                           f"reads {reads or 'another type'}; this is a bug in its kind's module.")
    return declared


def _temperature(member_output: str, t: float, prefix: str) -> tuple[list, list, str]:
    from onnx import helper, numpy_helper

    if t == 1.0:
        return [], [], member_output
    # The names and attributes verify_graph.check_combiner reads the temperature back by.
    log_p, cooled, calibrated = scoped(prefix, LOG_P), scoped(prefix, COOLED), scoped(prefix, CALIBRATED)
    init = numpy_helper.from_array(np.array(t, dtype=np.float32), scoped(prefix, TEMPERATURE))
    return [helper.make_node("Log", [member_output], [log_p], name=f"{prefix}/Log"),
            helper.make_node("Div", [log_p, init.name], [cooled], name=f"{prefix}/Cool"),
            helper.make_node("Softmax", [cooled], [calibrated], axis=1, name=f"{prefix}/Calibrated")
            ], [init], calibrated


def _label_and_confidence(decision: Decision, classes: list[str]) -> tuple[list, list]:
    """label and confidence from probabilities: plain argmax / max, or the minimum-confidence policy. The nodes
    and constants are runtime.contract's, which the load compares the graph with."""
    from onnx import helper, numpy_helper

    policy = bool(decision.min_confidence)
    if policy and decision.fallback is None:  # parse_decision refuses this; a Decision built by hand must not slip
        raise ValueError("a minimum confidence needs a fallback class")
    names = {LABEL: "Label"} if policy else {LABEL: "Label", CONFIDENCE: "Confidence"}  # node names, not checked
    nodes = []
    for op, inputs, output, attributes in decision_nodes(policy):
        node = helper.make_node(op, list(inputs), [output], name=names.get(output, output))
        node.attribute.extend(helper.make_attribute(k, list(v) if isinstance(v, tuple) else v)
                              for k, v in sorted(attributes.items()))
        nodes.append(node)
    if not policy or decision.fallback is None:
        return nodes, []
    constants = policy_values(classes, decision.min_confidence, decision.fallback)
    return nodes, [numpy_helper.from_array(np.array(value, dtype=dtype), name)
                   for name, (dtype, value) in constants.items()]


def drop_dead_nodes(graph: Any) -> None:
    """Remove nodes no graph output depends on (converters leave some: a tree's label, a lightgbm Cast).
    onnxruntime would run them on every call; its own pass keeps them."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(live))
    used = {i for node in graph.node for i in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _refuse_repeated_tensors(graph: Any) -> None:
    """A tensor defined twice (a member named like a prefix convert adds, see discover.py) as a named
    ConvertError, not onnx.checker's SSA traceback."""
    defined = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    defined += [o for node in graph.node for o in node.output if o]
    repeated = sorted(n for n, count in Counter(defined).items() if count > 1)
    if repeated:
        raise ConvertError(f"ensemble.onnx would define the tensor(s) {repeated[:5]} more than once: a member's "
                           f"name collides with a prefix convert adds (stacker, raw, scalerK, policy); rename "
                           f"the member in ensemble.json.")


def build_ensemble_graph(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int,
                         classes: list[str], decision: Decision, stacker_model: Any | None = None) -> Any:
    """The fused ensemble. `stacker_model` (an ONNX classifier over [N, M*C]) replaces the weighted sum."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []
    scaled: dict[Path | None, dict[str, str]] = {}
    for member, prefix in zip(members, scaler_prefixes([m.source.scaler for m in members]), strict=True):
        key = member.source.scaler
        if key not in scaled:
            n, i, scaled[key] = _scaling(scalers[key] if key is not None else None, prefix)
            nodes += n
            inits += i

    probs = []
    for member in members:
        name = member.source.name
        n, i, out = _embed(member.onnx_model, name, scaled[member.source.scaler][_graph_input(member)])
        n2, i2, out = _temperature(out, decision.temperature.get(name, 1.0), name)
        nodes += n + n2
        inits += i + i2
        probs.append(out)

    # One Concat feeds everything after the members: the weighted sum is a single MatMul against a block of
    # scaled identities, and member_probabilities is a Reshape of the same tensor (fewer, larger kernels:
    # at one row each node costs more than its arithmetic).
    n_members, n_classes = len(members), len(classes)
    inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), AXIS1),
              numpy_helper.from_array(np.array([-1, n_members, n_classes], dtype=np.int64), MEMBER_SHAPE)]
    nodes += [helper.make_node("Concat", probs, [MEMBER_FLAT], axis=1, name="MemberFlat"),
              helper.make_node("Reshape", [MEMBER_FLAT, MEMBER_SHAPE], [MEMBER_PROBABILITIES],
                               name="MemberProbabilities")]
    if stacker_model is None:
        weights = np.concatenate([m.source.weight * np.eye(n_classes, dtype=np.float32) for m in members])
        inits.append(numpy_helper.from_array(weights.astype(np.float32), WEIGHTS))
        nodes.append(helper.make_node("MatMul", [MEMBER_FLAT, WEIGHTS], [PROBABILITIES], name="Combine"))
    else:
        n, i, out = _embed(stacker_model, STACKER, MEMBER_FLAT)
        nodes += [*n, helper.make_node("Identity", [out], [PROBABILITIES], name="Combine")]
        inits += i
    n, i = _label_and_confidence(decision, classes)
    nodes += n
    inits += i

    batch = CONTRACT.batch_axis
    graph = helper.make_graph(
        nodes, "ensemble",
        [helper.make_tensor_value_info(ENSEMBLE_INPUT, TensorProto.DOUBLE, [batch, n_features])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [batch, n_classes]),
         helper.make_tensor_value_info(LABEL, TensorProto.INT64, [batch]),
         helper.make_tensor_value_info(CONFIDENCE, TensorProto.FLOAT, [batch]),
         helper.make_tensor_value_info(MEMBER_PROBABILITIES, TensorProto.FLOAT, [batch, len(members), n_classes])],
        inits)
    drop_dead_nodes(graph)
    _refuse_repeated_tensors(graph)
    model = helper.make_model(graph, producer_name="ensemble-onnx", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", CONTRACT.opset),
                                             helper.make_opsetid("ai.onnx.ml", CONTRACT.ml_opset)])
    onnx.checker.check_model(model, full_check=True)
    return model
