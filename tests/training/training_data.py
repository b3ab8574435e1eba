"""Helpers shared by the training tests: tiny synthetic data (bright squares with square masks), tiny
specs of every family and checkpoint comparisons. (A uniquely named module, not ``conftest``, so that
tests can import it.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsynth.generators.base import DataSpec
from medsynth.generators.registry import FAMILIES, GeneratorSpec, parse_options, parse_training
from medsynth.generators.checkpoint import Checkpoint

SIZE = 32

# Narrow networks of every family: a few steps run in about a second on one thread.
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "joint-gan": {"latent_dim": 16, "base_channels": 8},
    "spade": {"latent_dim": 16, "base_channels": 8, "spade_hidden": 8, "disc_channels": 8, "num_scales": 1,
              "mask_latent_dim": 16, "mask_base_channels": 4, "mask_bank_size": 8},
    "diffusion": {"channels": [8, 16], "num_head_channels": 8, "train_timesteps": 50, "sample_steps": 4},
    "stylegan2": {"latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16, "mbstd_group": 2},
}


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


def tiny_spec(family: str = "joint-gan", *, num_conditions: int = 0, training: dict | None = None, **options: Any) -> GeneratorSpec:
    """image_size=32, two classes, batch 4, 4 steps, checkpoint every 2: fast for any family."""
    values = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, **(training or {})}
    return GeneratorSpec(
        options=parse_options({"family": family, **TINY_OPTIONS[family], **options}),
        training=parse_training(values),
        data=DataSpec(SIZE, 2, num_conditions),
    )


def family_names() -> list[str]:
    return sorted(FAMILIES)


def same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    """Every network and EMA tensor of two checkpoints equal."""
    for group in ("nets", "ema"):
        sa, sb = getattr(a, group), getattr(b, group)
        if sa.keys() != sb.keys():
            return False
        for name in sa:
            if sa[name].keys() != sb[name].keys() or not all(torch.equal(sa[name][k], sb[name][k]) for k in sa[name]):
                return False
    return True


def same_extra(a: Any, b: Any) -> bool:
    """Two checkpoints' extra state equal (tensors by value)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_extra(a[k], b[k]) for k in a)
    return a == b
