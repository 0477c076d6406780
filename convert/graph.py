"""ensemble.onnx: the whole ensemble as one graph, scored by a single `InferenceSession.run`.

    features (float64 [N, F])
      -> per scaler: (x - mean) / scale in float64, one Cast to float32   (bit-identical to sklearn)
         members on raw features: one Cast to float32
      -> each member's own graph (prefixed "NAME/")
      -> member_probabilities [N, M, C]
      -> weighted sum, or the stacker over the concatenated member probabilities
      -> probabilities [N, C], label = argmax, confidence = max
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .members import CONTRACT, LoadedMember
from .scaler import Scaler

ENSEMBLE_INPUT = "features"
ENSEMBLE_OUTPUTS = ("probabilities", "label", "confidence", "member_probabilities")
IR_VERSION = 8  # the newest IR every onnxruntime >= 1.17 reads; opset 17 needs 8


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


def build_ensemble_graph(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int,
                         n_classes: int, stacker_model: Any | None = None) -> Any:
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
        n, i, out = _embed(member.onnx_model, member.source.name, scaled[member.source.scaler])
        nodes += n
        inits += i
        probs.append(out)

    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes += [helper.make_node("Unsqueeze", [p, "axis1"], [f"{p}/unsqueezed"], name=f"{p}/Unsqueeze") for p in probs]
    nodes.append(helper.make_node("Concat", [f"{p}/unsqueezed" for p in probs], ["member_probabilities"], axis=1,
                                  name="MemberProbabilities"))
    if stacker_model is None:
        weights = np.array([m.source.weight for m in members], dtype=np.float32).reshape(1, -1, 1)
        inits.append(numpy_helper.from_array(weights, "weights"))
        nodes += [helper.make_node("Mul", ["member_probabilities", "weights"], ["weighted"], name="Weigh"),
                  helper.make_node("ReduceSum", ["weighted", "axis1"], ["probabilities"], keepdims=0, name="Combine")]
    else:
        nodes.append(helper.make_node("Concat", probs, ["stacker_input"], axis=1, name="StackerInput"))
        n, i, out = _embed(stacker_model, "stacker", "stacker_input")
        nodes += [*n, helper.make_node("Identity", [out], ["probabilities"], name="Combine")]
        inits += i
    nodes += [helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0, name="Label"),
              helper.make_node("ReduceMax", ["probabilities"], ["confidence"], axes=[1], keepdims=0, name="Confidence")]

    batch = CONTRACT.batch_axis
    graph = helper.make_graph(
        nodes, "ensemble",
        [helper.make_tensor_value_info(ENSEMBLE_INPUT, TensorProto.DOUBLE, [batch, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, n_classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
         helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [batch]),
         helper.make_tensor_value_info("member_probabilities", TensorProto.FLOAT, [batch, len(members), n_classes])],
        inits)
    model = helper.make_model(graph, producer_name="ensemble-onnx", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", CONTRACT.opset),
                                             helper.make_opsetid("ai.onnx.ml", CONTRACT.ml_opset)])
    onnx.checker.check_model(model, full_check=True)
    return model
