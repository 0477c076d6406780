"""Rows a build takes, for tests that are not about the input domain: drawn inside the range its gate proved
(manifest.json's `domain`, docs/numerics.md), near its centre, where a service's rows are. A test that feeds
made-up numbers (0.5 in every feature) to a build with a torch member may fall outside that range in a feature
whose scale is small (a 1-hour return: the demo's domain there is about ±0.4), and is then refused, as it
should be. numpy only: the slim runtime tests use it too."""

from __future__ import annotations

from typing import Any

import numpy as np

SPREAD = 0.02  # of the domain's half-width: 2 standard deviations either side for a 100-deviation domain
UNBOUNDED = 1e30  # a half-width past which a feature has no scale in its domain (trees alone): standard normal


def bounds(build: Any) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] per feature of a build (a `runtime.Ensemble` or its manifest dict), in its feature order."""
    manifest = build if isinstance(build, dict) else build.manifest
    domain = manifest["domain"]
    return np.asarray(domain["lo"], dtype=np.float64), np.asarray(domain["hi"], dtype=np.float64)


def centre(build: Any) -> dict[str, float]:
    """The domain's centre, by feature name: one row every build takes."""
    manifest = build if isinstance(build, dict) else build.manifest
    lo, hi = bounds(manifest)
    return dict(zip(manifest["feature_names"], map(float, lo / 2 + hi / 2), strict=True))


def typical_rows(build: Any, n: int, seed: int = 0, spread: float = SPREAD) -> np.ndarray:
    """n rows [n, F] in the build's feature order: each feature its domain's centre plus normal noise of
    `spread` times the domain's half-width (standard normal in a feature only trees bound), clipped to the
    domain. The formula of runtime.bench.host.domain_rows, kept here: the slim tests run from tests/, where
    `runtime` may name the tests' own folder."""
    lo, hi = bounds(build)
    noise = np.random.default_rng(seed).standard_normal((n, len(lo)))
    return np.clip(np.where(hi / 2 - lo / 2 < UNBOUNDED, lo / 2 + hi / 2 + noise * spread * (hi / 2 - lo / 2),
                            noise), lo, hi)
