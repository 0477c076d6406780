"""What the torch kinds share: reading hyperparameters off tensor shapes and checking them against
metadata, strict loading, the reference prediction, and the ONNX export with a softmax head.

A kind module supplies two functions: `read_architecture(state, meta, file) -> Architecture` and
`build_module(hyperparameters) -> nn.Module`; `load_torch_member` and `rebuild` do the rest.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetadataError, StateDictError, UnsupportedModelError
from ..loaders import load_json, load_state_dict
from . import LoadedMember, MemberSource
from .export import CONTRACT

EXPORT_BATCH = 3  # parity runs at 1, 7 and 512: none of them is the traced size


@dataclass
class Architecture:
    """Hyperparameters with a note per value saying where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    feature_names: list[str] | None = None

    def inferred(self, name: str, value: Any, stated: Any, where: str) -> None:
        """A value the shapes determine; metadata may state it but must then agree."""
        if stated is not None and stated != value:
            raise MetadataError(f"{where}: states {name}={stated!r}, but the weights have {name}={value!r}. "
                                f"Fix the metadata or use the matching .pth.")
        self.values[name] = value
        self.notes.append(f"{name}={value} (from shapes{', agrees with metadata' if stated is not None else ''})")

    def stated_or_default(self, name: str, stated: Any, default: Any) -> None:
        """A value the shapes cannot tell: metadata, else the v5 default, and the plan says which."""
        self.values[name] = default if stated is None else stated
        self.notes.append(f"{name}={self.values[name]} "
                          f"({'v5 default, not in metadata' if stated is None else 'from metadata'})")


# Top-level metadata keys that change what a model computes without changing a tensor's shape (those the
# rebuilds read, and the spellings training scripts commonly give them): a flat dump's key of these that the
# kind does not implement is refused by name. Keys a wrong value of which the weights' shapes would expose, and
# any other top-level key (`accuracy`, `epochs`, `input_size`, ...), are not read there.
ARCHITECTURE_WORDS = frozenset({
    "norm_first", "pre_norm", "prenorm", "normalize_before", "activation", "act", "act_fn", "activation_fn",
    "hidden_act", "layer_norm_eps", "norm_eps", "layer_norm_epsilon", "encoder_norm", "batch_first", "pooling",
    "pooling_mode", "interpolation_mode", "n_pool_kernel_size", "n_freq_downsample", "revin", "use_revin"})


def stated_architecture(meta: dict[str, Any], known: dict[str, str], where: str) -> dict[str, Any]:
    """The metadata's `architecture` object, with the keys the rebuild knows also read where a training script
    wrote them at the top level (`{"n_heads": 4, "norm_first": true, ...}`): ignored there, they would build
    another model than the one trained. Stated in both places, they must agree."""
    stated = dict(meta.get("architecture", {}))
    # A flat dump's architecture key this rebuild does not implement (N-HiTS' `activation`, a `pre_norm`) would
    # be skipped as if it were `accuracy`: it goes with the stated keys, to be refused by name.
    stated.update({key: meta[key] for key in meta if key in ARCHITECTURE_WORDS and key not in known
                   and key not in stated})
    for key in known:
        if key in meta:
            if key in stated and stated[key] != meta[key]:
                raise MetadataError(f"{where}: states {key}={meta[key]!r:.40} at the top level and "
                                    f"{stated[key]!r:.40} in 'architecture'; keep one.")
            stated[key] = meta[key]
    return stated


def check_architecture_keys(stated: dict[str, Any], known: dict[str, str], where: str, kind: str) -> None:
    """Fail closed: a key the rebuild does not implement would be ignored, and the rebuild would then differ
    from the trained model while passing its own gate. `known`: key -> what it does here."""
    unknown = [k for k in stated if k not in known]
    if unknown:
        raise UnsupportedModelError(
            f"{where}: architecture key(s) {unknown} are not implemented by the {kind} rebuild (it reads "
            f"{', '.join(known)}); ignoring one could build another model than the one trained. Remove a key "
            f"that does not change the model, or declare the member as kind 'torch' with the training code's "
            f"class (docs/models-folder.md).")


def stated_value(stated: dict[str, Any], key: str, valid: Callable[[Any], bool], expect: str, where: str) -> Any:
    """The metadata's value for `key` (None when absent), refused by name when it is not `expect`."""
    value = stated.get(key)
    if value is not None and not valid(value):
        raise MetadataError(f"{where}: architecture.{key} must be {expect}, got {value!r:.60}.")
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def no_effect(arch: Architecture, stated: dict[str, Any], where: str) -> None:
    """`dropout`: inactive in eval mode, where the service and the export both run."""
    rate = stated_value(stated, "dropout", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)", where)
    if rate is not None:
        arch.notes.append(f"dropout={rate} (from metadata; no effect in eval mode)")


def tensor_shape(state: dict[str, Any], key: str, file: Path) -> tuple[int, ...]:
    if key not in state:
        raise StateDictError(f"{file}: missing tensor '{key}'; this is not a complete state_dict of this kind.")
    return tuple(state[key].shape)


def count_indexed(state: dict[str, Any], prefix: str, file: Path) -> int:
    """How many consecutive `prefix{i}.` blocks the state_dict holds (0..n-1, no gaps)."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not found:
        raise StateDictError(f"{file}: no tensors under '{prefix}0.'; this is not a state_dict of this kind.")
    missing = sorted(set(range(max(found) + 1)) - found)
    if missing:
        raise StateDictError(f"{file}: missing tensors for '{prefix}{missing[0]}.' (found blocks {sorted(found)}).")
    return max(found) + 1


def read_metadata(source: MemberSource) -> dict[str, Any]:
    if source.metadata is None:
        return {}
    meta = load_json(source.metadata)
    arch = meta.get("architecture", {})
    if not isinstance(arch, dict):
        raise MetadataError(f"{source.metadata}: field 'architecture' must be an object.")
    names = meta.get("feature_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MetadataError(f"{source.metadata}: field 'feature_names' must be a list of strings.")
    return meta


# What a wrapper puts before every key of the module it wraps: DataParallel / DistributedDataParallel
# (`module.`) and torch.compile (`_orig_mod.`). The weights underneath are the model's own.
WRAPPER_PREFIXES = {"module.": "DataParallel/DistributedDataParallel", "_orig_mod.": "torch.compile"}


def unwrap(state: dict[str, Any], expected: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The state_dict without the prefixes a training wrapper added to every key, and a plan note per prefix.
    With `expected` (the module's own keys), a prefix the module itself has is left alone."""
    notes = []
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None or (expected is not None and set(state) == expected):
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        notes.append(f"every key started with '{prefix}' (saved from {WRAPPER_PREFIXES[prefix]}); "
                     f"the prefix is stripped")
    return state, notes


def load_strict(module: Any, state: dict[str, Any], file: Path, what: str = "the architecture read from it") -> None:
    """`load_state_dict(strict=True)`, with every missing, unexpected or misshapen key named."""
    expected = module.state_dict()
    problems = [f"missing tensor '{k}'" for k in expected if k not in state]
    problems += [f"unexpected tensor '{k}'" for k in state if k not in expected]
    problems += [f"tensor '{k}' has shape {tuple(state[k].shape)}, the architecture needs {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise StateDictError(f"{file}: does not fit {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


@contextlib.contextmanager
def _no_transformer_fast_path() -> Iterator[None]:
    """The fused TransformerEncoder kernel has no ONNX symbolic; tracing must see the plain ops."""
    import torch

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration: how a float reduction is split across threads decides
    how it rounds, so a build run with other thread counts (another process, OMP_NUM_THREADS, a bigger
    machine) would fold, export and measure parity to other last bits. One thread makes the same inputs give
    the same bytes anywhere. Usable as a decorator."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def export_onnx(module: Any, n_features: int, traced: list[str] | None = None) -> Any:
    """Export `softmax(module(x))` with a dynamic batch axis, as the contract says. With `traced`, each
    place where tracing fixed a Python value (a TracerWarning) is appended to it as 'file:line: message'."""
    import onnx
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=-1)

    buffer = io.BytesIO()
    example = torch.zeros(EXPORT_BATCH, n_features, dtype=torch.float32)
    axes = {CONTRACT.input_name: {0: CONTRACT.batch_axis}, CONTRACT.output_name: {0: CONTRACT.batch_axis}}
    with _no_transformer_fast_path(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        # The N-HiTS width test is constant per module (TracerWarning), and the TorchScript exporter is
        # deprecated upstream (DeprecationWarning); neither changes the graph, the parity gate checks it.
        warnings.simplefilter("always" if traced is not None else "ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter: deterministic bytes, no onnxscript dependency, stable since torch 1.x.
        # torch types `f` as a path; the TorchScript exporter writes to any binary file object.
        torch.onnx.export(WithSoftmax(module).eval(), (example,), buffer, dynamo=False,  # type: ignore[arg-type]
                          opset_version=CONTRACT.opset, input_names=[CONTRACT.input_name],
                          output_names=[CONTRACT.output_name], dynamic_axes=axes, do_constant_folding=True)
    for w in caught:  # anything else is shown as it would have been
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if traced is not None:
        traced += sorted({f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:160]}" for w in caught
                          if issubclass(w.category, torch.jit.TracerWarning)})
    return onnx.load_from_string(buffer.getvalue())


def torch_reference(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    """What the service computed: `softmax(module(x))` in eval mode (fast path and all), as float64, x the
    scaled float64 rows cast to the float32 tensor the module takes."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(module(torch.from_numpy(np.asarray(x, dtype=np.float32))), dim=-1).double().numpy()
    return predict


def rebuild(source: MemberSource,
            read_architecture: Callable[[dict[str, Any], dict[str, Any], MemberSource], Architecture],
            build_module: Callable[[dict[str, Any]], Any]) -> tuple[Any, Architecture]:
    """The training script's module with the state_dict loaded strictly, in eval mode."""
    state, unwrapped = unwrap(load_state_dict(source.file))
    arch = read_architecture(state, read_metadata(source), source)
    arch.notes[:0] = unwrapped
    module = build_module(arch.values)
    load_strict(module, state, source.file)
    module.eval()
    n_features = arch.values["input_size"]
    if arch.feature_names is not None and len(arch.feature_names) != n_features:
        raise MetadataError(f"{source.metadata}: lists {len(arch.feature_names)} feature_names, but the weights "
                            f"take {n_features} features.")
    return module, arch


def load_torch_member(source: MemberSource,
                      read_architecture: Callable[[dict[str, Any], dict[str, Any], MemberSource], Architecture],
                      build_module: Callable[[dict[str, Any]], Any],
                      export_form: Callable[[Any], Any] | None = None) -> LoadedMember:
    """`export_form`, when given, rewrites the loaded module into an equivalent one that exports to a
    smaller graph; the reference is always the module as the training script defines it."""
    module, arch = rebuild(source, read_architecture, build_module)
    n_features = arch.values["input_size"]
    return LoadedMember(source=source, n_features=n_features, n_classes=arch.values["num_classes"],
                        hyperparameters=arch.values, reference=torch_reference(module),
                        onnx_model=export_onnx(export_form(module) if export_form else module, n_features),
                        feature_names=arch.feature_names, notes=arch.notes)
