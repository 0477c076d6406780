"""N-HiTS v5: residual MLP stacks and a two-layer head, rebuilt from a bare state_dict.

state_dict: stacks.{i}.{0,3}.{weight,bias}, fc.{0,3}.{weight,bias} (20 tensors for the v5 four stacks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import LoadedMember, MemberKind, MemberSource, register
from .torch_common import (
    Architecture,
    check_architecture_keys,
    count_indexed,
    load_torch_member,
    no_effect,
    rebuild,
    stated_architecture,
    tensor_shape,
    torch_reference,
)

# architecture key -> what this rebuild does with it (every other key is refused).
ARCHITECTURE_KEYS = {"input_size": "read off stacks.0.0.weight", "hidden_size": "read off stacks.0.0.weight",
                     "num_stacks": "counted", "num_classes": "read off fc.3.weight",
                     "dropout": "no effect in eval mode"}


def build_module(hp: dict[str, Any]) -> Any:
    """The training script's NHiTS; dropout is irrelevant in eval mode and left at its v5 value."""
    import torch.nn as nn

    class NHiTS(nn.Module):
        def __init__(self, input_size: int, hidden_size: int, num_stacks: int, num_classes: int) -> None:
            super().__init__()
            self.hidden_size = hidden_size
            self.stacks = nn.ModuleList(
                nn.Sequential(nn.Linear(input_size if i == 0 else hidden_size, hidden_size), nn.ReLU(),
                              nn.Dropout(0.1), nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(0.1))
                for i in range(num_stacks))
            self.fc = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(), nn.Dropout(0.1),
                                    nn.Linear(hidden_size // 2, num_classes))

        def forward(self, x: Any) -> Any:
            for stack in self.stacks:
                # Residual once widths match: skipped on the first stack unless input_size == hidden_size.
                x = stack(x) + (x if x.shape[-1] == self.hidden_size else 0)
            return self.fc(x)

    return NHiTS(hp["input_size"], hp["hidden_size"], hp["num_stacks"], hp["num_classes"])


def read_architecture(state: dict[str, Any], meta: dict[str, Any], source: MemberSource) -> Architecture:
    where = str(source.metadata)
    stated = stated_architecture(meta, ARCHITECTURE_KEYS, where)
    check_architecture_keys(stated, ARCHITECTURE_KEYS, where, "nhits")
    hidden, input_size = tensor_shape(state, "stacks.0.0.weight", source.file)
    arch = Architecture(feature_names=meta.get("feature_names"))
    arch.inferred("input_size", input_size, meta.get("num_features", stated.get("input_size")), where)
    arch.inferred("hidden_size", hidden, stated.get("hidden_size"), where)
    arch.inferred("num_stacks", count_indexed(state, "stacks.", source.file), stated.get("num_stacks"), where)
    arch.inferred("num_classes", tensor_shape(state, "fc.3.weight", source.file)[0], stated.get("num_classes"), where)
    no_effect(arch, stated, where)
    return arch


def load(source: MemberSource) -> LoadedMember:
    return load_torch_member(source, read_architecture, build_module)


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return torch_reference(rebuild(source, read_architecture, build_module)[0])


register(MemberKind("nhits", (".pth", ".pt", ".safetensors"), load, reference, frameworks=("torch",),
                    distributions=("torch",), build_modules=("torch",), service_weight=0.30,
                    read_architecture=read_architecture))
