"""Differentiable augmentation of discriminator inputs (DiffAugment, Zhao et al. 2020, policy
``"color,translation,cutout"``) adapted to joint image + mask tensors.

Input layout: ``(N, 1 + C, S, S)``: channel 0 the image in [-1, 1], channels 1..C the mask as one-hot
(real) or softmax probabilities (fake).

* colour: brightness ``+ U(-0.5, 0.5)`` and contrast ``× U(0.5, 1.5)`` around the per-sample mean, on
  the image channel only (grey images: no saturation term);
* translation by up to 1/8 of the size and cutout of a square half the size, on all channels together
  so that image and mask stay aligned.

Pixels uncovered by translation and the cutout square are filled with *background*: image -1 (black)
and mask one-hot class 0, so that augmented masks still sum to 1 per pixel.

Every random number is drawn from an explicit CPU :class:`torch.Generator` (then moved to the input's
device, asynchronously: :func:`~medsynth.generators.base.host_to_device`), so the augmentation of a step
is a function of that generator alone, on any device. The
same policy is applied to real and fake batches, each with its own draws (as in DiffAugment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsynth.generators.base import host_to_device

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def diff_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply colour, translation and cutout to a joint ``(N, 1 + C, S, S)`` batch (differentiable in ``x``).

    Args:
        x: discriminator input, image channel first.
        generator: CPU generator all random parameters are drawn from (advanced by a fixed amount).

    Returns:
        A new tensor of the same shape.
    """
    x = _color(x, generator)
    x = _translation(x, generator)
    return _cutout(x, generator)


def background(x: torch.Tensor) -> torch.Tensor:
    """The ``(1, 1 + C, 1, 1)`` fill value: image -1, mask one-hot class 0."""
    fill = torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
    fill[:, 0] = -1.0
    fill[:, 1] = 1.0
    return fill


def _uniform(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return host_to_device(torch.rand(n, 1, 1, 1, generator=generator), like.device).to(like.dtype)


def _color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    brightness = _uniform(n, generator, x) - 0.5
    contrast = _uniform(n, generator, x) + 0.5
    image = x[:, :1] + brightness
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    image = (image - mean) * contrast + mean
    return torch.cat([image, x[:, 1:]], dim=1)


def _translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    max_shift = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = host_to_device(torch.randint(-max_shift[0], max_shift[0] + 1, (n, 1, 1), generator=generator), x.device)
    dx = host_to_device(torch.randint(-max_shift[1], max_shift[1] + 1, (n, 1, 1), generator=generator), x.device)
    fill = background(x)
    padded = F.pad(x - fill, [1, 1, 1, 1]) + fill  # a one-pixel background border
    batch, rows, cols = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + dy + 1, 0, h + 1)  # out-of-range reads land on the border
    cols = torch.clamp(cols + dx + 1, 0, w + 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    size = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = host_to_device(torch.randint(0, h + (1 - size[0] % 2), (n, 1, 1), generator=generator), x.device)
    cx = host_to_device(torch.randint(0, w + (1 - size[1] % 2), (n, 1, 1), generator=generator), x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= cy - size[0] // 2)
        & (rows < cy - size[0] // 2 + size[0])
        & (cols >= cx - size[1] // 2)
        & (cols < cx - size[1] // 2 + size[1])
    )
    return torch.where(inside.unsqueeze(1), background(x), x)
