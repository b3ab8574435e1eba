"""Memorisation audit: is any synthetic image a near-copy of a training image?

Rule (pixel space; feature space is analogous):

1. Each image is flattened, centred and scaled to unit L2 norm, so the distance between two images
   is ``sqrt(2 - 2 r)`` with ``r`` their Pearson correlation (0 = identical up to brightness and
   contrast, 2 = inverted). A constant image becomes the zero vector, at distance 1 from any other
   image and 0 from another constant one: drop blank slices before auditing.
2. Each synthetic image's nearest training image is searched among the training images and their
   horizontal, vertical and double (180° rotation) flips.
3. The reference is the training set's own nearest-neighbour distances (each training image
   against every *other* training image and their flips): how close two genuinely different real
   images get.
4. A synthetic image is flagged as a near-copy when its distance is at most
   ``threshold = threshold_ratio × quantile(train NN distances, threshold_quantile)``
   (defaults 0.5 × the 1% quantile): at most half as far from a training image as the closest 1% of
   real pairs. This is a distance-ratio test in the spirit of the "memorisation ratio" of
   Carlini et al. 2023 and Meehan et al. 2020, anchored to the data instead of a fixed constant.

With features (e.g. from ``medsynth.metrics.fidelity``), the same rule runs on raw L2 feature
distances without flips (pass features of flipped training images as extra rows if wanted), and an
image is flagged if either space flags it.

This pixel rule finds exact, flipped and lightly noised copies only: a copy shifted by a pixel, turned,
rescaled or re-toned is missed. :func:`cohort_audit` (the evaluation's audit) pairs the search for
copies in disguise of :mod:`medsynth.metrics.copies` over the *whole* training split (images and
masks) with this module's feature-space rule, and says what fraction of the training images each searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsynth.core.errors import InvalidInput

TRANSFORMS = ("identity", "hflip", "vflip", "hvflip")
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))  # of TRANSFORMS, on (N, H, W) or one (1, H, W) image
PIXEL_SPACE = "pixel: per-image zero-mean unit-L2, min over identity/hflip/vflip/hvflip of train"


@dataclass(frozen=True)
class AuditResult:
    """Outcome of ``memorization_audit``; arrays are indexed by synthetic sample (train for ``train_*``).

    ``nn_transform`` indexes ``TRANSFORMS``: the flip of the training image that matched.
    ``feature_*`` fields are None when no features were given.
    """

    nn_index: np.ndarray
    nn_distance: np.ndarray
    nn_transform: np.ndarray
    train_nn_distance: np.ndarray
    threshold: float
    flagged_pixel: np.ndarray
    flagged: np.ndarray
    rule: str
    feature_nn_index: np.ndarray | None = None
    feature_nn_distance: np.ndarray | None = None
    train_feature_nn_distance: np.ndarray | None = None
    feature_threshold: float | None = None
    flagged_feature: np.ndarray | None = None

    @property
    def n_synthetic(self) -> int:
        return int(self.nn_index.shape[0])

    @property
    def n_train(self) -> int:
        return int(self.train_nn_distance.shape[0])

    @property
    def fraction_flagged(self) -> float:
        return float(self.flagged.mean()) if self.flagged.size else 0.0

    def worst_pairs(self, k: int = 10, *, space: str = "pixel") -> list[tuple[int, int, float]]:
        """The ``k`` closest (synthetic index, train index, distance) pairs, closest first."""
        if space == "pixel":
            index, dist = self.nn_index, self.nn_distance
        elif space == "feature" and self.feature_nn_index is not None:
            index, dist = self.feature_nn_index, self.feature_nn_distance
        else:
            raise InvalidInput(f"space must be 'pixel' or, when features were given, 'feature'; got {space!r}.")
        order = np.argsort(dist, kind="stable")[: max(int(k), 0)]
        return [(int(i), int(index[i]), float(dist[i])) for i in order]

    def summary(self) -> dict[str, Any]:
        """The scalar outcome, with what produced it (for storing next to the cohort)."""
        out: dict[str, Any] = {
            "fraction_flagged": self.fraction_flagged,
            "n_flagged": int(self.flagged.sum()),
            "n_synthetic": self.n_synthetic,
            "n_train": self.n_train,
            "threshold": self.threshold,
            "median_nn_distance": float(np.median(self.nn_distance)),
            "median_train_nn_distance": float(np.median(self.train_nn_distance)),
            "space": PIXEL_SPACE,
            "rule": self.rule,
        }
        if self.feature_threshold is not None:
            out["feature_threshold"] = self.feature_threshold
            out["n_flagged_feature"] = int(self.flagged_feature.sum())
        return out


def memorization_audit(
    synthetic: np.ndarray,
    train: np.ndarray,
    *,
    features_synth: np.ndarray | None = None,
    features_train: np.ndarray | None = None,
    threshold_quantile: float = 0.01,
    threshold_ratio: float = 0.5,
    chunk_size: int = 512,
) -> AuditResult:
    """Nearest training neighbour of every synthetic image, and which ones are near-copies.

    Args:
        synthetic, train: images (N, 1, H, W) or (N, H, W) of one H, W; at least 2 training images.
        features_synth, features_train: optional (N, D) / (M, D) features of the same images.
        threshold_quantile: quantile of the train-to-train NN distances anchoring the threshold.
        threshold_ratio: factor applied to that quantile (see the module docstring for the rule).
        chunk_size: synthetic rows per distance block (memory ≈ chunk_size × M × 4 bytes).

    Returns:
        An ``AuditResult``.
    """
    if (features_synth is None) != (features_train is None):
        raise InvalidInput("give both features_synth and features_train, or neither.")
    reference = AuditReference(
        train, features=features_train, threshold_quantile=threshold_quantile,
        threshold_ratio=threshold_ratio, chunk_size=chunk_size,
    )  # fmt: skip
    return reference.audit(synthetic, features=features_synth)


class AuditReference:
    """The training side of the audit, computed once: the normalised training images, their own
    nearest-neighbour distances and the thresholds. :meth:`audit` then checks any number of
    synthetic batches against it (the cohort gate audits batch by batch as it draws).

    Args:
        train: training images (M, 1, H, W) or (M, H, W), M ≥ 2.
        features: optional (M, D) features of the same images (the feature-space half of the rule).
        threshold_quantile, threshold_ratio, chunk_size: as in :func:`memorization_audit`.
    """

    def __init__(
        self,
        train: np.ndarray,
        *,
        features: np.ndarray | None = None,
        threshold_quantile: float = 0.01,
        threshold_ratio: float = 0.5,
        chunk_size: int = 512,
    ) -> None:
        if not 0.0 <= threshold_quantile <= 1.0:
            raise InvalidInput(f"threshold_quantile must lie in [0, 1], got {threshold_quantile}.")
        if not threshold_ratio > 0:
            raise InvalidInput(f"threshold_ratio must be positive, got {threshold_ratio}.")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidInput(f"chunk_size must be a positive integer, got {chunk_size!r}.")
        tr = _as_images(train, "train")
        if tr.shape[0] < 2:
            raise InvalidInput(
                f"the audit needs at least 2 training images (for train-to-train distances), got {tr.shape[0]}."
            )
        self.chunk_size = chunk_size
        self.threshold_quantile = threshold_quantile
        self.threshold_ratio = threshold_ratio
        self.rule = (
            f"flag if NN distance <= {threshold_ratio:g} x quantile(train-to-train NN distance, "
            f"{threshold_quantile:g})"
        )
        self._train = _normalise(tr)
        _, _, self.train_nn_distance = _nearest_flipped(self._train, self._train, chunk_size, exclude_self=True)
        self.threshold = self._threshold(self.train_nn_distance)
        self._features: torch.Tensor | None = None
        self.train_feature_nn_distance: np.ndarray | None = None
        self.feature_threshold: float | None = None
        if features is not None:
            self._features = _as_features(features, "features_train", tr.shape[0])
            _, self.train_feature_nn_distance = _nearest(self._features, self._features, chunk_size, exclude_self=True)
            self.feature_threshold = self._threshold(self.train_feature_nn_distance)

    @property
    def n_train(self) -> int:
        return int(self._train.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self._train.shape[1:])

    def _threshold(self, distances: np.ndarray) -> float:
        return float(self.threshold_ratio * np.quantile(distances, self.threshold_quantile))

    def audit(self, synthetic: np.ndarray, *, features: np.ndarray | None = None) -> AuditResult:
        """Each synthetic image's nearest training image (over flips; and in feature space when the
        reference has features, which then must be given) and whether it is flagged."""
        syn = _as_images(synthetic, "synthetic")
        if tuple(syn.shape[1:]) != self.image_shape:
            raise InvalidInput(
                f"synthetic and train images differ in size: {tuple(syn.shape[1:])} vs {self.image_shape}."
            )
        if (features is None) != (self._features is None):
            raise InvalidInput("give synthetic features exactly when the reference was built with training features.")
        nn_index, nn_transform, nn_distance = _nearest_flipped(_normalise(syn), self._train, self.chunk_size, exclude_self=False)
        flagged_pixel = nn_distance <= self.threshold
        flagged = flagged_pixel
        result: dict[str, Any] = {}
        if features is not None:
            fs = _as_features(features, "features_synth", syn.shape[0])
            if fs.shape[1] != self._features.shape[1]:
                raise InvalidInput(f"feature dimensions differ: synthetic {fs.shape[1]}, train {self._features.shape[1]}.")
            f_index, f_dist = _nearest(fs, self._features, self.chunk_size, exclude_self=False)
            flagged_feature = f_dist <= self.feature_threshold
            flagged = flagged_pixel | flagged_feature
            result = {
                "feature_nn_index": f_index,
                "feature_nn_distance": f_dist,
                "train_feature_nn_distance": self.train_feature_nn_distance,
                "feature_threshold": self.feature_threshold,
                "flagged_feature": flagged_feature,
            }
        return AuditResult(
            nn_index=nn_index,
            nn_distance=nn_distance,
            nn_transform=nn_transform,
            train_nn_distance=self.train_nn_distance,
            threshold=self.threshold,
            flagged_pixel=flagged_pixel,
            flagged=flagged,
            rule=self.rule,
            **result,
        )


def _as_images(x: Any, name: str) -> torch.Tensor:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] == 0:
        raise InvalidInput(f"{name} must be a non-empty (N, 1, H, W) or (N, H, W) array, got shape {a.shape}.")
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise InvalidInput(f"{name} must be finite numbers, got dtype {a.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _as_features(x: Any, name: str, n: int) -> torch.Tensor:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] == 0:
        raise InvalidInput(f"{name} must have shape ({n}, D) to match its images, got {a.shape}.")
    if not np.isfinite(a).all():
        raise InvalidInput(f"{name} contains NaN or infinite values.")
    return torch.from_numpy(a.astype(np.float32))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) → centred, unit-L2 images of the same shape (constant images → zeros)."""
    flat = images.reshape(images.shape[0], -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    return (flat / torch.where(norm > 0, norm, torch.ones_like(norm))).reshape(images.shape)


def _nearest(
    queries: torch.Tensor, keys: torch.Tensor, chunk: int, *, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Index and exact (float64) L2 distance of each query's nearest key; rows (N, D)."""
    _, best_idx = _nearest_sq(queries, keys, chunk, exclude_self)
    return best_idx.numpy(), _exact(queries, keys, best_idx)


def _nearest_flipped(
    queries: torch.Tensor, keys: torch.Tensor, chunk: int, *, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest key of each query (N, H, W) over the keys' flips: (index, transform, distance).

    ``d(q, flip(k)) = d(flip(q), k)``, so the queries are flipped instead of the keys.
    """
    keys_flat = keys.reshape(len(keys), -1)
    best_d2 = torch.full((len(queries),), float("inf"))
    best_idx = torch.zeros(len(queries), dtype=torch.long)
    best_t = torch.zeros(len(queries), dtype=torch.long)
    for t, dims in enumerate(FLIP_DIMS):
        q = torch.flip(queries, dims) if dims else queries
        d2, idx = _nearest_sq(q.reshape(len(q), -1), keys_flat, chunk, exclude_self)
        better = d2 < best_d2
        best_d2 = torch.where(better, d2, best_d2)
        best_idx = torch.where(better, idx, best_idx)
        best_t = torch.where(better, torch.full_like(best_t, t), best_t)
    dist = np.empty(len(queries))
    for t, dims in enumerate(FLIP_DIMS):
        rows = (best_t == t).nonzero().flatten()
        if len(rows):
            q = torch.flip(queries[rows], dims) if dims else queries[rows]
            dist[rows.numpy()] = _exact(q, keys, best_idx[rows])
    return best_idx.numpy(), best_t.numpy(), dist


def _nearest_sq(q: torch.Tensor, k: torch.Tensor, chunk: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest squared distance (float32, via |q|²+|k|²-2q·k) and its key index, chunked over queries."""
    k_sq = (k * k).sum(dim=1)
    d2_out = torch.empty(len(q))
    idx_out = torch.empty(len(q), dtype=torch.long)
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk]
        d2 = (block * block).sum(dim=1, keepdim=True) + k_sq[None, :] - 2.0 * (block @ k.T)
        if exclude_self:
            rows = torch.arange(len(block))
            d2[rows, start + rows] = float("inf")
        d2_out[start : start + len(block)], idx_out[start : start + len(block)] = d2.min(dim=1)
    return d2_out.clamp_min(0.0), idx_out


def _exact(q: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """Float64 distances between each query row and its chosen key (exact copies give exactly 0)."""
    a = q.reshape(len(q), -1).double()
    b = keys[idx].reshape(len(idx), -1).double()
    return (a - b).norm(dim=1).numpy()


def cohort_audit(
    synthetic: np.ndarray,
    synthetic_masks: np.ndarray | None,
    train_images: np.ndarray,
    train_masks: np.ndarray | None = None,
    train_patients: np.ndarray | None = None,
    *,
    feature_audit: AuditResult | None = None,
    feature_train: np.ndarray | None = None,
    feature_extractor: str | None = None,
    heldout_images: np.ndarray | None = None,
    worst: int = 8,
) -> dict[str, Any]:
    """The evaluation's memorization audit of a cohort, as the report's ``memorization`` section.

    A synthetic image is flagged when the search for copies in disguise
    (:class:`medsynth.metrics.copies.CopyAudit`, default threshold) finds its image — or its mask —
    a copy of a training image (mask), searching every training image; or, with ``feature_audit``
    (this module's audit in an in-domain feature space, run on the training images at
    ``feature_train``, indices into ``train_images``), when that flags it. The section says what
    fraction of the training split each part searched.

    Args:
        synthetic, synthetic_masks: the cohort (N, 1, S, S) and its masks (N, S, S) (None: images only).
        train_images, train_masks, train_patients: the whole training split.
        feature_audit, feature_train, feature_extractor: the feature-space audit, the training images
            it searched and the extractor's name.
        heldout_images: real images of held-out patients (N, 1, S, S), searched against the training
            split like the cohort: ``nn_distances`` then holds the histograms of nearest-training
            distances of the cohort, of these and of the training images themselves (each against
            other patients', the calibration), so a reader sees where the cohort sits between a copy
            (0) and new patients.
        worst: how many closest pairs to list (``train``: an index into ``train_images``).
    """
    from medsynth.metrics.copies import CopyAudit

    n_train, n = int(len(train_images)), int(len(synthetic))
    flagged = np.zeros(n, dtype=bool)
    copies: dict[str, Any] = {}
    image = mask = None
    try:
        audit = CopyAudit.of_images(train_images, train_patients)
    except InvalidInput as exc:  # too small, or one patient: say so rather than fail the evaluation
        copies["image"] = {"skipped": str(exc)}
    else:
        image = audit.audit(synthetic)
        flagged |= image.flagged
        copies["image"] = audit.summary() | {"n_flagged": int(image.flagged.sum())}
        if synthetic_masks is not None and train_masks is not None and (np.asarray(train_masks) > 0).any():
            try:
                masks = CopyAudit.of_masks(train_masks, train_patients)
            except InvalidInput as exc:
                copies["mask"] = {"skipped": str(exc)}
            else:
                mask = masks.audit(synthetic_masks)
                flagged |= mask.flagged
                copies["mask"] = masks.summary() | {"n_flagged": int(mask.flagged.sum()), "n_audited": int(mask.audited.sum())}
    searched = [f"copies in disguise: {copies['image']['reference']['searched']} of {n_train} training images"
                f" ({copies['image']['reference']['fraction_searched']:.1%}; blank ones left out)" if image is not None
                else f"copies in disguise: not searched ({copies['image']['skipped']})"]  # fmt: skip
    feature = None
    if feature_audit is not None and feature_audit.flagged_feature is not None:
        used = n_train if feature_train is None else len(feature_train)
        flagged |= feature_audit.flagged_feature
        feature = {"extractor": feature_extractor, "threshold": feature_audit.feature_threshold,
                   "n_flagged": int(feature_audit.flagged_feature.sum()), "searched": used, "of": n_train,
                   "fraction_searched": used / n_train if n_train else 0.0,
                   "rule": feature_audit.rule + " (L2 distance between features)"}  # fmt: skip
        searched.append(f"in-domain features: {used} of {n_train} training images ({used / n_train:.1%})")
    out: dict[str, Any] = {
        "fraction_flagged": float(flagged.mean()) if n else 0.0,
        "n_flagged": int(flagged.sum()),
        "n_synthetic": n,
        "n_train": n_train,
        "searched": "; ".join(searched),
        "rule": "flagged when the search for copies in disguise flags its image or its mask"
                + (", or the in-domain feature space flags it" if feature is not None else ""),
        "copies": copies,
        "feature_space": feature,
        "feature_extractor": feature_extractor,
    }  # fmt: skip
    if image is not None:
        out |= {"threshold": copies["image"]["threshold"], "median_nn_distance": float(np.nanmedian(image.distance)),
                "median_train_nn_distance": copies["image"]["calibration"]["median_distance"],
                "n_flagged_image": int(image.flagged.sum()), "n_flagged_mask": int(mask.flagged.sum()) if mask is not None else 0}  # fmt: skip
        held = audit.audit(np.asarray(heldout_images)) if heldout_images is not None and len(heldout_images) else None
        out["nn_distances"] = nn_histograms(
            {"synthetic": image.distance, **({"held-out real": held.distance} if held is not None else {}),
             "training (other patients)": audit.calibration_distance}, threshold=copies["image"]["threshold"])
        order = np.argsort(image.distance, kind="stable")[: max(int(worst), 0)]
        out["worst_pairs"] = [{"synthetic": int(i), "train": int(image.index[i]), "distance": float(image.distance[i]),
                               "transform": image.poses[i].describe()} for i in order if image.index[i] >= 0]  # fmt: skip
    elif feature_audit is not None:  # no search: the feature-space pairs, as before
        out["worst_pairs"] = [{"synthetic": s, "train": int(feature_train[t]) if feature_train is not None else t, "distance": d}
                              for s, t, d in feature_audit.worst_pairs(worst)]  # fmt: skip
    else:
        out["worst_pairs"] = []
    return out


NN_BINS = 30


def nn_histograms(distances: dict[str, np.ndarray], *, threshold: float, bins: int = NN_BINS) -> dict[str, Any]:
    """Histograms on shared bins of each group's nearest-training distances (finite ones; the last
    bin takes everything beyond the 99th percentile of all of them, so one far outlier does not
    flatten the rest), with each group's count and median and the audit's threshold."""
    finite = {name: np.asarray(d, dtype=np.float64)[np.isfinite(d)] for name, d in distances.items()}
    pooled = np.concatenate([d for d in finite.values() if d.size] or [np.zeros(1)])
    top = max(float(np.quantile(pooled, 0.99)), float(threshold), 1e-12)
    edges = np.linspace(0.0, top, bins + 1)
    return {"edges": edges.tolist(), "threshold": float(threshold), "distance": "the copy search's distance (0: identical)",
            "groups": {name: {"counts": np.histogram(np.clip(d, 0.0, top), bins=edges)[0].tolist(), "n": int(d.size),
                              "median": float(np.median(d)) if d.size else None} for name, d in finite.items()}}
