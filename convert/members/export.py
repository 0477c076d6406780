"""The export contract every member's ONNX graph meets, as data: tensor names, batch axis, opsets and the
parity tolerance, and `to_contract`, which brings a converter's graph to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime import contract

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class ExportContract:
    """What every member export must look like, as data (one policy for all kinds). Names, axes and opsets
    come from the artifact contract (`runtime/contract.py`); the tolerance is the build's own."""

    input_name: str = contract.MEMBER_INPUT    # float32 [N, F], already scaled
    output_name: str = contract.MEMBER_OUTPUT  # float32 [N, n_classes]
    batch_axis: str = contract.BATCH_AXIS
    opset: int = contract.OPSET                # ai.onnx
    ml_opset: int = contract.ML_OPSET          # ai.onnx.ml (TreeEnsembleClassifier)
    tolerance: float = 1e-5                    # absolute, on every probability

    @property
    def opsets(self) -> dict[str, int]:
        return {"ai.onnx": self.opset, "ai.onnx.ml": self.ml_opset}


CONTRACT = ExportContract()


def to_contract(model: Any, what: str) -> Any:
    """Keep only the probabilities output of a converter's graph and lift it to the contract's opsets."""
    import onnx
    from onnx import helper

    graph = model.graph
    keep = [o for o in graph.output if o.name == CONTRACT.output_name]
    if len(keep) != 1:
        raise UnsupportedModelError(f"{what}: the converter produced outputs {[o.name for o in graph.output]}, "
                                    f"without a '{CONTRACT.output_name}' tensor.")
    del graph.output[:]
    graph.output.extend(keep)
    # onnxmltools stops at opset 15 (ml 1). The ops it emits (Identity, Cast, Mul, TreeEnsembleClassifier)
    # mean the same on float tensors up to opset 17 and ml opset 3, so the imports are raised as they are;
    # the checker and the parity gate confirm the result.
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", CONTRACT.opset),
                               helper.make_opsetid("ai.onnx.ml", CONTRACT.ml_opset)])
    model.ir_version = contract.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
