"""Member kinds: one module per kind, and the registry that maps a kind name to its loader.

Every kind turns a `MemberSource` (files named by the plan) into a `LoadedMember`: the original framework's
prediction function (the parity reference), the ONNX export that must reproduce it, and what was learnt
about the model on the way (hyperparameters, the tree split thresholds). Adding a kind is one module here,
one `register` line below, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime import contract

from ..errors import PlanError, UnsupportedModelError

if TYPE_CHECKING:
    import onnx


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


@dataclass(frozen=True)
class MemberSource:
    """One member as the plan names it."""

    name: str
    kind: str
    file: Path
    metadata: Path | None = None
    scaler: Path | None = None
    weight: float = 1.0


@dataclass
class LoadedMember:
    """A member read from its files, rebuilt, exported, with its reference prediction function."""

    source: MemberSource
    n_features: int
    n_classes: int
    hyperparameters: dict[str, Any]
    reference: Callable[[np.ndarray], np.ndarray]  # float32 [N, F] scaled -> float64 [N, n_classes]
    onnx_model: onnx.ModelProto
    feature_names: list[str] | None = None         # as the member's own files state them
    notes: list[str] = field(default_factory=list)  # where each hyperparameter came from
    thresholds: list[tuple[int, float]] = field(default_factory=list)  # (feature, split value) for trees


@dataclass(frozen=True)
class MemberKind:
    name: str
    suffixes: tuple[str, ...]
    load: Callable[[MemberSource], LoadedMember]
    # The original framework's prediction alone (no export): what the service ran, for `bench` and `verify`.
    reference: Callable[[MemberSource], Callable[[np.ndarray], np.ndarray]]


_REGISTRY: dict[str, MemberKind] = {}


def register(kind: MemberKind) -> None:
    """Add a kind. Refuses to overwrite one: two modules claiming a kind is a bug, not a preference."""
    if kind.name in _REGISTRY:
        raise ValueError(f"member kind '{kind.name}' is already registered")
    if not callable(kind.load) or not callable(kind.reference) or not kind.suffixes:
        raise ValueError(f"member kind '{kind.name}' needs load and reference functions and a file suffix")
    _REGISTRY[kind.name] = kind


def get_kind(name: str) -> MemberKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PlanError(f"unknown member kind '{name}'; known kinds: {', '.join(sorted(_REGISTRY))}") from None


def known_kinds() -> list[str]:
    return sorted(_REGISTRY)


def _lazy(module: str, function: str) -> Callable[[MemberSource], Any]:
    """The kind module's function, imported when first used: torch and the tree libraries are heavy."""
    def call(source: MemberSource) -> Any:
        from importlib import import_module
        return getattr(import_module(f"{__name__}.{module}"), function)(source)
    return call


for _kind, _suffixes in (("nhits", (".pth", ".pt")), ("patchtst", (".pth", ".pt")),
                         ("xgboost", (".pkl", ".joblib", ".json", ".ubj")), ("lightgbm", (".pkl", ".joblib", ".txt")),
                         ("sklearn", (".pkl", ".joblib"))):
    register(MemberKind(_kind, _suffixes, _lazy(_kind, "load"), _lazy(_kind, "reference")))
