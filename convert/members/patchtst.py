"""PatchTST v5: a linear embedding, a TransformerEncoder over one token per row, and a two-layer head.

state_dict: embedding.*, transformer.layers.{i}.* (12 tensors a layer), [transformer.norm.*], fc.{0,3}.*
(54 tensors for v5). The head count, `norm_first`, `activation` and `layer_norm_eps` cannot be read off the
shapes: they come from metadata, else the v5 defaults (8, post-norm, ReLU, 1e-5). Any other architecture key
is refused by name: this rebuild would ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import MetadataError
from . import LoadedMember, MemberKind, MemberSource, register
from .torch_common import (
    Architecture,
    check_architecture_keys,
    count_indexed,
    is_number,
    load_torch_member,
    no_effect,
    rebuild,
    stated_architecture,
    stated_value,
    tensor_shape,
    torch_reference,
)

V5_HEADS = 8


# architecture key -> what this rebuild does with it (every other key is refused).
ARCHITECTURE_KEYS = {
    "input_dim": "read off embedding.weight", "d_model": "read off embedding.weight",
    "n_layers": "counted", "dim_feedforward": "read off linear1.weight", "num_classes": "read off fc.3.weight",
    "n_heads": "metadata or 8", "norm_first": "metadata or false", "activation": "metadata or relu",
    "layer_norm_eps": "metadata or 1e-5", "encoder_norm": "read off transformer.norm.weight",
    "batch_first": "true only", "dropout": "no effect in eval mode",
}
ACTIVATIONS = ("relu", "gelu")


def build_module(hp: dict[str, Any]) -> Any:
    import torch.nn as nn

    class PatchTST(nn.Module):
        def __init__(self, input_dim: int, d_model: int, n_heads: int, n_layers: int, dim_feedforward: int,
                     num_classes: int, norm_first: bool, activation: str, layer_norm_eps: float,
                     encoder_norm: bool) -> None:
            super().__init__()
            self.embedding = nn.Linear(input_dim, d_model)
            layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=dim_feedforward, dropout=0.1,
                                               activation=activation, layer_norm_eps=layer_norm_eps,
                                               batch_first=True, norm_first=norm_first)
            # Nested tensors only matter with padding masks; off keeps tracing on the plain ops. The final
            # norm, when the weights have one, is the training scripts' nn.LayerNorm(d_model).
            self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False,
                                                     norm=nn.LayerNorm(d_model) if encoder_norm else None)
            self.fc = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.ReLU(), nn.Dropout(0.1),
                                    nn.Linear(d_model // 2, num_classes))

        def forward(self, x: Any) -> Any:
            x = self.embedding(x.unsqueeze(1))  # one token per row
            return self.fc(self.transformer(x).mean(dim=1))

    return PatchTST(hp["input_size"], hp["d_model"], hp["n_heads"], hp["n_layers"], hp["dim_feedforward"],
                    hp["num_classes"], hp["norm_first"], hp["activation"], hp["layer_norm_eps"], hp["encoder_norm"])


def one_token_form(module: Any) -> Any:
    """The same function as `module`, written for one token, for export (the reference stays `module`).

    With a single token, attention's softmax runs over one key and is exactly 1, so self-attention is
    out_proj(v_proj(x)): query and key weights never touch the result. That pair of linear maps and the
    residual around it fold into one matrix, (I + Wo Wv); in the first layer the embedding folds in too.
    The mean over one token is the token. What is left per layer: one Gemm, LayerNorm, the feed-forward
    block, LayerNorm (pre-norm: the norms read the residual stream instead, and the identity stays out of
    the Gemm). Folding is done in float64 and rounded once; the parity gate is the referee.
    """
    import torch
    import torch.nn as nn

    def linear(weight: Any, bias: Any) -> nn.Linear:
        out = nn.Linear(weight.shape[1], weight.shape[0])
        out.weight.data, out.bias.data = weight.float().contiguous(), bias.float().contiguous()
        return out

    layers = list(module.transformer.layers)
    norm_first = layers[0].norm_first  # one layer repeated: every layer has the same layout
    d = module.embedding.out_features
    folded = []
    # Post-norm: the residual joins the attention before any norm, so (I + Wo Wv) folds, and the embedding
    # into the first layer's. Pre-norm: attention reads norm1(x), so only Wo Wv folds and the residual stays.
    identity = torch.eye(d, dtype=torch.float64) * (0.0 if norm_first else 1.0)
    w_in, b_in = module.embedding.weight.double(), module.embedding.bias.double()  # what feeds the layer
    if norm_first:
        w_in, b_in = torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for layer in layers:
        attn = layer.self_attn
        w_v, b_v = attn.in_proj_weight[2 * d:].double(), attn.in_proj_bias[2 * d:].double()
        w_o, b_o = attn.out_proj.weight.double(), attn.out_proj.bias.double()
        mix = identity + w_o @ w_v                                   # [x +] out_proj(v_proj(x)), bias apart
        folded.append(linear(mix @ w_in, mix @ b_in + w_o @ b_v + b_o))
        w_in, b_in = torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)

    class OneTokenPatchTST(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = module.embedding if norm_first else nn.Identity()
            self.mix = nn.ModuleList(folded)
            self.layers = nn.ModuleList(layers)
            self.norm = module.transformer.norm or nn.Identity()
            self.fc = module.fc

        def forward(self, x: Any) -> Any:
            layer: Any  # a TransformerEncoderLayer; torch types a submodule's attributes as Tensor | Module
            x = self.embedding(x)
            for mix, layer in zip(self.mix, self.layers, strict=True):
                if norm_first:
                    x = x + mix(layer.norm1(x))
                    x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
                else:
                    x = layer.norm1(mix(x))
                    x = layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))
            return self.fc(self.norm(x))

    return OneTokenPatchTST().eval()


def read_architecture(state: dict[str, Any], meta: dict[str, Any], source: MemberSource) -> Architecture:
    where = str(source.metadata)
    stated = stated_architecture(meta, ARCHITECTURE_KEYS, where)
    check_architecture_keys(stated, ARCHITECTURE_KEYS, where, "patchtst")
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
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or d_model % heads:
        raise MetadataError(f"{where}: n_heads={heads!r} does not divide d_model={d_model} read off the weights.")
    arch.stated_or_default("norm_first", stated_value(stated, "norm_first", lambda v: isinstance(v, bool),
                                                      "true or false", where), False)
    arch.stated_or_default("activation", stated_value(stated, "activation", lambda v: v in ACTIVATIONS,
                                                      f"one of {list(ACTIVATIONS)}", where), "relu")
    arch.stated_or_default("layer_norm_eps", stated_value(stated, "layer_norm_eps", lambda v: is_number(v) and v > 0,
                                                          "a positive number", where), 1e-5)
    arch.inferred("encoder_norm", "transformer.norm.weight" in state,
                  stated_value(stated, "encoder_norm", lambda v: isinstance(v, bool), "true or false", where), where)
    # batch_first=False with one token per row would attend across the rows of a batch: not a row model.
    stated_value(stated, "batch_first", lambda v: v is True, "true (one token per row, rows independent)", where)
    no_effect(arch, stated, where)
    return arch


def load(source: MemberSource) -> LoadedMember:
    return load_torch_member(source, read_architecture, build_module, one_token_form)


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return torch_reference(rebuild(source, read_architecture, build_module)[0])


register(MemberKind("patchtst", (".pth", ".pt", ".safetensors"), load, reference, frameworks=("torch",),
                    distributions=("torch",), build_modules=("torch",), service_weight=0.20,
                    read_architecture=read_architecture))
