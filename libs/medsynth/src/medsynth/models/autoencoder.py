"""The autoencoder of latent diffusion (Rombach et al. 2022; MAISI's recipe at 2D scale): MONAI's
``AutoencoderKL`` over image + one-hot mask channels, with the latent scale factor kept beside its
weights.

The denoiser of a latent diffusion works on ``scale_factor · μ(x)``, the posterior mean scaled so that
the latents have unit standard deviation; ``scale_factor`` is measured once on real latents when the
autoencoder is done training (:meth:`LatentAutoencoder.calibrate`) and stored as a buffer, so that it
travels in checkpoints and exports with the weights. ``0`` means "not calibrated yet".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class LatentAutoencoder(nn.Module):
    """``(N, channels, S, S)`` ↔ latents ``(N, latent_channels, S / f, S / f)`` with ``f = 2^(levels - 1)``.

    No attention (small 2D images; it also keeps the decoder cheap inside the unrolled sampler);
    group norm with ``gcd(widths)`` groups (at most 32).
    """

    scale_factor: torch.Tensor

    def __init__(self, channels: int, widths: Sequence[int], latent_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        levels = len(widths)
        self.net = AutoencoderKL(
            spatial_dims=2, in_channels=channels, out_channels=channels, channels=tuple(widths),
            latent_channels=latent_channels, num_res_blocks=1, attention_levels=(False,) * levels,
            norm_num_groups=min(32, math.gcd(*widths)), with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )  # fmt: skip
        self.downsampling = 2 ** (levels - 1)
        self.latent_channels = latent_channels
        self.register_buffer("scale_factor", torch.zeros(()))

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """The per-sample latent shape of ``image_size`` images."""
        side = image_size // self.downsampling
        return (self.latent_channels, side, side)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation ``(μ, σ)``."""
        return self.net.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents → reconstruction."""
        return self.net.decode(z)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns: ``scale_factor · μ(x)``."""
        return self.encode(x)[0] * self.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's latents → reconstruction (the inverse scaling, then the decoder)."""
        return self.decode(latents / self.scale_factor)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> float:
        """Set ``scale_factor`` to ``1 / std(μ(x))`` over the batch ``x``; return that standard deviation."""
        std = self.encode(x)[0].float().std().clamp(min=1e-8)
        self.scale_factor.copy_(1 / std)
        return float(std)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, σ²) ‖ N(0, 1))`` summed over each item's latent elements, averaged over the batch."""
    per_item = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(dim=1)
    return per_item.mean()
