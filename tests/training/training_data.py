"""Helpers shared by the training tests: tiny synthetic data (bright squares with square masks) and
tiny configs. (A uniquely named module, not ``conftest``, so that tests can import it.)"""

from __future__ import annotations

import numpy as np

from medsynth.models.gan import GeneratorConfig
from medsynth.training.config import TrainConfig

SIZE = 32


def squares(count: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy backgrounds with one bright square each; the mask marks the square (class 1)."""
    rng = np.random.default_rng(seed)
    images = (0.1 + 0.05 * rng.random((count, 1, size, size))).astype(np.float32)
    masks = np.zeros((count, size, size), np.uint8)
    for i in range(count):
        side = int(rng.integers(size // 3, size // 2 + 1))
        y, x = rng.integers(0, size - side, 2)
        masks[i, y : y + side, x : x + side] = 1
        images[i, 0, y : y + side, x : x + side] = 0.85 + 0.05 * rng.random((side, side))
    return images, masks


def tiny_config(**overrides: object) -> TrainConfig:
    """image_size=32, base_channels=8, batch 4: a few steps run in well under a second."""
    values: dict = {
        "generator": GeneratorConfig(image_size=SIZE, num_classes=2, latent_dim=16, base_channels=8),
        "steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "log_every": 1,
    }
    values.update(overrides)
    return TrainConfig(**values)
