"""Diversity of a synthetic cohort against the real data: a mode-collapse check.

FID / KID and the memorization audit can all look fine for a collapsed generator: a cohort of one
image repeated (or one checkerboard texture with a little noise) is no near-copy of any training
image, so the audit flags 0 %, and a small in-domain feature space may still give a modest FID. The
symptom is that the cohort's images are much more alike than real images are.

Measure: the mean distance over all pairs ``i < j`` of images of one set,

- pixel space: root-mean-square pixel difference, ``‖x_i - x_j‖₂ / √(H·W)`` on the [0, 1] images
  (as ``scipy.spatial.distance.pdist(..., "euclidean") / √(H·W)``);
- feature space: Euclidean distance between the extractor's features (the same features as FID).

The mean pairwise distance estimates ``E‖X - X'‖`` for two independent draws, whatever the number
of images, so a cohort and the real data compare directly at different counts. Sets larger than
``max_items`` are subsampled (seeded) to bound the ``O(N²)`` cost; the counts used are recorded.

Ratio: ``ratio = cohort mean / real mean`` in each space. The real data's own ratio between two
disjoint halves (by patient where known) is reported beside it as the baseline (about 1).

The mean pairwise distance of a cohort collapsed onto ``k`` equally likely modes is about
``(1 - 1/k)`` × the distance between the modes, so it sees collapse onto one mode (ratio → 0) but
hardly onto a few. A second measure covers that, in the spirit of the birthday-paradox test (Arora
& Zhang 2018): the **duplicate fraction**, the share of synthetic images whose nearest *other*
synthetic image is closer than ``DUPLICATE_RATIO`` (0.5) × the 1 % quantile of the real images'
nearest-neighbour distances among themselves (the memorization audit's rule, turned on the cohort).
Nearest-neighbour distances shrink as a set grows, so both sets are subsampled (seeded) to the same
count for it.

**Mode-collapse warning** when, in pixel or feature space,

- ``ratio < COLLAPSE_RATIO = 0.5``: a typical pair of synthetic images is less than half as
  different as a typical pair of real images; or
- ``duplicate_fraction > DUPLICATE_WARN = 0.1``: more than a tenth of the cohort has a near-twin
  in the cohort closer than almost any two real images are.

Both thresholds are deliberately loose alarms, not tests of equality: a healthy generator scores a
ratio near 1 (somewhat below is common: GANs under-cover the tails) and a duplicate fraction near 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput

COLLAPSE_RATIO = 0.5
DUPLICATE_RATIO = 0.5
DUPLICATE_QUANTILE = 0.01
DUPLICATE_WARN = 0.1
MAX_ITEMS = 1000
PIXEL_DISTANCE = "pixel: RMS difference of [0,1] images, ||x_i - x_j|| / sqrt(H*W)"
FEATURE_DISTANCE = "feature: Euclidean distance between extractor features"


def mean_pairwise_distance(x: np.ndarray, *, max_items: int = MAX_ITEMS, seed: int = 0) -> tuple[float, int]:
    """Mean Euclidean distance over all pairs ``i < j`` of the rows of ``x`` (N, D): ``(mean, n used)``.

    Rows beyond ``max_items`` are dropped by a seeded subsample. Distances come from the Gram matrix
    in float64 (``|a|² + |b|² - 2 a·b``, clipped at 0), in row blocks to bound memory.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise InvalidInput(f"mean pairwise distance needs an (N, D) array with N >= 2, got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise InvalidInput("mean pairwise distance: the input contains NaN or infinite values.")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 2:
        raise InvalidInput(f"max_items must be an integer >= 2, got {max_items!r}.")
    if len(a) > max_items:
        a = a[np.sort(np.random.default_rng(seed).choice(len(a), max_items, replace=False))]
    n = len(a)
    a = a - a.mean(axis=0)  # distances are shift-invariant; centring keeps the Gram route accurate
    sq = np.einsum("ij,ij->i", a, a)
    total = 0.0
    block = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n, block):
        rows = a[start : start + block]
        d2 = sq[start : start + block, None] + sq[None, :] - 2.0 * (rows @ a.T)
        d = np.sqrt(np.clip(d2, 0.0, None))
        upper = np.arange(n)[None, :] > np.arange(start, start + len(rows))[:, None]  # pairs j > i
        total += float(d[upper].sum())
    return total / (n * (n - 1) / 2), n


def nearest_neighbour_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``x`` (N >= 2, D) to its nearest other row, float64."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise InvalidInput(f"nearest-neighbour distances need an (N, D) array with N >= 2, got shape {a.shape}.")
    a = a - a.mean(axis=0)
    sq = np.einsum("ij,ij->i", a, a)
    out = np.empty(len(a))
    block = max(1, 4_000_000 // len(a))
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        d2 = sq[start : start + block, None] + sq[None, :] - 2.0 * (rows @ a.T)
        d2[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
        out[start : start + len(rows)] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def _subsample(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    return x if len(x) <= m else x[np.sort(np.random.default_rng(seed).choice(len(x), m, replace=False))]


def _space(fake: np.ndarray, real: np.ndarray, halves: tuple[np.ndarray, np.ndarray] | None, scale: float, what: str, max_items: int, seed: int) -> dict[str, Any]:
    d_fake, n_fake = mean_pairwise_distance(fake, max_items=max_items, seed=seed)
    d_real, n_real = mean_pairwise_distance(real, max_items=max_items, seed=seed)
    d_fake, d_real = d_fake / scale, d_real / scale
    m = min(len(fake), len(real), max_items)
    nn_fake = nearest_neighbour_distances(_subsample(fake, m, seed)) / scale
    nn_real = nearest_neighbour_distances(_subsample(real, m, seed)) / scale
    dup_threshold = DUPLICATE_RATIO * float(np.quantile(nn_real, DUPLICATE_QUANTILE))
    out: dict[str, Any] = {
        "distance": what,
        "synthetic": d_fake,
        "real": d_real,
        "ratio": d_fake / d_real if d_real > 0 else float("nan"),
        "n_synthetic": n_fake,
        "n_real": n_real,
        "real_baseline_ratio": None,
        "duplicate_fraction": float(np.mean(nn_fake <= dup_threshold)),
        "duplicate_threshold": dup_threshold,
        "median_nn_synthetic": float(np.median(nn_fake)),
        "median_nn_real": float(np.median(nn_real)),
        "n_nearest_neighbour": int(m),
    }
    if halves is not None:
        d_a, _ = mean_pairwise_distance(real[halves[0]], max_items=max_items, seed=seed)
        d_b, _ = mean_pairwise_distance(real[halves[1]], max_items=max_items, seed=seed)
        out["real_baseline_ratio"] = d_a / d_b if d_b > 0 else float("nan")
    return out


def diversity_check(
    synthetic: np.ndarray,
    real: np.ndarray,
    *,
    features_synth: np.ndarray | None = None,
    features_real: np.ndarray | None = None,
    halves: tuple[np.ndarray, np.ndarray] | None = None,
    feature_extractor: str | None = None,
    threshold: float = COLLAPSE_RATIO,
    duplicate_warn: float = DUPLICATE_WARN,
    max_items: int = MAX_ITEMS,
    seed: int = 0,
) -> dict[str, Any]:
    """Within-cohort versus within-real diversity, and whether the cohort looks collapsed.

    Args:
        synthetic, real: images (N, 1, H, W) or (N, H, W) of one size, at least 2 each.
        features_synth, features_real: optional extractor features of the same images.
        halves: optional two disjoint index arrays into ``real`` (e.g. from
            :func:`medsynth.metrics.fidelity.split_halves`) for the real-versus-real baseline ratio.
        feature_extractor: the extractor's name, recorded with the feature-space numbers.
        threshold: the collapse ratio (default ``COLLAPSE_RATIO``; see the module docs).
        duplicate_warn: the duplicate fraction above which to warn (default ``DUPLICATE_WARN``).

    Returns:
        ``{"pixel": {...}, "feature": {...} | None, "threshold", "duplicate_warn", "mode_collapse",
        "warning", "rule"}`` where each space holds ``distance`` (its definition), ``synthetic``
        and ``real`` mean pairwise distances, their ``ratio``, ``n_synthetic`` / ``n_real`` used,
        ``real_baseline_ratio`` (half A over half B, or None), ``duplicate_fraction`` with its
        ``duplicate_threshold``, the median nearest-neighbour distances ``median_nn_synthetic`` /
        ``median_nn_real`` and the count ``n_nearest_neighbour`` they use; ``warning`` is a sentence
        or None.
    """
    syn, rl = _flat(synthetic, "synthetic"), _flat(real, "real")
    if syn.shape[1] != rl.shape[1]:
        raise InvalidInput(f"synthetic and real images differ in size ({syn.shape[1]} vs {rl.shape[1]} pixels).")
    if not threshold > 0:
        raise InvalidInput(f"threshold must be positive, got {threshold}.")
    out: dict[str, Any] = {
        "pixel": _space(syn, rl, halves, float(np.sqrt(syn.shape[1])), PIXEL_DISTANCE, max_items, seed),
        "feature": None,
    }
    if features_synth is not None or features_real is not None:
        if features_synth is None or features_real is None:
            raise InvalidInput("give both features_synth and features_real, or neither.")
        fs, fr = np.asarray(features_synth, np.float64), np.asarray(features_real, np.float64)
        if fs.shape[0] != syn.shape[0] or fr.shape[0] != rl.shape[0] or fs.ndim != 2 or fr.shape[1:] != fs.shape[1:]:
            raise InvalidInput(f"features must be (N, D) rows matching their images, got {fs.shape} and {fr.shape}.")
        out["feature"] = _space(fs, fr, halves, 1.0, FEATURE_DISTANCE, max_items, seed) | {"extractor": feature_extractor}
    reasons = []
    for name in ("pixel", "feature"):
        space = out[name]
        if space is None:
            continue
        if space["ratio"] < threshold:
            reasons.append(f"{name} ratio {space['ratio']:.3g} < {threshold:g}")
        if space["duplicate_fraction"] > duplicate_warn:
            reasons.append(f"{name} duplicate fraction {space['duplicate_fraction']:.0%} > {duplicate_warn:.0%}")
    out["threshold"] = threshold
    out["duplicate_warn"] = duplicate_warn
    out["mode_collapse"] = bool(reasons)
    out["rule"] = (
        f"warn if, in pixel or feature space, synthetic/real mean pairwise distance < {threshold:g} or more than "
        f"{duplicate_warn:.0%} of the cohort has a near-twin in the cohort (nearest-neighbour distance <= "
        f"{DUPLICATE_RATIO:g} x the {DUPLICATE_QUANTILE:g} quantile of real nearest-neighbour distances)"
    )
    out["warning"] = (
        "possible mode collapse: the cohort is far less diverse than the real data (" + "; ".join(reasons)
        + "); FID/KID and the memorization audit do not catch this."
        if reasons else None
    )
    return out


def _flat(images: Any, name: str) -> np.ndarray:
    a = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] < 2:
        raise InvalidInput(f"{name} must be (N, 1, H, W) or (N, H, W) images with N >= 2, got shape {a.shape}.")
    return a.reshape(a.shape[0], -1)


