"""The input domain a build proves parity on, and records in manifest.json's `domain` (docs/numerics.md):
per feature a finite [lo, hi] and whether NaN (a missing value) is taken.

- A member that only compares its inputs with split values (its kind's `only_compares`: a tree ensemble) takes
  any value its input dtype holds: TREE_LIMIT of its own (scaled) input units either side of 0 for a float32
  input, TREE_LIMIT64 for a tree that reads float64 (its kind's `takes_float64`).
- Any other member (a neural network, a linear model) computes with its inputs and can overflow float32 far from its
  training data: k of its scaler's standard deviations either side of the scaler's mean (0 and 1 for raw
  features), k the widest of RUNGS at which every member's own framework still answers finitely and the export
  answers as the frameworks do, within the gate's tolerance (`Differs`), on rows spread through the rung: its
  edges, rows inside it, rows on each member's class boundaries, where the rounding of large logits shows most.
  Whatever makes the export differ there (float32 rounding of large logits, a branch tracing froze), no row is
  served where it does: the domain stops under that rung, and the build says where and by how much
  (`Domain.stopped`). The first rung is taken whatever: a difference there fails the gate. Where every
  member that computes reads float64 (a linear model in float64), the ladder goes on through RUNGS64: such a
  member on raw volumes near 1e8 is not refused them.
- A feature's range is the intersection over the members (each reads every feature through its own scaler),
  widened to hold the recorded parity rows (`--parity-data`), which the gate runs too.
- NaN is taken where every member defines what missing means (its kind's `takes_nan`: the learned default
  direction of every split of a gradient-boosted tree ensemble; a StandardScaler maps NaN to NaN), else refused
  naming the members that do not.

The parity rows then cover the range: each rung's edges alone, rows with every feature at an edge, the rows
inside each rung its search ran, and rows with NaN in each feature that takes it (`convert.parity`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.contract import DomainRecord

from .errors import ConvertError, MetadataError
from .members import LoadedMember, get_kind, input_dtype
from .scaler import Scaler

# Standard deviations either side of the scaler's mean, for members that compute: the first rung always, each
# further one while every member's own framework still answers finitely there.
RUNGS = (20.0, 1e2, 1e3, 1e4, 1e5, 1e6)
RUNGS64 = (1e8, 1e10, 1e12, 1e15, 1e20, 1e30, 1e50, 1e100, 1e200, 1e300)  # further, for float64 members alone
TREE_LIMIT = 1e38   # a tree's input units either side of 0: float32 holds it (max 3.4e38) with room for rounding
TREE_LIMIT64 = 1e308  # the same for a tree that reads float64 (max 1.8e308)
FLOAT64_MAX = float(np.finfo(np.float64).max)


def only_compares(member: LoadedMember) -> bool:
    """Whether the member is a tree ensemble: its inputs meet only split values, so no value overflows it. Its
    kind says (`MemberKind.only_compares`)."""
    return get_kind(member.source.kind).only_compares(member)


def takes_nan(member: LoadedMember) -> bool:
    """Whether the member defines what a missing value means (`MemberKind.takes_nan`)."""
    return get_kind(member.source.kind).takes_nan(member)


def moments(scaler: Scaler | None, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature of what a member reads: the scaler's, or 0 and 1 for raw features."""
    mean = np.zeros(n_features) if scaler is None or scaler.mean is None else np.asarray(scaler.mean, np.float64)
    scale = np.ones(n_features) if scaler is None or scaler.scale is None else np.asarray(scaler.scale, np.float64)
    return mean, scale


EDGE_MIXES = 16   # rows per rung with every feature at one edge or the other, besides all-low and all-high


def edge_rows(base: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each feature at each edge of [lo, hi] alone (the others as in `base`), then every feature at an edge."""
    n_features = len(lo)
    rows = []
    for edge in (lo, hi):
        alone = base[np.arange(n_features) % len(base)].copy()
        alone[np.arange(n_features), np.arange(n_features)] = edge
        rows.append(alone)
    pick = rng.random((EDGE_MIXES, n_features)) < 0.5
    rows += [lo[None, :], hi[None, :], np.where(pick, hi, lo)]
    return np.vstack(rows)


class Probabilities(Protocol):
    """Raw rows -> member name -> its own framework's probabilities, for every member or the named ones."""

    def __call__(self, raw: np.ndarray, names: Collection[str] | None = None, /) -> dict[str, np.ndarray]: ...


INSIDE_ROWS = 256  # rows per rung, each feature between the rung under's reach and this one's
TIE_PAIRS = 1024   # per member and rung, pairs of those rows on either side of one of its class boundaries
TIE_STEPS = 12     # bisection steps along each pair, towards the boundary: 1/4096 of its length
TIE_GAP = 1e-3    # the closest a boundary row's two most probable classes may be: far above any gate difference,
#                   so its label is the framework's, yet where a float32 logit's rounding moves the probabilities most
TIE_CLOSE = 0.05  # a pair whose point is this close is bisected no further: its probabilities move nearly as much


def inside_rows(lo: np.ndarray, hi: np.ndarray, under: float, rng: np.random.Generator) -> np.ndarray:
    """Rows inside a rung of [lo, hi]: each feature, of random sign, between `under` (a fraction of the rung's
    reach: the rung under's) and the whole reach from the rung's centre; log-uniformly in half the rows, so each
    decade has its rows, uniformly in the others, where the features are large together (the largest logits)."""
    centre, reach = lo / 2 + hi / 2, hi / 2 - lo / 2
    half = (INSIDE_ROWS // 2, len(lo))
    depth = np.vstack([np.exp(rng.uniform(np.log(under), 0.0, half)), rng.uniform(under, 1.0, half)])
    signs = rng.choice([-1.0, 1.0], (INSIDE_ROWS, len(lo)))
    return np.clip(centre + signs * depth * reach, lo, hi)


def boundary_rows(rows: np.ndarray, centre: np.ndarray, names: list[str], probabilities: Probabilities,
                  rng: np.random.Generator) -> np.ndarray:
    """Rows near each named member's class boundaries, as far out as `rows`: each row beside itself with some
    features' signs about `centre` flipped (the others keep their size, so the logits stay as large), where the
    member labels the two differently, bisected towards the boundary between them; of each pair's points, the
    one whose two most probable classes are closest but still TIE_GAP apart. A point the member answers no finite
    probability on is never kept."""
    n, n_features = rows.shape
    found = []
    for name in names:
        a = rows[rng.integers(0, n, 2 * TIE_PAIRS)]
        flips = rng.random(a.shape) < rng.integers(1, n_features + 1, (len(a), 1)) / n_features
        b = np.where(flips, 2 * centre - a, a)
        label_a = probabilities(a, [name])[name].argmax(axis=1)
        differ = np.flatnonzero(label_a != probabilities(b, [name])[name].argmax(axis=1))[:TIE_PAIRS]
        a, b, label_a = a[differ], b[differ], label_a[differ]
        best, best_gap = np.full_like(a, np.nan), np.full(len(a), np.inf)
        for _ in range(TIE_STEPS):
            going = np.flatnonzero(best_gap >= TIE_CLOSE)  # a pair once this close is done
            if not len(going):
                break
            mid = a[going] / 2 + b[going] / 2
            p = probabilities(mid, [name])[name]
            top = np.sort(p, axis=1)
            gap = top[:, -1] - top[:, -2]
            closer = np.isfinite(p).all(axis=1) & (gap >= TIE_GAP) & (gap < best_gap[going])
            best[going[closer]], best_gap[going[closer]] = mid[closer], gap[closer]
            same = p.argmax(axis=1) == label_a[going]
            a[going[same]], b[going[~same]] = mid[same], mid[~same]
        found.append(best[np.isfinite(best_gap)])
    return np.vstack([np.empty((0, n_features)), *found])


def _band(lo: np.ndarray, hi: np.ndarray, wide_lo: np.ndarray, wide_hi: np.ndarray, names: list[str],
          probabilities: Probabilities | None, rng: np.random.Generator) -> np.ndarray:
    """The rows of the band that recorded rows widen a domain by, past its last rung: served too, so proven too
    (rows inside it and on the members' class boundaries there join the gate's; where the export differs there,
    the gate fails the build: the recorded rows asked for the band)."""
    reach = np.where(wide_hi > wide_lo, (hi - lo) / np.where(wide_hi > wide_lo, wide_hi - wide_lo, 1.0), 1.0)
    rows = inside_rows(wide_lo, wide_hi, float(np.clip(reach.min(), 1e-12, 1.0)), rng)
    if probabilities is None:
        return rows
    return np.vstack([rows, boundary_rows(rows, wide_lo / 2 + wide_hi / 2, names, probabilities, rng)])


# (raw rows, the frameworks' probabilities on them) -> the worst difference past the gate's tolerance between the
# exported build's probabilities and those, None where there is none (`convert.build.domain_of`: the gate's checks).
Differs = Callable[[np.ndarray, dict[str, np.ndarray]], float | None]


@dataclass(frozen=True)
class Domain:
    lo: np.ndarray                  # float64 [F], finite
    hi: np.ndarray                  # float64 [F], finite, >= lo
    nan: np.ndarray                 # bool [F]: NaN taken
    nan_refused_by: list[str]       # the members that define no missing value
    sds: float | None = None        # the rung the members that compute are proven to (None: trees only)
    ladder: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # the rungs' [lo, hi] inside, whose edges the gate runs
    inside: np.ndarray | None = None  # the rows inside the rungs the search ran (`input_domain`), which the gate runs
    stopped: tuple[float, float] | None = None  # (rung, worst difference): the rung not taken for the export's answers
    widened: bool = False  # recorded rows widen it past the rungs, by a band whose rows join the gate's (`_band`)

    def record(self) -> DomainRecord:
        return DomainRecord([float(v) for v in self.lo], [float(v) for v in self.hi],
                            [bool(v) for v in self.nan], list(self.nan_refused_by))

    @classmethod
    def from_record(cls, record: DomainRecord) -> Domain:
        """A manifest's domain, for `verify` to prove that very range again."""
        return cls(np.asarray(record.lo, np.float64), np.asarray(record.hi, np.float64),
                   np.asarray(record.nan, bool), list(record.nan_refused_by))

    def edges(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The gate's rows on the domain's edges: each rung's, and the domain's own; then the rows inside the
        rungs that the search proved them on."""
        rungs = [*self.ladder, (self.lo, self.hi)]
        inside = [] if self.inside is None else [self.inside]
        return np.vstack([*(edge_rows(base, lo, hi, rng) for lo, hi in rungs), *inside])


def _bounds(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int,
            sds: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.full(n_features, -np.inf), np.full(n_features, np.inf)
    for member in members:
        scaler = scalers.get(member.source.scaler) if member.source.scaler is not None else None
        mean, scale = moments(scaler, n_features)
        limit = (TREE_LIMIT64 if input_dtype(member) == "float64" else TREE_LIMIT) if only_compares(member) else sds
        with np.errstate(over="ignore"):  # a float64 tree's reach past float64's largest: clipped below
            reach = limit * scale
            lo, hi = np.maximum(lo, mean - reach), np.minimum(hi, mean + reach)
    # A scale near float64's largest would put an edge at infinity: the domain is finite, whatever the scaler.
    lo, hi = np.maximum(lo, -FLOAT64_MAX), np.minimum(hi, FLOAT64_MAX)
    empty = np.flatnonzero(~(lo <= hi))
    if len(empty):
        raise MetadataError(f"feature {int(empty[0])}: the members' scalers leave no value every member was trained "
                            f"near ({lo[empty[0]]:.6g} to {hi[empty[0]]:.6g} is empty); check that each member names "
                            f"the scaler it was trained behind.")
    return lo, hi


def input_domain(members: list[LoadedMember], scalers: dict[Path, Scaler], n_features: int,
                 probabilities: Probabilities | None = None, recorded: np.ndarray | None = None,
                 seed: int = 0, differs: Differs | None = None, locate: Probabilities | None = None) -> Domain:
    """The domain of these members: the widest rung of RUNGS at which, and at every rung under which, every
    member's own framework answers finitely (`probabilities`; without it, the first rung) and the exported build
    answers as they do (`differs`), on the rung's rows: its edge rows, rows inside it (`inside_rows`) and rows on
    the members' class boundaries (`boundary_rows`); widened to hold the recorded rows. The first rung is taken
    whatever: its rows join the gate's, which fails the build there. The class boundaries are looked for with
    `locate` where given (the members' exports: the same boundaries, to within the rounding looked for, in a
    fraction of the frameworks' time), else with `probabilities`."""
    rng, inner = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    computing = [m for m in members if not only_compares(m)]
    names = [m.source.name for m in computing]
    ladder: list[tuple[np.ndarray, np.ndarray]] = []
    inside: list[np.ndarray] = []
    sds: float | None = None
    stopped: tuple[float, float] | None = None
    rungs = RUNGS + RUNGS64 if all(input_dtype(m) == "float64" for m in computing) else RUNGS
    under = 1.0  # standard deviations: the first rung's rows lie between 1 and 20
    for rung in rungs if computing else (RUNGS[0],):
        lo, hi = _bounds(members, scalers, n_features, rung)
        rows = inside_rows(lo, hi, under / rung, inner) if computing else np.empty((0, n_features))
        try:
            if probabilities is not None and computing:
                rows = np.vstack([rows, boundary_rows(rows, lo / 2 + hi / 2, names, locate or probabilities, inner)])
            if ladder and probabilities is not None:
                centre = lo / 2 + hi / 2
                tried = np.vstack([edge_rows(centre[None, :], lo, hi, rng), rows])
                answered = probabilities(tried)
                if not all(np.isfinite(p).all() for p in answered.values()):
                    break
                worst = None if differs is None else differs(tried, answered)
                if worst is not None:
                    stopped = (rung, worst)
                    break
        except ConvertError:  # a framework that refuses such values (FrameworkError): the rung is not taken
            if ladder:
                break  # the first rung is taken whatever: the gate reports the refusal on its rows
        ladder.append((lo, hi))
        inside.append(rows)
        sds, under = (rung if computing else None), rung
        if probabilities is None:
            break
    lo, hi = ladder[-1]
    widened = False
    if recorded is not None and len(recorded):
        wide_lo, wide_hi = np.minimum(lo, np.nanmin(recorded, axis=0)), np.maximum(hi, np.nanmax(recorded, axis=0))
        widened = bool(computing) and bool(((wide_lo < lo) | (wide_hi > hi)).any())
        if widened:
            inside.append(_band(lo, hi, wide_lo, wide_hi, names, locate or probabilities, inner))
        lo, hi = wide_lo, wide_hi
    refused = [m.source.name for m in members if not takes_nan(m)]
    proven = np.vstack(inside) if computing else None
    return Domain(lo, hi, np.full(n_features, not refused), refused, sds, tuple(ladder[:-1]), proven, stopped,
                  widened)
