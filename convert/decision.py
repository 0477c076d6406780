"""The decision policy: per-member temperature and a minimum confidence for acting, built into the graph.

`ensemble.json` may carry `"decision": {"temperature": {NAME: t}, "min_confidence": {CLASS: m, ...},
"fallback": CLASS}`, for any class set of K >= 2.

- Temperature t divides a member's logits: p' = softmax(log p / t). For a torch member log p is its logits
  less a constant, so this is softmax(logits / t) exactly as DESIGN.md states it; for a tree member it
  divides the boosting margin the same way, so every kind can be calibrated. t > 1 softens an
  over-confident member.
- `fallback` names the class a refused action turns into: HOLD by default when the class set has one,
  otherwise required as soon as `min_confidence` is used.
- A minimum on any other class: that class, when most probable but under its minimum, becomes the fallback.
- A minimum on the fallback itself works the other way ("require > 60% for HOLD instead of argmax"): the
  fallback, when most probable but under its minimum, becomes the most probable other class, which must
  then meet its own minimum, if it has one, or the label stays the fallback.
- `label` follows the policy, `confidence` is the chosen class's probability, `probabilities` stay the
  ensemble's. Probabilities and minimums are compared in float32, as the graph compares them.

This module is the numpy reference the parity gate holds the graph to, and the temperature fit behind
`convert --calibrate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from runtime.contract import TEMPERATURE_LIMITS  # what ensemble.json may set; the runtime holds it too

from .errors import MetadataError

DEFAULT_FALLBACK = "HOLD"   # the class a refused action turns into, when the class set has it
TEMPERATURE_RANGE = (0.05, 20.0)   # what --calibrate fits within
ECE_BINS = 10


@dataclass(frozen=True)
class Decision:
    temperature: dict[str, float] = field(default_factory=dict)     # member name -> t; absent means 1
    min_confidence: dict[str, float] = field(default_factory=dict)  # class name -> minimum probability
    calibration: dict[str, Any] | None = None                       # how the temperatures were fitted, if so
    fallback: str | None = DEFAULT_FALLBACK                         # None only for a class set without HOLD

    @property
    def active(self) -> bool:
        return bool(self.min_confidence) or any(t != 1.0 for t in self.temperature.values())

    def record(self) -> dict[str, Any]:
        """What the manifest keeps."""
        return {"temperature": dict(sorted(self.temperature.items())), "min_confidence": dict(self.min_confidence),
                "fallback": self.fallback, "calibration": self.calibration}

    def thresholds(self, classes: list[str]) -> np.ndarray:
        """Each class's minimum to act on it (the fallback's own minimum is `fallback_minimum`)."""
        return np.array([0.0 if c == self.fallback else self.min_confidence.get(c, 0.0) for c in classes],
                        dtype=np.float32)

    def fallback_minimum(self) -> float:
        return self.min_confidence.get(self.fallback, 0.0) if self.fallback is not None else 0.0

    def calibrated(self, member: str, probs: np.ndarray) -> np.ndarray:
        return with_temperature(probs, self.temperature.get(member, 1.0))

    def choose(self, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(label, confidence) per row: the argmax, unless the policy above says otherwise."""
        rows = np.arange(len(probs))
        label = probs.argmax(axis=1)
        if self.min_confidence:
            p32 = probs.astype(np.float32)
            fallback = classes.index(cast(str, self.fallback))  # parse_decision guarantees a fallback here
            others = np.where(np.arange(len(classes)) == fallback, -np.inf, probs).argmax(axis=1)
            unsure_hold = (label == fallback) & (p32[rows, label] < np.float32(self.fallback_minimum()))
            label = np.where(unsure_hold, others, label)
            unsure_act = (label != fallback) & (p32[rows, label] < self.thresholds(classes)[label])
            label = np.where(unsure_act, fallback, label)
        return label, probs[rows, label]


def with_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    if t == 1.0:
        return probs
    with np.errstate(divide="ignore"):  # log 0 = -inf is right here: that class stays at probability 0
        z = np.log(probs) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _positive(value: Any, where: str, upper: float | None = None, lower: float = 0.0) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer of hundreds of digits
        number = math.nan
    if not math.isfinite(number) or number <= 0 or number < lower or (upper is not None and number > upper):
        bound = f", from {lower} to {upper}" if lower > 0 else f" and at most {upper}" if upper is not None else ""
        raise MetadataError(f"{where} must be a number above 0{bound}, got {str(value)[:40]}.")
    return number


def parse_decision(obj: Any, members: list[str], classes: list[str], where: str) -> Decision:
    if not isinstance(obj, dict) or set(obj) - {"temperature", "min_confidence", "fallback"}:
        raise MetadataError(f"{where}: 'decision' takes only 'temperature', 'min_confidence' and 'fallback', got "
                            f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}.")
    temperature, minimum = obj.get("temperature", {}), obj.get("min_confidence", {})
    if not isinstance(temperature, dict) or not isinstance(minimum, dict):
        raise MetadataError(f"{where}: decision.temperature and decision.min_confidence must be objects.")
    for name in temperature:
        if name not in members:
            raise MetadataError(f"{where}: decision.temperature names '{name}', which is not a member "
                                f"({', '.join(members)}).")
    fallback = obj.get("fallback", DEFAULT_FALLBACK if DEFAULT_FALLBACK in classes else None)
    if fallback is not None and fallback not in classes:
        raise MetadataError(f"{where}: decision.fallback is {fallback!r}; it must name one of the classes "
                            f"{classes}.")
    if minimum and fallback is None:
        raise MetadataError(f"{where}: decision.min_confidence needs decision.fallback, the class an unsure "
                            f"action turns into: the classes {classes} have no {DEFAULT_FALLBACK}.")
    for name in minimum:
        if name not in classes:
            raise MetadataError(f"{where}: decision.min_confidence names '{name}', which is not a class "
                                f"({', '.join(classes)}).")
    return Decision({n: _positive(t, f"{where}: decision.temperature.{n}", TEMPERATURE_LIMITS[1], TEMPERATURE_LIMITS[0])
                     for n, t in temperature.items()},
                    {c: _positive(v, f"{where}: decision.min_confidence.{c}", 1.0) for c, v in minimum.items()},
                    fallback=fallback)


# ------------------------------------------------------------------------------------------ calibration

def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - mean confidence| per confidence bin, weighted by the bin's share of rows."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            error += rows.mean() * abs(float((predicted[rows] == labels[rows]).mean()) - float(confidence[rows].mean()))
    return float(error)


def fit_temperatures(member_probs: dict[str, np.ndarray], combine: Any, labels: np.ndarray) -> dict[str, float]:
    """Each member's t in TEMPERATURE_RANGE, fitted jointly to minimise the negative log-likelihood of the
    *ensemble* probabilities (`combine` of the tempered members). Fitting each member alone makes each one
    calibrated, but their weighted average then comes out under-confident: the service acts on the ensemble."""
    from scipy.optimize import minimize

    names = list(member_probs)

    def loss(log_t: np.ndarray) -> float:
        tempered = {n: with_temperature(member_probs[n], float(np.exp(v))) for n, v in zip(names, log_t, strict=True)}
        return negative_log_likelihood(combine(tempered), labels)

    bounds = [tuple(np.log(TEMPERATURE_RANGE))] * len(names)
    result = minimize(loss, np.zeros(len(names)), method="L-BFGS-B", bounds=bounds)
    # Rounded: the manifest and the graph carry a readable value; the parity gate checks the rounded one.
    return {n: float(np.round(np.exp(v), 4)) for n, v in zip(names, result.x, strict=True)}
