"""Small real-like splits for the segmentation tests: 2D axial slices of 32×32 phantoms.

Each patient is one phantom (``make_phantom(seed, (32, 32, 8))``), intensity-normalised like a
view (``datasets.views.normalise``); only slices with foreground are kept, as views made without
``keep_empty_eval`` did, unless ``keep_empty`` (every slice, as new views keep val and test patients).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from medsynth.datasets.views import normalise
from medsynth.datasets.phantoms import make_phantom
from medsynth.segmentation import SegmentationSpec, train_segmenter

SIZE = 32
DEPTH = 8
NUM_CLASSES = 3


def phantom_split(seeds: range | list[int], keep_empty: bool = False) -> dict[str, np.ndarray]:
    """A view-like split: ``images`` (N, 1, 32, 32), ``masks``, ``patients``, ``scans``, ``index``."""
    images, masks, patients, scans, index = [], [], [], [], []
    for seed in seeds:
        image, label, _ = make_phantom(seed, (SIZE, SIZE, DEPTH))
        image = normalise(image)
        for k in range(DEPTH):
            if keep_empty or label[..., k].any():
                images.append(image[..., k])
                masks.append(label[..., k])
                patients.append(f"phantom-{seed:03d}")
                scans.append(f"phantom-{seed:03d}-scan0")
                index.append(k)
    return {
        "images": np.stack(images)[:, None].astype(np.float32),
        "masks": np.stack(masks).astype(np.uint8),
        "patients": np.array(patients),
        "scans": np.array(scans),
        "index": np.array(index, dtype=np.int32),
    }


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is as fast as two on an idle 2-core machine, and
    an order of magnitude faster when another process busies a core (spinning thread barriers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def splits() -> dict[str, dict[str, np.ndarray]]:
    return {
        "train": phantom_split(range(0, 12)),
        "val": phantom_split(range(100, 103)),
        "test": phantom_split(range(200, 204)),
    }


def small_spec(**overrides) -> SegmentationSpec:
    base = dict(steps=150, batch_size=16, lr=1e-2, val_every=25, num_classes=NUM_CLASSES, channels=(8, 16, 32), seed=0)
    return SegmentationSpec(**{**base, **overrides})


@pytest.fixture(scope="session")
def trained(splits):
    """One 150-step run on the real phantom slices, shared by the tests that need a trained model."""
    return train_segmenter(small_spec(augment=True), splits["train"], splits["val"])
