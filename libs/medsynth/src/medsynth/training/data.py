"""Training data for the joint GAN: validation, device placement and deterministic batch sampling.

Every step draws its randomness from :func:`step_generator` ``(seed, step)``, a CPU generator that
depends on nothing else, so step ``k`` sees the same batch, latents and augmentation whether the run
went straight through or was resumed from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import GeneratorConfig


@dataclass(frozen=True)
class TrainingData:
    """Images scaled to [-1, 1] as ``(N, 1, S, S)`` float32 and masks as ``(N, S, S)`` int64, on one device."""

    images: torch.Tensor
    masks: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return self.images.shape[0]


def prepare_data(images: np.ndarray, masks: np.ndarray, config: GeneratorConfig, device: torch.device) -> TrainingData:
    """Check and convert the caller's arrays.

    Args:
        images: ``(N, 1, S, S)`` floats in [0, 1], ``S == config.image_size``.
        masks: ``(N, S, S)`` integers in ``[0, config.num_classes)``.

    Raises:
        InvalidInput: naming the offending shape, dtype or value range.
    """
    size = config.image_size
    _check_images(images, size)
    _check_masks(masks, size, config.num_classes)
    if images.shape[0] != masks.shape[0]:
        raise InvalidInput(f"images and masks must pair up, got {images.shape[0]} images and {masks.shape[0]} masks.")
    image_t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) * 2 - 1
    mask_t = torch.from_numpy(np.ascontiguousarray(masks).astype(np.int64))
    return TrainingData(images=image_t.to(device), masks=mask_t.to(device), num_classes=config.num_classes)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step)`` alone (mixed by :class:`numpy.random.SeedSequence`)."""
    words = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    mixed = (int(words[0]) << 31) ^ int(words[1])  # < 2**63
    return torch.Generator(device="cpu").manual_seed(mixed)


def sample_batch(data: TrainingData, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A real discriminator input ``(B, 1 + C, S, S)``: image in [-1, 1], mask one-hot.

    Indices are drawn uniformly with replacement from ``generator``.
    """
    indices = torch.randint(0, len(data), (batch_size,), generator=generator).to(data.images.device)
    one_hot = F.one_hot(data.masks[indices], data.num_classes).permute(0, 3, 1, 2).to(data.images.dtype)
    return torch.cat([data.images[indices], one_hot], dim=1)


def fake_to_input(output: torch.Tensor) -> torch.Tensor:
    """Generator output (image in [-1, 1], mask logits) → discriminator input (mask as softmax)."""
    return torch.cat([output[:, :1], torch.softmax(output[:, 1:], dim=1)], dim=1)


def _check_images(images: np.ndarray, size: int) -> None:
    if not isinstance(images, np.ndarray):
        raise InvalidInput(f"images must be a numpy array, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1:] != (1, size, size) or images.shape[0] == 0:
        raise InvalidInput(f"images must have shape (N >= 1, 1, {size}, {size}), got {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise InvalidInput(f"images must be floating point in [0, 1], got dtype {images.dtype}.")
    if not np.isfinite(images).all():
        raise InvalidInput("images contain NaN or infinite values.")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise InvalidInput(f"images must lie in [0, 1], got values in [{low}, {high}].")


def _check_masks(masks: np.ndarray, size: int, num_classes: int) -> None:
    if not isinstance(masks, np.ndarray):
        raise InvalidInput(f"masks must be a numpy array, got {type(masks).__name__}.")
    if masks.ndim != 3 or masks.shape[1:] != (size, size) or masks.shape[0] == 0:
        raise InvalidInput(f"masks must have shape (N >= 1, {size}, {size}), got {masks.shape}.")
    if not np.issubdtype(masks.dtype, np.integer):
        raise InvalidInput(f"masks must hold integer class labels, got dtype {masks.dtype}.")
    low, high = int(masks.min()), int(masks.max())
    if low < 0 or high >= num_classes:
        raise InvalidInput(
            f"mask labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), got [{low}, {high}]."
        )
