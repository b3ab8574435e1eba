"""A 2D picture of real and synthetic features: exact t-SNE (van der Maaten & Hinton, JMLR 2008).

Exact (every pair, O(n²) memory), for the few hundred points a report shows: each point's Gaussian
neighbourhood is set by binary search to the perplexity, the joint P is symmetrised, and the 2D
points follow the gradient of KL(P || Q) with Q a Student-t kernel, with early exaggeration (×12 for
the first 250 iterations) and momentum (0.5, then 0.8). Seeded: the same features give the same map.
Distances in the map mean little beyond "near"; clusters of one colour only say that the generator
misses or invents part of the data.
"""

from __future__ import annotations

import numpy as np

from medsynth.core.errors import InvalidInput


def _conditional_p(d2: np.ndarray, perplexity: float, tol: float = 1e-5, steps: int = 60) -> np.ndarray:
    n = len(d2)
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        row = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(steps):
            w = np.exp(-(row - row.min()) * beta)
            total = w.sum()
            entropy = np.log(total) + beta * np.sum((row - row.min()) * w) / total
            if abs(entropy - target) < tol:
                break
            if entropy > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / total
    return p


def kl_divergence(p: np.ndarray, y: np.ndarray) -> float:
    num = 1.0 / (1.0 + ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    mask = p > 0
    return float((p[mask] * np.log(p[mask] / q[mask])).sum())


def joint_p(features: np.ndarray, perplexity: float) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    d2 = np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T, 0.0)
    p = _conditional_p(d2 / max(np.median(d2), 1e-12), perplexity)
    return np.maximum((p + p.T) / (2 * len(x)), 1e-12)


def tsne(features: np.ndarray, *, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> np.ndarray:
    """2D coordinates of ``features`` (n, d), n >= 5."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 5 or not np.isfinite(x).all():
        raise InvalidInput(f"t-SNE needs a finite (n >= 5, d) feature array, got shape {x.shape}.")
    perplexity = min(perplexity, (len(x) - 1) / 3)
    p = joint_p(x, perplexity)
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, (len(x), 2))
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    rate = max(len(x) / 12.0, 50.0)
    for it in range(iterations):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        diff = y[:, None, :] - y[None, :, :]
        num = 1.0 / (1.0 + (diff ** 2).sum(-1))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        grad = 4.0 * (((exaggeration * p - q) * num)[:, :, None] * diff).sum(1)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - rate * gains * grad
        y = y + velocity
        y -= y.mean(0)
    return y
