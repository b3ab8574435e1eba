"""Networks of the SPADE family (Park et al. 2019, "Semantic Image Synthesis with Spatially-Adaptive
Normalization"), sized for 32–128 pixel grey images and 2–16 mask classes:

* :class:`SpadeGenerator`: ``z`` → linear → ``4×4`` feature map → SPADE residual blocks with nearest
  ×2 upsampling up to the image size → conv → tanh. Every normalisation is modulated per pixel by the
  one-hot mask, so the mask steers the whole generator (an input-only mask would be washed out by the
  first normalisation).
* :class:`PatchDiscriminator` / :class:`MultiScaleDiscriminator`: pix2pixHD's multi-scale PatchGAN on
  image + one-hot mask; it returns every layer's features for the feature-matching loss.
* :class:`MaskGenerator`: the stage-1 DCGAN generator over masks only (class logits).
* :class:`MaskBank`: training masks kept as a ``uint8`` buffer for the real-deformed mask source.

Own compact modules rather than MONAI's: ``monai.networks.nets.SPADENet`` is a VAE-GAN whose latent
comes from an image encoder, and its SPADE block normalises through MONAI's norm factory; the family
needs a ``z``-only generator whose normalisation it chooses (see :class:`SpadeNorm`) and that traces.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import SIZES, Generator


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, S, S)`` integer labels → ``(N, C, S, S)`` one-hot in ``dtype`` (``F.one_hot``: it traces to one op
    on the labels' device, no class-index constant baked into an export for the device it was traced on)."""
    return F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(dtype)


class SpadeNorm(nn.Module):
    """Spatially-adaptive normalisation: ``norm(x) · (1 + γ(m)) + β(m)``, with ``γ``, ``β`` per pixel
    from a small conv net on the one-hot mask ``m`` resized (nearest) to ``x``'s resolution.

    The parameter-free normalisation is *instance* norm, not the paper's (synchronised) batch norm:

    * a sample's output depends on that sample alone, in training and at sampling time alike — no
      running statistics that differ between ``train()`` and ``eval()``, and none to re-estimate for
      the EMA weights the export samples with (the loop does that for batch norm before every
      checkpoint: :func:`medsynth.training.loop.recompute_ema_batch_norm`);
    * the SamplingNet contract (each sample a function of its own noise) holds by construction.

    What instance norm removes — each channel's per-sample mean and scale — is what SPADE puts back
    from the mask, and ``z`` still reaches the image through the spatial pattern of the 4×4 head.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(mask.to(x.dtype), size=x.shape[-2:], mode="nearest")
        features = self.shared(mask)
        return instance_norm(x) * (1 + self.gamma(features)) + self.beta(features)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free instance norm, as ``nn.InstanceNorm2d(affine=False)`` (statistics in float32 under
    autocast), written out so that it traces without the module's Python-side shape checks."""
    x32 = x.float()
    mean = x32.mean(dim=(2, 3), keepdim=True)
    var = x32.var(dim=(2, 3), unbiased=False, keepdim=True)
    return ((x32 - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class SpadeResBlock(nn.Module):
    """SPADE → LeakyReLU → conv3×3, twice, plus a shortcut (SPADE → conv1×1 when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        self.norm_0 = SpadeNorm(in_channels, label_channels, hidden)
        self.conv_0 = nn.Conv2d(in_channels, middle, 3, padding=1)
        self.norm_1 = SpadeNorm(middle, label_channels, hidden)
        self.conv_1 = nn.Conv2d(middle, out_channels, 3, padding=1)
        self.learned_shortcut = in_channels != out_channels
        if self.learned_shortcut:
            self.norm_s = SpadeNorm(in_channels, label_channels, hidden)
            self.conv_s = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, mask)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, mask), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, mask), 0.2))
        return shortcut + dx


def generator_widths(image_size: int, base_channels: int) -> list[int]:
    """Widths from the 4×4 head to full resolution: ``base · 2^k`` with ``k`` from ``min(n, 3)`` down to 0
    over the ``n = log2(S / 4)`` upsamplings (the deepest levels share the widest width)."""
    if image_size not in SIZES:
        raise InvalidInput(f"image_size must be one of {sorted(SIZES)}, got {image_size}.")
    n = SIZES[image_size]  # 32 → 3, 64 → 4, 128 → 5 upsamplings from 4×4
    return [base_channels * 2 ** min(n - i, 3) for i in range(n + 1)]


class SpadeGenerator(nn.Module):
    """``(z (N, latent_dim), one-hot mask (N, C, S, S))`` → image ``(N, 1, S, S)`` in [-1, 1]."""

    def __init__(self, image_size: int, num_classes: int, latent_dim: int, base_channels: int, hidden: int) -> None:
        super().__init__()
        widths = generator_widths(image_size, base_channels)
        self.image_size, self.num_classes, self.latent_dim = image_size, num_classes, latent_dim
        self.head_width = widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * 16)
        self.head = SpadeResBlock(widths[0], widths[0], num_classes, hidden)
        self.blocks = nn.ModuleList(SpadeResBlock(a, b, num_classes, hidden) for a, b in zip(widths, widths[1:]))
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.head_width, 4, 4)
        x = self.head(x, mask)
        for block in self.blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"), mask)
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


class PatchDiscriminator(nn.Module):
    """pix2pixHD's PatchGAN (three layers): conv4×4/2 → conv4×4/2 → conv3×3/1 → conv3×3/1 → one score
    per patch. Instance norm after every convolution but the first and last; spectral norm optional.

    Returns the output of every layer (the last is the ``(N, 1, S/4, S/4)`` score map): the discriminator
    loss uses the last, the feature-matching loss the others."""

    def __init__(self, channels: int, base_channels: int, *, spectral_norm: bool = True) -> None:
        super().__init__()
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        w = base_channels
        self.layers = nn.ModuleList([
            nn.Sequential(sn(nn.Conv2d(channels, w, 4, 2, 1)), nn.LeakyReLU(0.2)),
            nn.Sequential(sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2)),
            nn.Sequential(sn(nn.Conv2d(2 * w, 4 * w, 3, 1, 1)), nn.InstanceNorm2d(4 * w), nn.LeakyReLU(0.2)),
            sn(nn.Conv2d(4 * w, 1, 3, 1, 1)),
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` PatchGANs on the input and its 2×, 4×, … average-pooled copies (pix2pixHD).
    ``forward`` returns, per scale, the list of that discriminator's layer outputs."""

    def __init__(self, channels: int, base_channels: int, num_scales: int, *, spectral_norm: bool = True) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(channels, base_channels, spectral_norm=spectral_norm) for _ in range(num_scales)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


class MaskGenerator(Generator):
    """The DCGAN generator of :mod:`medsynth.models.gan` drawing masks only: ``z`` → ``(N, C, S, S)``
    class logits (no image channel, no tanh). Same layer layout and state_dict keys as ``Generator``."""

    def __init__(self, image_size: int, num_classes: int, latent_dim: int, base_channels: int) -> None:
        super().__init__(image_size, num_classes, latent_dim, base_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class MaskBank(nn.Module):
    """Training masks ``(K, S, S)`` as a ``uint8`` buffer: no parameters, checkpointed and exported with
    the other networks.

    ``K`` depends on the training data, which a fresh module (built from options and data spec alone)
    does not know; so a fresh bank is empty, and loading a state dict takes the stored bank's ``K``
    (strict loading still checks the key set and the ``(S, S)`` mask size)."""

    masks: torch.Tensor

    def __init__(self, image_size: int, masks: torch.Tensor | None = None) -> None:
        super().__init__()
        if masks is None:
            masks = torch.zeros(0, image_size, image_size, dtype=torch.uint8)
        if masks.ndim != 3 or masks.shape[1:] != (image_size, image_size):
            raise ValueError(f"mask bank must be (K, {image_size}, {image_size}), got {tuple(masks.shape)}")
        self.register_buffer("masks", masks.to(torch.uint8).contiguous())

    @staticmethod
    def subset(count: int, capacity: int) -> torch.Tensor:
        """Indices of an evenly spaced subset of ``min(count, capacity)`` of ``count`` items (all of them
        when they fit), increasing and starting at 0."""
        k = min(count, capacity)
        return torch.arange(k, dtype=torch.int64) * count // k

    def __len__(self) -> int:
        return self.masks.shape[0]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "masks")
        if isinstance(stored, torch.Tensor) and stored.ndim == 3 and stored.shape[1:] == self.masks.shape[1:]:
            self.masks = torch.empty(stored.shape, dtype=torch.uint8, device=self.masks.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
