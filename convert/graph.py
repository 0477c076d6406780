"""ensemble.onnx: the whole ensemble as one graph, scored by a single `InferenceSession.run`.

    features (float64 [N, F])
      -> per scaler: (x - mean) / scale in float64, one Cast to float32   (bit-identical to sklearn)
         members on raw features: one Cast to float32
      -> each member's own graph (prefixed "NAME/"), then its temperature: softmax(log p / t), if t != 1
      -> member_probabilities [N, M, C]
      -> weighted sum, or the stacker over the concatenated member probabilities
      -> probabilities [N, C], label = argmax, confidence = max
         with a minimum confidence (decision.py states the policy): an action under its minimum becomes the
         fallback class; the fallback under its own minimum becomes the most probable other class
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import (
    CONFIDENCE,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUTS,
    IR_VERSION,
    LABEL,
    MEMBER_PROBABILITIES,
    PROBABILITIES,
)

from .decision import Decision
from .members import LoadedMember
from .members.export import CONTRACT
from .scaler import Scaler

__all__ = ["ENSEMBLE_INPUT", "ENSEMBLE_OUTPUTS", "IR_VERSION", "build_ensemble_graph", "drop_dead_nodes"]


def _scaling(scaler: Scaler | None, prefix: str) -> tuple[list, list, str]:
    """Nodes and initializers that turn float64 features into this scaler's float32 member input."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits, current = [], [], ENSEMBLE_INPUT
    if scaler is not None:
        for op, values, name in (("Sub", scaler.mean, "mean"), ("Div", scaler.scale, "scale")):
            if values is not None:
                inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float64), f"{prefix}/{name}"))
                nodes.append(helper.make_node(op, [current, f"{prefix}/{name}"], [f"{prefix}/{op.lower()}"],
                                              name=f"{prefix}/{op}"))
                current = f"{prefix}/{op.lower()}"
    out = f"{prefix}/float32"
    nodes.append(helper.make_node("Cast", [current], [out], to=onnx.TensorProto.FLOAT, name=f"{prefix}/Cast"))
    return nodes, inits, out


def _embed(model: Any, prefix: str, input_from: str) -> tuple[list, list, str]:
    """A sub-model's nodes and initializers, renamed under `prefix/` and fed from `input_from`."""
    import onnx
    from onnx import helper

    renamed = onnx.compose.add_prefix(model, f"{prefix}/")
    identity = helper.make_node("Identity", [input_from], [f"{prefix}/{CONTRACT.input_name}"], name=f"{prefix}/In")
    return [identity, *renamed.graph.node], list(renamed.graph.initializer), f"{prefix}/{CONTRACT.output_name}"


def _temperature(member_output: str, t: float, prefix: str) -> tuple[list, list, str]:
    from onnx import helper, numpy_helper

    if t == 1.0:
        return [], [], member_output
    init = numpy_helper.from_array(np.array(t, dtype=np.float32), f"{prefix}/temperature")
    return [helper.make_node("Log", [member_output], [f"{prefix}/log_p"], name=f"{prefix}/Log"),
            helper.make_node("Div", [f"{prefix}/log_p", init.name], [f"{prefix}/cooled"], name=f"{prefix}/Cool"),
            helper.make_node("Softmax", [f"{prefix}/cooled"], [f"{prefix}/calibrated"], axis=1,
                             name=f"{prefix}/Calibrated")], [init], f"{prefix}/calibrated"


def _label_and_confidence(decision: Decision, classes: list[str]) -> tuple[list, list]:
    """label and confidence from probabilities: plain argmax / max, or the minimum-confidence policy."""
    from onnx import helper, numpy_helper

    if not decision.min_confidence:
        return [helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0, name="Label"),
                helper.make_node("ReduceMax", ["probabilities"], ["confidence"], axes=[1], keepdims=0,
                                 name="Confidence")], []
    if decision.fallback is None:  # parse_decision refuses this; a Decision built by hand must not slip through
        raise ValueError("a minimum confidence needs a fallback class")
    fallback = classes.index(decision.fallback)
    # Probabilities are <= 1: less 2 on the fallback's column, ArgMax finds the most probable other class.
    not_fallback = -2.0 * (np.arange(len(classes)) == fallback).astype(np.float32)
    inits = [numpy_helper.from_array(decision.thresholds(classes), "policy/min_confidence"),
             numpy_helper.from_array(np.array(fallback, dtype=np.int64), "policy/fallback"),
             numpy_helper.from_array(np.array(decision.fallback_minimum(), dtype=np.float32), "policy/fallback_min"),
             numpy_helper.from_array(not_fallback, "policy/not_fallback")]

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> Any:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    def probability_of(label: str, out: str) -> list[Any]:
        return [node("Unsqueeze", [label, "axis1"], f"{out}_2d"),
                node("GatherElements", ["probabilities", f"{out}_2d"], f"{out}_p2d", axis=1),
                node("Squeeze", [f"{out}_p2d", "axis1"], out)]

    nodes = [
        node("ArgMax", ["probabilities"], "policy/top", axis=1, keepdims=0),
        *probability_of("policy/top", "policy/top_p"),
        # 1. the fallback on top but under its own minimum: the most probable other class instead
        node("Add", ["probabilities", "policy/not_fallback"], "policy/others"),
        node("ArgMax", ["policy/others"], "policy/other", axis=1, keepdims=0),
        node("Equal", ["policy/top", "policy/fallback"], "policy/top_is_fallback"),
        node("Less", ["policy/top_p", "policy/fallback_min"], "policy/fallback_unsure"),
        node("And", ["policy/top_is_fallback", "policy/fallback_unsure"], "policy/leave_fallback"),
        node("Where", ["policy/leave_fallback", "policy/other", "policy/top"], "policy/candidate"),
        # 2. an action under its minimum: the fallback
        *probability_of("policy/candidate", "policy/candidate_p"),
        node("Gather", ["policy/min_confidence", "policy/candidate"], "policy/minimum", axis=0),
        node("Less", ["policy/candidate_p", "policy/minimum"], "policy/unsure"),
        helper.make_node("Where", ["policy/unsure", "policy/fallback", "policy/candidate"], ["label"], name="Label"),
        *probability_of("label", "confidence"),
    ]
    return nodes, inits


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


def build_ensemble_graph(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int,
                         classes: list[str], decision: Decision, stacker_model: Any | None = None) -> Any:
    """The fused ensemble. `stacker_model` (an ONNX classifier over [N, M*C]) replaces the weighted sum."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []
    scaled: dict[Path | None, str] = {}
    for member in members:
        key = member.source.scaler
        if key not in scaled:
            prefix = f"scaler{len(scaled)}" if key is not None else "raw"
            n, i, scaled[key] = _scaling(scalers[key] if key is not None else None, prefix)
            nodes += n
            inits += i

    probs = []
    for member in members:
        name = member.source.name
        n, i, out = _embed(member.onnx_model, name, scaled[member.source.scaler])
        n2, i2, out = _temperature(out, decision.temperature.get(name, 1.0), name)
        nodes += n + n2
        inits += i + i2
        probs.append(out)

    # One Concat feeds everything after the members: the weighted sum is a single MatMul against a block of
    # scaled identities, and member_probabilities is a Reshape of the same tensor (fewer, larger kernels:
    # at one row each node costs more than its arithmetic).
    n_members, n_classes = len(members), len(classes)
    inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
              numpy_helper.from_array(np.array([-1, n_members, n_classes], dtype=np.int64), "member_shape")]
    nodes += [helper.make_node("Concat", probs, ["member_flat"], axis=1, name="MemberFlat"),
              helper.make_node("Reshape", ["member_flat", "member_shape"], ["member_probabilities"],
                               name="MemberProbabilities")]
    if stacker_model is None:
        weights = np.concatenate([m.source.weight * np.eye(n_classes, dtype=np.float32) for m in members])
        inits.append(numpy_helper.from_array(weights.astype(np.float32), "weights"))
        nodes.append(helper.make_node("MatMul", ["member_flat", "weights"], ["probabilities"], name="Combine"))
    else:
        n, i, out = _embed(stacker_model, "stacker", "member_flat")
        nodes += [*n, helper.make_node("Identity", [out], ["probabilities"], name="Combine")]
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
    model = helper.make_model(graph, producer_name="ensemble-onnx", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", CONTRACT.opset),
                                             helper.make_opsetid("ai.onnx.ml", CONTRACT.ml_opset)])
    onnx.checker.check_model(model, full_check=True)
    return model
