"""DCGAN-style networks of the joint image + mask generator (seed 000's architecture): the mask
classes ride along as extra one-hot channels, so one generator draws an image and its segmentation.

Generator output: ``(N, 1 + C, S, S)`` — channel 0 the image in [-1, 1] (tanh), channels 1..C the
mask as class logits (C includes background). The discriminator (critic) sees image + mask channels.

With ``norm="batch"`` and no spectral norm the layer layout (and so the state_dict keys) is that of
medsynth's first joint GAN, whose format-1 checkpoints therefore keep loading.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medsynth.core.errors import InvalidInput

SIZES = {32: 3, 64: 4, 128: 5}  # image size → number of stride-2 blocks


class CriticNorm(str, Enum):
    batch = "batch"
    layer = "layer"  # GroupNorm(1, C): per-sample, as WGAN-GP's critic needs
    none = "none"


def _blocks(size: int) -> int:
    if size not in SIZES:
        raise InvalidInput(f"image_size must be one of {sorted(SIZES)}, got {size}.")
    return SIZES[size]


class Generator(nn.Module):
    def __init__(self, image_size: int, channels: int, latent_dim: int, base_channels: int) -> None:
        super().__init__()
        n = _blocks(image_size)
        self.latent_dim = latent_dim
        widths = [base_channels * 2 ** (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.view(z.shape[0], -1, 1, 1))
        return torch.cat([torch.tanh(out[:, :1]), out[:, 1:]], dim=1)


class Discriminator(nn.Module):
    def __init__(
        self,
        image_size: int,
        channels: int,
        base_channels: int,
        *,
        norm: CriticNorm = CriticNorm.batch,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        n = _blocks(image_size)
        widths = [base_channels * 2**i for i in range(n)]
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers.append(sn(nn.Conv2d(w_in, w_out, 4, 2, 1, bias=norm is CriticNorm.none)))
            if norm is CriticNorm.batch:
                layers.append(nn.BatchNorm2d(w_out))
            elif norm is CriticNorm.layer:
                layers.append(nn.GroupNorm(1, w_out))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(sn(nn.Conv2d(widths[-1], 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) normalisation scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
