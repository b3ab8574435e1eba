"""Fidelity and coverage on k-nearest-neighbour manifolds of extractor features.

- Precision and recall (Kynkäänniemi et al., NeurIPS 2019): each set's manifold is the union of balls
  around its samples, each ball reaching the sample's k-th nearest neighbour in the same set. Precision
  is the fraction of synthetic samples inside the real manifold (are they realistic?); recall the
  fraction of real samples inside the synthetic manifold (is the real variety covered?).
- Density and coverage (Naeem et al., ICML 2020), which an outlier in either set moves less: density
  counts how many real balls hold each synthetic sample, divided by k (about 1 when the two sets come
  from one distribution; above 1 when synthetic samples crowd where real ones are dense); coverage is
  the fraction of real balls that hold at least one synthetic sample.

A sample lies inside a ball when its distance to the centre is at most the radius (the papers' closed
balls). The pure functions take feature arrays ``(n, d)``; ``ManifoldMetric`` accumulates batches
(MONAI's style) and ``aggregate()`` computes all four. Distances are Euclidean, computed in blocks so
that 10,000 × 10,000 sets stay within a few hundred MB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput

BLOCK = 2048


def _features(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInput(f"{name} should be a (samples, features) array with at least one sample, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise InvalidInput(f"{name} holds NaN or infinite values.")
    return x


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))``, clipped at 0 against rounding."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: Any, k: int) -> np.ndarray:
    """Distance from each sample to its ``k``-th nearest other sample of the same set."""
    x = _features(x, "features")
    if not 1 <= k < len(x):
        raise InvalidInput(f"k should be between 1 and the number of samples - 1 ({len(x) - 1}), got {k}.")
    radii = np.empty(len(x))
    for start in range(0, len(x), BLOCK):
        d = _distances(x[start:start + BLOCK], x)
        d[np.arange(len(d)), start + np.arange(len(d))] = np.inf  # not its own neighbour
        radii[start:start + BLOCK] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _ball_counts(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each point, how many of the balls (centres, radii) hold it."""
    counts = np.zeros(len(points), dtype=np.int64)
    for start in range(0, len(points), BLOCK):
        d = _distances(points[start:start + BLOCK], centres)
        counts[start:start + BLOCK] = (d <= radii[None, :]).sum(1)
    return counts


def _covered(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each ball, whether it holds at least one of the points."""
    hit = np.zeros(len(centres), dtype=bool)
    for start in range(0, len(points), BLOCK):
        d = _distances(points[start:start + BLOCK], centres)
        hit |= (d <= radii[None, :]).any(0)
    return hit


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with ``k``-NN balls."""
    real, fake = _features(real, "real features"), _features(fake, "synthetic features")
    if real.shape[1] != fake.shape[1]:
        raise InvalidInput(f"real and synthetic features differ in width: {real.shape[1]} and {fake.shape[1]}.")
    precision = float((_ball_counts(real, knn_radii(real, k), fake) > 0).mean())
    recall = float((_ball_counts(fake, knn_radii(fake, k), real) > 0).mean())
    return precision, recall


def density_coverage(real: Any, fake: Any, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) with ``k``-NN balls around the real samples."""
    real, fake = _features(real, "real features"), _features(fake, "synthetic features")
    if real.shape[1] != fake.shape[1]:
        raise InvalidInput(f"real and synthetic features differ in width: {real.shape[1]} and {fake.shape[1]}.")
    radii = knn_radii(real, k)
    density = float(_ball_counts(real, radii, fake).sum() / (k * len(fake)))
    coverage = float(_covered(real, radii, fake).mean())
    return density, coverage


class ManifoldMetric:
    """Accumulates real and synthetic feature batches; ``aggregate()`` gives precision, recall (with
    ``k_pr``), density and coverage (with ``k_dc``), each named with its extractor and sample counts."""

    def __init__(self, extractor: str, *, k_pr: int = 3, k_dc: int = 5) -> None:
        self.extractor, self.k_pr, self.k_dc = extractor, k_pr, k_dc
        self.reset()

    def reset(self) -> None:
        self._real: list[np.ndarray] = []
        self._fake: list[np.ndarray] = []

    def update(self, *, real: Any = None, fake: Any = None) -> None:
        if real is not None:
            self._real.append(_features(real, "real features"))
        if fake is not None:
            self._fake.append(_features(fake, "synthetic features"))

    def aggregate(self) -> list[dict[str, Any]]:
        if not self._real or not self._fake:
            raise InvalidInput("ManifoldMetric needs real and synthetic features before aggregate().")
        real, fake = np.concatenate(self._real), np.concatenate(self._fake)
        precision, recall = precision_recall(real, fake, self.k_pr)
        density, coverage = density_coverage(real, fake, self.k_dc)
        common = {"extractor": self.extractor, "n_real": len(real), "n_fake": len(fake)}
        return [
            {"metric": "precision", "value": precision, "k": self.k_pr, **common},
            {"metric": "recall", "value": recall, "k": self.k_pr, **common},
            {"metric": "density", "value": density, "k": self.k_dc, **common},
            {"metric": "coverage", "value": coverage, "k": self.k_dc, **common},
        ]
