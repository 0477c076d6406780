"""Weight precision of the shipped ensemble graph: float32 by default; int8 only when asked for, and then
behind its own gate (label agreement with the frameworks), never the float32 tolerance.

int8 stores each large torch Linear weight (at least MIN_WEIGHTS elements: in the demo set, PatchTST's
eight feed-forward matrices, 8.4 of its 9.2 MB) as 8-bit integers in blocks of BLOCK_SIZE along the input,
one float32 scale per block, in onnxruntime's MatMulNBits operator written by onnxruntime's own
MatMulNBitsQuantizer. At run time onnxruntime also quantizes each activation block to int8 and accumulates
in int32 (accuracy_level 4: the only 8-bit level with fast kernels on x86). A one-row call then streams
about a third of the bytes. Everything else (trees, scaler, small layers, the combiner) stays as exported.

The member files in members/ always stay float32: they are the exact exports the strict gate proved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnsupportedModelError
from .graph import drop_dead_nodes

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
DEFAULT_MIN_AGREEMENT = 0.99   # share of parity rows whose label (after the decision policy) must not change
MIN_WEIGHTS = 1 << 16          # smaller layers cost more in per-node work than their weights cost to stream
BLOCK_SIZE = 32                # the smallest block onnxruntime's 8-bit kernels take: the most scales, the least error
MIN_ONNXRUNTIME = "1.22"       # the first onnxruntime with x86 kernels for 8-bit MatMulNBits
SCHEME = (f"weight-only int8, symmetric, blocks of {BLOCK_SIZE} along the input, float32 scales; onnxruntime "
          f"MatMulNBits accuracy_level 4 (int8 activations, int32 accumulation)")


@dataclass(frozen=True)
class Precision:
    weights: str = "fp32"                        # one of PRECISIONS
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # the gate for anything but fp32

    def __post_init__(self) -> None:
        if self.weights not in PRECISIONS:  # e.g. a manifest from a newer ensemble-onnx
            raise UnsupportedModelError(f"precision '{self.weights}': this ensemble-onnx knows {list(PRECISIONS)}; "
                                        f"upgrade it, or rebuild the artifacts with this version.")

    @property
    def lowered(self) -> bool:
        return self.weights != "fp32"

    def record(self, quantized: list[str] | None = None) -> dict[str, Any]:
        """The manifest's `precision` block (with the nodes `lower` quantized); parity.json's, without them."""
        if not self.lowered:
            return {"weights": "fp32"}
        from runtime.host import cpu, int8_note

        host = cpu()  # where it was built and gated; describe() says the same of the serving host
        return {"weights": self.weights, "scheme": SCHEME, "min_agreement": self.min_agreement,
                "min_onnxruntime": MIN_ONNXRUNTIME, **({"quantized_nodes": quantized} if quantized else {}),
                "build_host": {**host, "int8_note": int8_note(host)}}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Precision:
        """Artifacts written before this field existed are float32."""
        record = record or {}
        return cls(record.get("weights", "fp32"), record.get("min_agreement", DEFAULT_MIN_AGREEMENT))


def lower(model: Any, precision: Precision) -> tuple[Any, list[str]]:
    """The ensemble graph with its large Linear weights in `precision.weights`; (model, names of the nodes
    now holding int8 weights). fp32 returns the model untouched."""
    if not precision.lowered:
        return model, []
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from runtime.host import cpu, int8_note

    note = int8_note(cpu())
    if note:  # the agreement gate still decides; this is about speed, which only a benchmark shows
        log.warning("--precision %s: this build host %s", precision.weights, note)

    targets = _linears_as_matmul(model)
    if not targets:
        raise UnsupportedModelError(f"--precision {precision.weights}: no member has a Linear layer of at least "
                                    f"{MIN_WEIGHTS:,} weights, so nothing would be lowered; build with the "
                                    f"default --precision fp32.")
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in targets]
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=others)
    # The quantizer logs a line per node at INFO; a build's output is the progress and the gate report.
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    lowered = quantizer.model.model
    _fold_bias(lowered)
    onnx.checker.check_model(lowered)
    return lowered, [n.name for n in lowered.graph.node if n.op_type == "MatMulNBits"]


def _linears_as_matmul(model: Any) -> set[str]:
    """Rewrite each large constant Gemm (torch.nn.Linear: W [out, in], transB=1) as MatMul(x, Wᵀ) + bias, the
    form the quantizer takes; the names of the new MatMul nodes."""
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    nodes, targets = [], set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and node.input[1] in weights and len(node.input) == 3 and node.input[2] in weights
                and attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0):
            w = numpy_helper.to_array(weights[node.input[1]])
            if w.ndim == 2 and w.size >= MIN_WEIGHTS:
                transposed = f"{node.input[1]}/transposed"
                model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), transposed))
                name = f"{node.name}/int8"
                nodes += [helper.make_node("MatMul", [node.input[0], transposed], [f"{node.output[0]}/no_bias"],
                                           name=name),
                          helper.make_node("Add", [f"{node.output[0]}/no_bias", node.input[2]], [node.output[0]],
                                           name=f"{node.name}/bias")]
                targets.add(name)
                continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_dead_nodes(model.graph)  # the float32 [out, in] weights the MatMuls replaced
    return targets


def _fold_bias(model: Any) -> None:
    """MatMulNBits takes the bias as its sixth input: the Add each rewrite left behind goes, one node fewer
    per layer."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {i.name for i in model.graph.initializer}
    dropped = set()
    for node in model.graph.node:
        users = consumers.get(node.output[0], [])
        if node.op_type != "MatMulNBits" or len(users) != 1:
            continue
        add = users[0]
        bias = next((i for i in add.input if i != node.output[0]), None)
        if add.op_type != "Add" or bias not in weights:
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        node.ClearField("input")
        node.input.extend([*inputs[:5], bias])
        node.output[0] = add.output[0]
        dropped.add(id(add))
    kept = [n for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
