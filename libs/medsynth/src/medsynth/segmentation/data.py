"""Checking the arrays a training run gets, and drawing training batches from real, synthetic or
both sources.

Splits are the dicts of :func:`medsynth.datasets.views.load_view_split`: ``images`` ``(N, 1, S, S)``
float32 in [0, 1], ``masks`` ``(N, S, S)`` integer labels, and (for real data) ``patients``. A
synthetic cohort is the same kind of dict without ``patients`` (or an ``(images, masks)`` pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsynth.core.errors import InvalidInput


@dataclass(frozen=True)
class Pairs:
    """Images ``(N, 1, S, S)`` float32 and masks ``(N, S, S)`` int64, as torch tensors."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def as_pairs(split: Any, name: str, num_classes: int) -> Pairs:
    """Check one split and convert it to tensors.

    Args:
        split: a mapping with ``images`` and ``masks``, or an ``(images, masks)`` pair.
        name: how errors name this split (e.g. ``"real_train"``).
        num_classes: labels must lie in ``0..num_classes-1``.

    Returns:
        The split's images and masks as tensors (sharing memory with the arrays where possible).
    """
    images, masks = _unpack(split, name)
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise InvalidInput(f"{name} images must have shape (N, 1, S, S), got {images.shape}.")
    if len(images) == 0:
        raise InvalidInput(f"{name} is empty (no images).")
    if masks.shape != (images.shape[0], *images.shape[2:]):
        raise InvalidInput(f"{name} masks must have shape {(images.shape[0], *images.shape[2:])} to match its images, got {masks.shape}.")
    if not np.issubdtype(masks.dtype, np.integer):
        raise InvalidInput(f"{name} masks must hold integer labels, got dtype {masks.dtype}.")
    lo, hi = int(masks.min()), int(masks.max())
    if lo < 0 or hi >= num_classes:
        raise InvalidInput(f"{name} masks hold labels {lo}..{hi}, outside 0..{num_classes - 1} for num_classes={num_classes}.")
    return Pairs(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(masks.astype(np.int64)))


def _unpack(split: Any, name: str) -> tuple[Any, Any]:
    if isinstance(split, Mapping):
        if "images" not in split or "masks" not in split:
            raise InvalidInput(f"{name} is empty or lacks 'images'/'masks' (keys: {sorted(split)}).")
        return split["images"], split["masks"]
    if isinstance(split, (tuple, list)) and len(split) == 2:
        return split[0], split[1]
    raise InvalidInput(f"{name} must be a mapping with 'images' and 'masks' or an (images, masks) pair, got {type(split).__name__}.")


def batch_counts(source: str, batch_size: int, synthetic_ratio: float) -> tuple[int, int]:
    """``(n_real, n_synthetic)`` items per batch.

    For ``"mixed"`` the synthetic count is ``round(batch_size * synthetic_ratio)``, kept between 1
    and ``batch_size - 1`` so that every batch holds both sources; every batch has exactly these
    counts (no per-batch randomness in the split).
    """
    if source == "real":
        return batch_size, 0
    if source == "synthetic":
        return 0, batch_size
    if source == "mixed":
        n_syn = min(max(round(batch_size * synthetic_ratio), 1), batch_size - 1)
        return batch_size - n_syn, n_syn
    raise InvalidInput(f"source must be 'real', 'synthetic' or 'mixed', got {source!r}.")


class EpochSampler:
    """Indices ``0..n-1`` in shuffled passes: every item is seen once per pass, then a new shuffle."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        if n < 1:
            raise InvalidInput(f"cannot sample from an empty set (n={n}).")
        self.n, self.rng = n, rng
        self._order = rng.permutation(n)
        self._pos = 0

    def take(self, k: int) -> np.ndarray:
        out: list[np.ndarray] = []
        while k > 0:
            if self._pos == self.n:
                self._order, self._pos = self.rng.permutation(self.n), 0
            chunk = self._order[self._pos : self._pos + k]
            self._pos += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class BatchSampler:
    """Draws training batches of ``batch_counts(...)`` real and synthetic items.

    Args:
        real: the real training pairs (required when the real count is non-zero).
        synthetic: the synthetic pairs (required when the synthetic count is non-zero).
        counts: ``(n_real, n_synthetic)`` per batch.
        rng: numpy generator for the shuffles.
    """

    def __init__(self, real: Pairs | None, synthetic: Pairs | None, counts: tuple[int, int], rng: np.random.Generator) -> None:
        if counts[0] and real is None:
            raise InvalidInput("the batch needs real items but no real training split was given.")
        if counts[1] and synthetic is None:
            raise InvalidInput("the batch needs synthetic items but no synthetic cohort was given.")
        self.counts = counts
        sources = ((real, counts[0], False), (synthetic, counts[1], True))
        self._parts = [(pairs, EpochSampler(len(pairs), rng), k, syn) for pairs, k, syn in sources if k]

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next batch: ``(images, masks, is_synthetic)``; real items first, then synthetic."""
        drawn = [(pairs, torch.from_numpy(sampler.take(k)), syn) for pairs, sampler, k, syn in self._parts]
        images = torch.cat([pairs.images[idx] for pairs, idx, _ in drawn])
        masks = torch.cat([pairs.masks[idx] for pairs, idx, _ in drawn])
        flags = torch.cat([torch.full((len(idx),), syn, dtype=torch.bool) for _, idx, syn in drawn])
        return images, masks, flags
