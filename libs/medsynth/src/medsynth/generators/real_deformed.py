"""The ``real-deformed`` mask source, shared by the families that draw an image for a given mask
(``spade``, and ``diffusion``'s mask-conditioned variant): training masks from a **mask bank** under a
random affine and elastic deformation, a pure function of per-sample noise.

* :class:`RealDeformedOptions`: the options of the source (bank size, deformation magnitudes); a
  family with the source subclasses it for its own options model.
* :func:`mask_bank`: the bank of a run, an evenly spaced subset of at most ``mask_bank_size``
  training masks (kept in the checkpoint and the export as a network without parameters).
* :class:`Deformation`: the warp of one-hot masks.
* :class:`DeformedBankMasks`: noise ``((1,), (4,), (2, g, g))`` → a deformed one-hot bank mask: the
  bank index (a standard normal mapped through its CDF), rotation / log-scale / x-y translation, and
  a coarse ``g × g`` displacement grid (upsampled bicubically). Deformation noise is truncated at ±3σ;
  zero deformation noise returns the bank mask unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import FamilyOptions, TrainingData
from medsynth.models.spade import MaskBank, one_hot

TRUNCATION = 3.0  # deformation noise is clipped to ±3σ: no rare wild warps


class RealDeformedOptions(FamilyOptions):
    """Options of the real-deformed mask source (a base of the options of each family that has it)."""

    mask_bank_size: int = Field(2048, ge=1, le=65536, description="At most this many training masks (evenly spaced) are kept for the real-deformed source.")
    rotation: float = Field(10.0, ge=0, le=90, allow_inf_nan=False, description="Real-deformed: rotation standard deviation in degrees.")
    scale: float = Field(0.05, ge=0, le=0.5, allow_inf_nan=False, description="Real-deformed: standard deviation of the log zoom factor.")
    translation: float = Field(0.05, ge=0, le=0.5, allow_inf_nan=False, description="Real-deformed: translation standard deviation, as a fraction of the image size.")
    elastic: float = Field(0.02, ge=0, le=0.25, allow_inf_nan=False, description="Real-deformed: elastic displacement standard deviation, as a fraction of the image size.")
    elastic_grid: int = Field(4, ge=2, le=32, description="Real-deformed: the elastic displacement is drawn on this coarse grid and upsampled bicubically.")


def mask_bank(data: TrainingData, capacity: int) -> MaskBank:
    """The bank of a run: an evenly spaced subset of at most ``capacity`` of ``data``'s masks (CPU)."""
    index = MaskBank.subset(len(data), capacity).to(data.masks.device)
    return MaskBank(data.spec.image_size, data.masks[index].cpu())


class Deformation(nn.Module):
    """Random affine + elastic warp of one-hot masks, a pure function of standard-normal noise.

    ``affine`` ``(N, 4)``: rotation, log-scale, x and y translation; ``field`` ``(N, 2, g, g)``: x and y
    displacement on a coarse grid. Both are truncated at ±3 and scaled by the magnitudes. The one-hot
    mask is resampled bilinearly (out-of-image pixels are background), then snapped back to one-hot."""

    def __init__(self, image_size: int, *, rotation: float, scale: float, translation: float, elastic: float) -> None:
        super().__init__()
        self.image_size = image_size
        self.rotation = math.radians(rotation)
        self.scale, self.translation, self.elastic = scale, 2 * translation, 2 * elastic  # [-1, 1] spans the image
        centres = (torch.arange(image_size, dtype=torch.float32) * 2 + 1) / image_size - 1  # align_corners=False
        self.register_buffer("xs", centres.view(1, 1, image_size), persistent=False)
        self.register_buffer("ys", centres.view(1, image_size, 1), persistent=False)

    def forward(self, mask: torch.Tensor, affine: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        affine = affine.clamp(-TRUNCATION, TRUNCATION)
        angle = (affine[:, 0] * self.rotation).view(-1, 1, 1)
        zoom = torch.exp(affine[:, 1] * self.scale).view(-1, 1, 1)
        tx = (affine[:, 2] * self.translation).view(-1, 1, 1)
        ty = (affine[:, 3] * self.translation).view(-1, 1, 1)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        size = (self.image_size, self.image_size)
        shift = F.interpolate(field.clamp(-TRUNCATION, TRUNCATION), size=size, mode="bicubic", align_corners=True)
        shift = shift * self.elastic
        gx = cos * self.xs - sin * self.ys + tx + shift[:, 0]
        gy = sin * self.xs + cos * self.ys + ty + shift[:, 1]
        grid = torch.stack([gx, gy], dim=-1)
        warped = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = torch.cat([warped[:, :1] + (1 - warped.sum(dim=1, keepdim=True)), warped[:, 1:]], dim=1)
        return one_hot(warped.argmax(dim=1), mask.shape[1], mask.dtype)


class DeformedBankMasks(nn.Module):
    """Noise ``[bank pick (N, 1), affine (N, 4), elastic field (N, 2, g, g)]`` → a deformed bank mask,
    one-hot ``(N, C, S, S)`` float32. ``noise_shapes`` lists the three per-sample shapes."""

    def __init__(self, bank: MaskBank, num_classes: int, options: RealDeformedOptions) -> None:
        super().__init__()
        if len(bank) == 0:
            raise InvalidInput("the mask bank is empty: load the exported weights into sampling_nets() first.")
        self.bank, self.num_classes = bank, num_classes
        self.deformation = Deformation(bank.masks.shape[-1], rotation=options.rotation, scale=options.scale,
                                       translation=options.translation, elastic=options.elastic)
        self.deformation.to(bank.masks.device)
        grid = options.elastic_grid
        self.noise_shapes: tuple[tuple[int, ...], ...] = ((1,), (4,), (2, grid, grid))

    def forward(self, noise: list[torch.Tensor]) -> torch.Tensor:
        pick, affine, field = noise
        size = self.bank.masks.shape[0]
        index = (torch.special.ndtr(pick[:, 0]) * size).floor().clamp(0, size - 1).long()
        mask = one_hot(self.bank.masks[index], self.num_classes, pick.dtype)
        return self.deformation(mask, affine, field)
