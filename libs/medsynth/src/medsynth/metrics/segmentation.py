"""Segmentation quality per case (Dice, HD95) and bootstrap summaries over cases.

Conventions (the same in every function here):

- Label maps are integer arrays, 0 = background, classes 1..C-1 are scored.
- Dice of a class that is absent from both prediction and target is NaN (not 1.0): the case says
  nothing about that class, and means over cases ignore it (``summarise`` drops NaN).
- HD95 is NaN when either mask is empty. Both-empty carries no information; for one-empty the
  distance is undefined. MONAI agrees in effect: its directed distances to an empty surface are
  all inf, and ``torch.quantile`` of all-inf values is NaN (with ``percentile=None`` it returns
  inf). NaN keeps means finite but drops exactly the failed cases, so read HD95 next to Dice,
  which scores a missed or hallucinated structure as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medsynth.core.errors import InvalidInput


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice ``2|P∩T| / (|P|+|T|)`` of each foreground class 1..C-1 for one case.

    Args:
        pred, target: integer label maps of one shape (any number of axes).
        num_classes: C, background included; labels must lie in [0, C).

    Returns:
        (C-1,) float64; NaN for a class absent from both ``pred`` and ``target``.
    """
    p, t = _check_label_pair(pred, target, num_classes)
    joint = np.bincount(p.ravel() * num_classes + t.ravel(), minlength=num_classes**2)
    confusion = joint.reshape(num_classes, num_classes)  # [pred label, target label]
    inter = np.diag(confusion)[1:].astype(np.float64)
    sizes = (confusion.sum(axis=1) + confusion.sum(axis=0))[1:].astype(np.float64)
    out = np.full(num_classes - 1, np.nan)
    present = sizes > 0
    out[present] = 2.0 * inter[present] / sizes[present]
    return out


def hd95(
    pred_mask: np.ndarray,
    target_mask: np.ndarray,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two binary masks, in the
    unit of ``spacing`` (mm for physical voxel sizes; for a 2D view, see ``segmentation.spacing``).

    Defined as MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)``:

    - surface voxels: ``mask & ~binary_erosion(mask)`` (cross-shaped structuring element, outside
      the array counts as background, so foreground on the array border is surface);
    - directed distances: for each surface voxel of one mask, the Euclidean distance in mm (voxel
      index × spacing) to the nearest surface voxel of the other;
    - result: ``max(P95(pred→target), P95(target→pred))`` with linear-interpolated percentiles
      (``np.percentile`` default = ``torch.quantile`` default). This is the larger of the two
      directed percentiles, not the percentile of the pooled distances (medpy's ``hd95`` pools,
      and gives a value between the two directed ones).

    Args:
        pred_mask, target_mask: binary masks of one shape, 2D or 3D; non-zero is foreground.
        spacing: voxel size per axis in mm, e.g. ``(1.0, 1.0, 2.5)``.
        percentile: in [0, 100]; 100 gives the classic Hausdorff distance.

    Returns:
        The distance in the unit of ``spacing``; NaN if either mask is empty.
    """
    p, t = np.asarray(pred_mask), np.asarray(target_mask)
    if p.shape != t.shape:
        raise InvalidInput(f"pred and target masks must have one shape, got {p.shape} and {t.shape}.")
    if p.ndim not in (2, 3):
        raise InvalidInput(f"masks must be 2D or 3D, got {p.ndim} axes (shape {p.shape}).")
    sp = _check_spacing(spacing, p.ndim)
    if not 0.0 <= percentile <= 100.0:
        raise InvalidInput(f"percentile must lie in [0, 100], got {percentile}.")
    p, t = p.astype(bool), t.astype(bool)
    if not p.any() or not t.any():
        return float("nan")
    surf_p, surf_t = _surface(p), _surface(t)
    # Crop to the surfaces' joint bounding box: every surface voxel, hence every nearest one, is inside.
    box = ndimage.find_objects((surf_p | surf_t).astype(np.int8))[0]
    surf_p, surf_t = surf_p[box], surf_t[box]
    d_pt = ndimage.distance_transform_edt(~surf_t, sampling=sp)[surf_p]
    d_tp = ndimage.distance_transform_edt(~surf_p, sampling=sp)[surf_t]
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def per_case_metrics(
    preds: Sequence[np.ndarray] | np.ndarray,
    targets: Sequence[np.ndarray] | np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | Sequence[Sequence[float]],
) -> list[dict[str, float | int]]:
    """Dice and HD95 of every foreground class for each case.

    Args:
        preds, targets: equally long sequences (or (N, ...) arrays) of integer label maps.
        num_classes: C, background included.
        spacing: one voxel size per axis for all cases, or one such sequence per case.

    Returns:
        One dict per case: ``{"case": i, "dice_1": ..., "hd95_1": ..., ..., "dice_mean": ...}``
        where ``dice_mean`` is the mean over the case's non-NaN class Dice (NaN if none).
    """
    if len(preds) != len(targets):
        raise InvalidInput(f"got {len(preds)} predictions but {len(targets)} targets.")
    per_case = _per_case_spacing(spacing, len(preds))
    rows: list[dict[str, float | int]] = []
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        p, t = _check_label_pair(pred, target, num_classes)
        dice = dice_per_class(p, t, num_classes)
        row: dict[str, float | int] = {"case": i}
        for c in range(1, num_classes):
            row[f"dice_{c}"] = float(dice[c - 1])
            row[f"hd95_{c}"] = hd95(p == c, t == c, per_case[i])
        finite = dice[~np.isnan(dice)]
        row["dice_mean"] = float(finite.mean()) if finite.size else float("nan")
        rows.append(row)
    return rows


def summarise(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, float | int]:
    """Mean over cases with a percentile-bootstrap confidence interval, ignoring NaN.

    Cases are resampled with replacement ``n_boot`` times; the interval is the
    ``(1-ci)/2`` and ``1-(1-ci)/2`` quantiles of the resampled means.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n", "ci_level", "n_boot"}``; ``n`` counts the non-NaN values
        (all NaN → mean and interval NaN, ``n`` 0; one value → a zero-width interval).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if not 0.0 < ci < 1.0:
        raise InvalidInput(f"ci must lie strictly between 0 and 1, got {ci}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise InvalidInput(f"n_boot must be a positive integer, got {n_boot!r}.")
    x = x[~np.isnan(x)]
    out: dict[str, float | int] = {"n": int(x.size), "ci_level": ci, "n_boot": n_boot}
    if x.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), **out}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // x.size)  # bound memory at ~16 MB of indices per chunk
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0])
    return {"mean": float(x.mean()), "ci_low": float(lo), "ci_high": float(hi), **out}


def _check_label_pair(pred: Any, target: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InvalidInput(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise InvalidInput(f"pred and target must have one shape, got {p.shape} and {t.shape}.")
    for name, a in (("pred", p), ("target", t)):
        if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
            raise InvalidInput(f"{name} must be an integer label map, got dtype {a.dtype}.")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = np.unique(a[(a < 0) | (a >= num_classes)])[:5].tolist()
            raise InvalidInput(f"{name} has labels {bad} outside [0, {num_classes}).")
    return p.astype(np.int64), t.astype(np.int64)


def _check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise InvalidInput(f"spacing must be a sequence of {ndim} numbers, got {spacing!r}.") from exc
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InvalidInput(f"spacing must be {ndim} positive numbers (mm per axis), got {spacing!r}.")
    return sp


def _per_case_spacing(spacing: Any, n: int) -> list[Any]:
    items = list(spacing)
    if items and all(isinstance(s, (Sequence, np.ndarray)) for s in items):
        if len(items) != n:
            raise InvalidInput(f"got {len(items)} per-case spacings for {n} cases.")
        return items
    return [spacing] * n
