"""Classical augmentation of 2D image + mask batches, in plain torch so that one random draw moves
an image and its mask together.

Per item: mirroring along each spatial axis (p = 0.5 each, as nnU-Net does; mirroring swaps
laterality, which a segmenter of symmetric anatomy should not care about), a small random affine
(rotation, isotropic scale, translation; bilinear for the image, nearest for the mask, zero /
background outside the field of view) and intensity jitter of the image only (gamma, contrast,
brightness, Gaussian noise; clipped back to [0, 1]).

All randomness comes from the ``torch.Generator`` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """Strength of each augmentation; zero (or a degenerate range) switches one off."""

    p_flip: float = 0.5
    max_rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_translate: float = 0.05          # fraction of the field of view (normalised coords span 2)
    p_affine: float = 0.8
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.9, 1.1)
    max_brightness: float = 0.05
    max_noise_std: float = 0.02
    p_intensity: float = 0.8


DEFAULT_PARAMS = AugmentParams()
GEOMETRY_ONLY = AugmentParams(p_intensity=0.0)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    params: AugmentParams = DEFAULT_PARAMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch.

    Args:
        images: ``(N, 1, H, W)`` float in [0, 1].
        masks: ``(N, H, W)`` integer labels.
        generator: source of all random draws.
        params: augmentation strengths.

    Returns:
        ``(images, masks)`` of the same shapes and dtypes; the inputs are not modified.
    """
    images, masks = flip_batch(images, masks, generator, params.p_flip)
    images, masks = affine_batch(images, masks, generator, params)
    images = intensity_batch(images, generator, params)
    return images, masks


def flip_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror each item along H and along W, each with probability ``p`` (same draw for image and mask)."""
    n = images.shape[0]
    draws = torch.rand(n, 2, generator=generator) < p
    images, masks = images.clone(), masks.clone()
    for axis, col in ((-2, 0), (-1, 1)):
        sel = draws[:, col]
        if sel.any():
            images[sel] = images[sel].flip(axis)
            masks[sel] = masks[sel].flip(axis)
    return images, masks


def random_affine_matrices(n: int, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """``(n, 2, 3)`` matrices for ``F.affine_grid`` (output → input normalised coordinates); items
    not selected (probability ``1 - p_affine``) get the identity."""
    u = torch.rand(n, 5, generator=generator)
    angle = (2 * u[:, 0] - 1) * math.radians(params.max_rotate_deg)
    lo, hi = params.scale
    scale = lo + (hi - lo) * u[:, 1]
    shift = (2 * u[:, 2:4] - 1) * 2 * params.max_translate
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    identity = torch.eye(2, 3).expand(n, 2, 3)
    keep = (u[:, 4] < params.p_affine)[:, None, None]
    return torch.where(keep, theta, identity)


def affine_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (bilinear) and masks (nearest) with the same random affine per item."""
    theta = random_affine_matrices(images.shape[0], generator, params).to(images.dtype)
    return warp(images, masks, theta)


def warp(images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``F.affine_grid`` matrices ``theta`` ``(N, 2, 3)`` to images and masks alike."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out_img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_msk = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out_img, out_msk[:, 0].round().to(masks.dtype)


def intensity_batch(images: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Gamma, contrast (about each image's mean), brightness and noise; clipped to [0, 1]."""
    n = images.shape[0]
    u = torch.rand(n, 5, generator=generator).to(images.dtype)
    sel = (u[:, 4] < params.p_intensity).to(images.dtype)[:, None, None, None]
    g_lo, g_hi = params.gamma
    gamma = torch.exp(math.log(g_lo) + (math.log(g_hi) - math.log(g_lo)) * u[:, 0])[:, None, None, None]
    c_lo, c_hi = params.contrast
    contrast = (c_lo + (c_hi - c_lo) * u[:, 1])[:, None, None, None]
    brightness = ((2 * u[:, 2] - 1) * params.max_brightness)[:, None, None, None]
    noise_std = (u[:, 3] * params.max_noise_std)[:, None, None, None]
    out = images.clamp(0, 1) ** gamma
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    out = out + noise_std * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return (sel * out + (1 - sel) * images).clamp(0, 1)
