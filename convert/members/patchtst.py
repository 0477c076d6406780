"""PatchTST v5: a linear embedding, a TransformerEncoder over one token per row, and a two-layer head.

state_dict: embedding.*, transformer.layers.{i}.* (12 tensors a layer), fc.{0,3}.* (54 tensors for v5).
The head count cannot be read off the shapes: it comes from metadata, else the v5 default of 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import MetadataError, UnsupportedModelError
from . import LoadedMember, MemberKind, MemberSource, register
from .torch_common import Architecture, count_indexed, load_torch_member, rebuild, tensor_shape, torch_reference

V5_HEADS = 8


def build_module(hp: dict[str, Any]) -> Any:
    import torch.nn as nn

    class PatchTST(nn.Module):
        def __init__(self, input_dim: int, d_model: int, n_heads: int, n_layers: int, dim_feedforward: int,
                     num_classes: int) -> None:
            super().__init__()
            self.embedding = nn.Linear(input_dim, d_model)
            layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=dim_feedforward, dropout=0.1,
                                               batch_first=True)
            # Nested tensors only matter with padding masks; off keeps tracing on the plain ops.
            self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)
            self.fc = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.ReLU(), nn.Dropout(0.1),
                                    nn.Linear(d_model // 2, num_classes))

        def forward(self, x: Any) -> Any:
            x = self.embedding(x.unsqueeze(1))  # one token per row
            return self.fc(self.transformer(x).mean(dim=1))

    return PatchTST(hp["input_size"], hp["d_model"], hp["n_heads"], hp["n_layers"], hp["dim_feedforward"],
                    hp["num_classes"])


def one_token_form(module: Any) -> Any:
    """The same function as `module`, written for one token, for export (the reference stays `module`).

    With a single token, attention's softmax runs over one key and is exactly 1, so self-attention is
    out_proj(v_proj(x)): query and key weights never touch the result. That pair of linear maps and the
    residual around it fold into one matrix, (I + Wo Wv); in the first layer the embedding folds in too.
    The mean over one token is the token. What is left per layer: one Gemm, LayerNorm, the feed-forward
    block, LayerNorm. Folding is done in float64 and rounded once; the parity gate is the referee.
    """
    import torch
    import torch.nn as nn

    def linear(weight: Any, bias: Any) -> nn.Linear:
        out = nn.Linear(weight.shape[1], weight.shape[0])
        out.weight.data, out.bias.data = weight.float().contiguous(), bias.float().contiguous()
        return out

    layers = list(module.transformer.layers)
    for layer in layers:
        if layer.norm_first or layer.activation_relu_or_gelu != 1:
            raise UnsupportedModelError("PatchTST: only post-norm ReLU encoder layers (the v5 layout) fold.")
    d = module.embedding.out_features
    folded = []
    w_in, b_in = module.embedding.weight.double(), module.embedding.bias.double()  # what feeds the layer
    for layer in layers:
        attn = layer.self_attn
        w_v, b_v = attn.in_proj_weight[2 * d:].double(), attn.in_proj_bias[2 * d:].double()
        w_o, b_o = attn.out_proj.weight.double(), attn.out_proj.bias.double()
        mix = torch.eye(d, dtype=torch.float64) + w_o @ w_v        # x + out_proj(v_proj(x)), bias apart
        folded.append(linear(mix @ w_in, mix @ b_in + w_o @ b_v + b_o))
        w_in, b_in = torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)

    class OneTokenPatchTST(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.ModuleList(folded)
            self.layers = nn.ModuleList(layers)
            self.fc = module.fc

        def forward(self, x: Any) -> Any:
            layer: Any  # a TransformerEncoderLayer; torch types a submodule's attributes as Tensor | Module
            for mix, layer in zip(self.mix, self.layers, strict=True):
                x = layer.norm1(mix(x))
                x = layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))
            return self.fc(x)

    return OneTokenPatchTST().eval()


def read_architecture(state: dict[str, Any], meta: dict[str, Any], source: MemberSource) -> Architecture:
    where = str(source.metadata)
    stated = meta.get("architecture", {})
    d_model, input_size = tensor_shape(state, "embedding.weight", source.file)
    arch = Architecture(feature_names=meta.get("feature_names"))
    arch.inferred("input_size", input_size, meta.get("num_features", stated.get("input_dim")), where)
    arch.inferred("d_model", d_model, stated.get("d_model"), where)
    arch.inferred("n_layers", count_indexed(state, "transformer.layers.", source.file), stated.get("n_layers"), where)
    ff = tensor_shape(state, "transformer.layers.0.linear1.weight", source.file)[0]
    arch.inferred("dim_feedforward", ff, stated.get("dim_feedforward"), where)
    arch.inferred("num_classes", tensor_shape(state, "fc.3.weight", source.file)[0], stated.get("num_classes"), where)
    arch.stated_or_default("n_heads", stated.get("n_heads"), V5_HEADS)
    heads = arch.values["n_heads"]
    if not isinstance(heads, int) or heads < 1 or d_model % heads:
        raise MetadataError(f"{where}: n_heads={heads!r} does not divide d_model={d_model} read off the weights.")
    return arch


def load(source: MemberSource) -> LoadedMember:
    return load_torch_member(source, read_architecture, build_module, one_token_form)


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return torch_reference(rebuild(source, read_architecture, build_module)[0])


register(MemberKind("patchtst", (".pth", ".pt"), load, reference, frameworks=("torch",), distributions=("torch",),
                    build_modules=("torch",), service_weight=0.20, read_architecture=read_architecture))
