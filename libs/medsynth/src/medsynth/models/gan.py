"""Joint image + mask GAN at 64×64 (seed 000's recipe): the mask classes ride along as extra one-hot
channels, so one generator draws an image and its segmentation together.

Generator output: ``(N, 1 + C, S, S)`` — channel 0 the image in [-1, 1] (tanh), channels 1..C the
mask as class logits (C includes background). The discriminator sees the image and the mask as
one-hot (real) or softmax probabilities (fake).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import torch
from torch import nn

from medsynth.core.errors import InvalidInput


class GanLoss(str, Enum):
    bce = "bce"        # DCGAN
    lsgan = "lsgan"    # least squares
    hinge = "hinge"


@dataclass(frozen=True)
class GeneratorConfig:
    image_size: int = 64
    num_classes: int = 3          # mask classes including background
    latent_dim: int = 128
    base_channels: int = 64       # width of the last generator block; doubles per upsampling step up

    def __post_init__(self) -> None:
        if self.image_size not in (32, 64, 128):
            raise InvalidInput(f"image_size must be 32, 64 or 128, got {self.image_size}.")
        if not 2 <= self.num_classes <= 16:
            raise InvalidInput(f"num_classes must be between 2 and 16 (background included), got {self.num_classes}.")

    @property
    def channels(self) -> int:
        return 1 + self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)


def _blocks(size: int) -> int:
    return {32: 3, 64: 4, 128: 5}[size]


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        n = _blocks(config.image_size)
        widths = [config.base_channels * 2 ** (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers.append(nn.ConvTranspose2d(widths[-1], config.channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.view(z.shape[0], -1, 1, 1))
        return torch.cat([torch.tanh(out[:, :1]), out[:, 1:]], dim=1)


class Discriminator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        n = _blocks(config.image_size)
        widths = [config.base_channels * 2**i for i in range(n)]
        layers: list[nn.Module] = [nn.Conv2d(config.channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def to_pair(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator output → (image in [0, 1] as (N, 1, S, S), integer mask (N, S, S))."""
    return (output[:, :1] + 1) / 2, output[:, 1:].argmax(dim=1)


def latents(seed: int, count: int, latent_dim: int) -> torch.Tensor:
    """The latent vectors of samples ``0..count-1`` for ``seed``, identical on every machine
    (drawn on the CPU with an explicitly seeded generator)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(count, latent_dim, generator=g)
