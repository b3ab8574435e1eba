"""Class labels of training-view items, for class-conditioned generators (``condition_on``)."""

from __future__ import annotations

import numpy as np

from medsynth.core.errors import InvalidInput

SLICE_POSITION_BINS = 3  # inferior, middle, superior third of each scan's slices
CONDITION_SOURCES = {"slice-position": SLICE_POSITION_BINS}


def condition_labels(split: dict[str, np.ndarray], source: str) -> np.ndarray:
    """Class labels of a split's items for a class-conditioned generator.

    ``slice-position``: the item's slice position within its own scan, in thirds (0 inferior, 1
    middle, 2 superior), from the view's per-item ``scans`` and ``index``.
    """
    if source not in CONDITION_SOURCES:
        raise InvalidInput(f"condition_on must be one of {sorted(CONDITION_SOURCES)}, got {source!r}.")
    scans, index = split["scans"], split["index"].astype(np.int64)
    labels = np.zeros(len(index), np.int64)
    for scan in np.unique(scans):
        rows = scans == scan
        lo, hi = index[rows].min(), index[rows].max()
        position = (index[rows] - lo) / max(hi - lo, 1)
        labels[rows] = np.minimum((position * SLICE_POSITION_BINS).astype(np.int64), SLICE_POSITION_BINS - 1)
    return labels
