"""Member kinds: one module per kind, and the registry that maps a kind name to everything about it.

Every kind turns a `MemberSource` (files named by the plan) into a `LoadedMember`: the original framework's
prediction function (the parity reference), the ONNX export that must reproduce it, and what was learnt
about the model on the way (hyperparameters, the tree split thresholds). Adding a kind is one module here
that ends with its `register(...)` line, its name in the import at the end of this file, and its tests. What
the shared code must know about a kind (pickle allowlist, framework error classes, manifest library versions,
the build stack, the default weight, the input domain) is data on its `MemberKind`, read through the functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PlanError

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class MemberSource:
    """One member as the plan names it."""

    name: str
    kind: str
    file: Path
    metadata: Path | None = None
    scaler: Path | None = None
    weight: float = 1.0
    # How the service called the model, where the file cannot say: ensemble.json's tree options (checked by
    # `members.trees.parse_options`, e.g. {"rounds": 13, "missing": -999.0}) and a kind's own entry fields
    # (`MemberKind.entry_keys`, e.g. kind torch's module, init and code).
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class LoadedMember:
    """A member read from its files, rebuilt, exported, with its reference prediction function."""

    source: MemberSource
    n_features: int
    n_classes: int
    hyperparameters: dict[str, Any]
    # float64 [N, F] scaled (the rows the service handed its framework) -> float64 [N, n_classes]; a framework
    # that computes in float32 (torch) casts them itself, as the service did.
    reference: Callable[[np.ndarray], np.ndarray]
    onnx_model: onnx.ModelProto
    feature_names: list[str] | None = None         # as the member's own files state them
    # How the member's framework rewrote a feature name in its file (LightGBM: spaces to underscores), so that
    # its names are compared with the other sources' as it wrote them; None: kept as given.
    feature_names_as: Callable[[str], str] | None = None
    notes: list[str] = field(default_factory=list)  # where each hyperparameter came from
    # (feature, split value) for trees: `x <= value` sends x left, x as the member's graph reads it (float32, or
    # float64 for a kind whose `takes_float64`)
    thresholds: list[tuple[int, float]] = field(default_factory=list)
    code: list[dict[str, str]] | None = None  # a `torch` member: the training code's files {file, sha256}


def never(member: LoadedMember) -> bool:
    return False


def always(member: LoadedMember) -> bool:
    return True


@dataclass(frozen=True)
class MemberKind:
    name: str
    suffixes: tuple[str, ...]
    load: Callable[[MemberSource], LoadedMember]
    # The original framework's prediction alone (no export): what the service ran, for `bench` and `verify`.
    reference: Callable[[MemberSource], Callable[[np.ndarray], np.ndarray]]
    # ensemble.json fields this kind takes beyond kind/file/metadata/scaler/weight, checked by `parse_entry`
    # (entry, models folder, where) -> options; the manifest's hyperparameters hold them again for `verify`.
    entry_keys: tuple[str, ...] = ()
    parse_entry: Callable[[Mapping[str, Any], Path, str], dict[str, Any]] | None = None
    # Which of the tree options (`members.trees.OPTIONS`: "rounds", "missing") this kind's entry takes.
    tree_options: tuple[str, ...] = ()
    # The globals a pickle of this kind may name (besides numpy's, loaders.COMMON_PICKLE_GLOBALS); empty: the
    # kind reads no pickles, and `load_pickle(path, kind)` refuses every global it is asked for.
    pickle_globals: frozenset[tuple[str, str]] = frozenset()
    # Top-level modules whose exceptions mean "this model file is a problem" (errors.raised_in_framework).
    frameworks: tuple[str, ...] = ()
    # Distributions whose versions manifest.json records, and modules the build stack must import (cli).
    distributions: tuple[str, ...] = ()
    build_modules: tuple[str, ...] = ()
    # The weight of this kind in a folder discovered without ensemble.json, before normalization; None: the
    # kind is not discovered by stamp (it must be named in ensemble.json). Discovery takes the kinds that have
    # one in registration order (the import order at the end of this file).
    service_weight: float | None = None
    # A torch kind's architecture read off a state_dict and its metadata, for `inspect` of a weights file.
    read_architecture: Callable[[Any, Any, MemberSource], Any] | None = None
    # The input domain (convert/domain.py): whether a member of this kind only compares its inputs with split
    # values (a tree ensemble: no float32 value overflows it), and whether it defines what a missing value (NaN)
    # means (a learned default direction at every split). Functions of the loaded member: a kind may hold both.
    only_compares: Callable[[LoadedMember], bool] = never
    takes_nan: Callable[[LoadedMember], bool] = never
    # The member's input dtype: whether its framework compares (or computes with) the service's float64 rows in
    # float64 (LightGBM, HistGradientBoosting, LogisticRegression), so the fused graph feeds it the float64 row
    # (scaled in float64, never cast) and its graph splits on the exact double thresholds; otherwise float32
    # (torch, XGBoost, random forests, CatBoost: their frameworks cast to float32 themselves). docs/numerics.md.
    takes_float64: Callable[[LoadedMember], bool] = never


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


def input_dtype(member: LoadedMember) -> str:
    """"float64" or "float32": what the member's graph reads, as its kind declares (`MemberKind.takes_float64`)."""
    return "float64" if get_kind(member.source.kind).takes_float64(member) else "float32"


def all_kinds() -> list[MemberKind]:
    """Every registered kind, in registration order."""
    return list(_REGISTRY.values())


def service_weights() -> dict[str, float]:
    """The kinds discovery looks for by stamp, in registration order, with their default weights."""
    return {k.name: k.service_weight for k in _REGISTRY.values() if k.service_weight is not None}


def kind_facts(attribute: str) -> tuple[str, ...]:
    """One per-kind fact (`frameworks`, `distributions`, `build_modules`) of every kind, in registration order,
    each name once."""
    names: dict[str, None] = {}
    for kind in _REGISTRY.values():
        names.update(dict.fromkeys(getattr(kind, attribute)))
    return tuple(names)


# Each kind module registers itself at its end; importing them here fills the registry. They import only the
# standard library and numpy at module level (torch and the tree libraries inside their functions). The order
# is the registration order: discovery's member order (xgboost, lightgbm, nhits, patchtst), then the kinds
# named only in ensemble.json.
from . import xgboost  # noqa: E402, F401, I001
from . import lightgbm  # noqa: E402, F401
from . import nhits  # noqa: E402, F401
from . import patchtst  # noqa: E402, F401
from . import sklearn  # noqa: E402, F401
from . import user_torch  # noqa: E402, F401
from . import catboost  # noqa: E402, F401
