"""StyleGAN2 networks (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
small and drawing image + mask together: the toRGB layers emit ``1 + C`` channels, channel 0 the image
(no output nonlinearity: it is clamped to [-1, 1] when sampled) and channels 1..C mask class logits.

* :class:`MappingNetwork`: z (normalised to unit second moment), concatenated with a normalised class
  embedding when conditional, through ``layers`` equalised-lr linear layers at lr multiplier 0.01 → w.
* :class:`SynthesisNetwork`: learned constant 4×4 input; per resolution an upsampling modulated 3×3
  conv and a modulated 3×3 conv (weight demodulation, per-layer noise with learned strength, bias,
  leaky ReLU), and a toRGB 1×1 modulated conv (no demodulation) whose outputs are summed over the
  resolutions (skip architecture). ``num_ws`` = number of convs + 1: a toRGB shares its w with the
  next block's first conv, as in StyleGAN2.
* :class:`Discriminator`: residual; fromRGB at full size, per resolution two 3×3 convs (the second
  downsampling) plus a downsampling 1×1 skip, scaled by 1/√2; at 4×4 the minibatch standard deviation
  feature, a conv and two linear layers; class-conditional by projection onto a class embedding.

Every weight is stored N(0, 1) and scaled at run time by ``1/√fan_in`` (equalised learning rate).
Up/downsampling are fixed [1, 3, 3, 1] FIR filters as (transposed) depthwise convolutions — not
``F.interpolate``/reflection padding, whose CUDA backward passes have no deterministic implementation.
The filters are non-persistent buffers of the modules that resample (:func:`fir_kernel`): they move
with ``.to(device)``, cost no host-to-device copy per call and trace as module state, not as CPU
constants; being non-persistent, they are not in ``state_dict`` (checkpoints are unchanged).
Nothing couples samples in the generator, so each output row depends on its own inputs only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.core.errors import InvalidInput

SIZES = (32, 64, 128)
LRELU_GAIN = math.sqrt(2.0)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at ``resolution``: ``min(channel_base / resolution, channel_max)``, at least 8."""
    return max(8, min(channel_base // resolution, channel_max))


def _log2(size: int) -> int:
    if size not in SIZES:
        raise InvalidInput(f"image_size must be one of {list(SIZES)}, got {size}.")
    return int(math.log2(size))


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# Layers -------------------------------------------------------------------------------------------


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights N(0, 1/lr_mul²), scaled by ``lr_mul/√in``."""

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate; ``down``: a [1, 3, 3, 1] blur and stride 2 after it."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True,
                 activation: bool = True, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2
        self.activation = activation
        self.down = down
        if down:
            self.register_buffer("fir", fir_kernel(DOWN_GAIN), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.padding)
        if self.down:
            x = downsample2x(x, self.fir)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        return _lrelu(x) if self.activation else x


UP_GAIN, DOWN_GAIN = 4.0, 1.0


def fir_kernel(gain: float) -> torch.Tensor:
    """The 4×4 [1, 3, 3, 1] ⊗ [1, 3, 3, 1] filter normalised to sum ``gain`` (float32, CPU)."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel * (gain / kernel.sum())


def _fir(x: torch.Tensor, kernel: torch.Tensor | None, gain: float) -> torch.Tensor:
    """``kernel`` (a module's buffer; ``None``: made here, on ``x``'s device) as a depthwise weight for ``x``."""
    kernel = fir_kernel(gain).to(x.device) if kernel is None else kernel
    return kernel.to(x.dtype).expand(x.shape[1], 1, 4, 4)


def upsample2x(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """×2 upsampling: zero insertion and a [1, 3, 3, 1] filter (gain 4, ``kernel`` = ``fir_kernel(UP_GAIN)``),
    ``(N, C, H, W) → (N, C, 2H, 2W)``."""
    return F.conv_transpose2d(x, _fir(x, kernel, UP_GAIN), stride=2, padding=1, groups=x.shape[1])


def downsample2x(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """×½ downsampling: a [1, 3, 3, 1] filter (gain 1, ``kernel`` = ``fir_kernel(DOWN_GAIN)``) and stride 2,
    ``(N, C, H, W) → (N, C, H/2, W/2)``."""
    return F.conv2d(x, _fir(x, kernel, DOWN_GAIN), stride=2, padding=1, groups=x.shape[1])


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     eps: float = 1e-8, fused: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution.

    ``fused``: one grouped convolution with per-sample weights (one group per sample), what sampling
    uses. Not fused: the input scaled by the styles, one shared convolution, the output scaled by the
    demodulation coefficients — the same function (equal up to rounding), and StyleGAN2-ADA's choice for
    training, since the grouped convolution's backward pass is slow on GPUs.

    Args:
        x: ``(N, I, H, W)`` input.
        weight: ``(O, I, k, k)`` (already scaled) shared weights; ``k`` odd ("same" padding).
        styles: ``(N, I)`` per-sample scales of the input channels.
        demodulate: rescale each sample's output channel to unit expected variance for unit-variance
            input: divide its weights by ``√(Σ_{i,kh,kw} (w·s)² + eps)``.
        fused: the grouped form (see above).
    """
    n, in_channels, h, w = x.shape
    out_channels, _, k, _ = weight.shape
    weights = weight.unsqueeze(0) * styles.view(n, 1, in_channels, 1, 1)  # (N, O, I, k, k)
    if not fused:
        out = F.conv2d(x * styles.view(n, in_channels, 1, 1), weight, padding=k // 2)
        if demodulate:
            out = out * (weights.square().sum(dim=(2, 3, 4)) + eps).rsqrt().view(n, out_channels, 1, 1)
        return out
    if demodulate:
        weights = weights * (weights.square().sum(dim=(2, 3, 4), keepdim=True) + eps).rsqrt()
    out = F.conv2d(x.reshape(1, n * in_channels, h, w), weights.reshape(n * out_channels, in_channels, k, k),
                   padding=k // 2, groups=n)
    return out.reshape(n, out_channels, h, w)


class ModulatedConv2d(nn.Module):
    """Equalised-lr weights modulated by an affine map of w (bias 1 at init: the identity style).

    The grouped (fused) form in eval mode and on the CPU; training on a GPU uses the unfused form
    (:func:`modulated_conv2d`). CPU training keeps the fused form, so CPU runs compute exactly what they
    computed before the unfused form existed (and a resumed CPU run continues them bit for bit)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, style_dim: int, *, demodulate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        fused = not self.training or x.device.type == "cpu"
        return modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), demodulate=self.demodulate, fused=fused)


class SynthesisLayer(nn.Module):
    """(upsample →) modulated 3×3 conv → + strength·noise → + bias → leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, resolution: int, *, up: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution
        self.up = up
        if up:
            self.register_buffer("fir", fir_kernel(UP_GAIN), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = upsample2x(x, self.fir)
        x = self.conv(x, w) + noise * self.noise_strength
        return _lrelu(x + self.bias.view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """1×1 modulated conv without demodulation → image + mask-logit channels."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, 1, 1)


# Generator ----------------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """z (and a class label) → w. Unconditional when ``num_conditions == 0``: the label is ignored."""

    def __init__(self, latent_dim: int, style_dim: int, layers: int, num_conditions: int = 0, lr_mul: float = 0.01) -> None:
        super().__init__()
        self.num_conditions = num_conditions
        self.embed = EqualLinear(num_conditions, style_dim) if num_conditions else None
        widths = [latent_dim + (style_dim if num_conditions else 0)] + [style_dim] * layers
        self.net = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activation=True) for a, b in zip(widths, widths[1:])))

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            label = F.one_hot(condition.long(), self.num_conditions).to(z.dtype)
            x = torch.cat([x, normalize_2nd_moment(self.embed(label))], dim=1)
        return self.net(x)


class SynthesisNetwork(nn.Module):
    """ws ``(N, num_ws, style_dim)`` and one noise map ``(N, 1, r, r)`` per conv layer → ``(N, out, S, S)``."""

    def __init__(self, image_size: int, out_channels: int, style_dim: int, channel_base: int, channel_max: int) -> None:
        super().__init__()
        top = _log2(image_size)
        ch = {2**k: channels_at(2**k, channel_base, channel_max) for k in range(2, top + 1)}
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        layers: list[SynthesisLayer] = [SynthesisLayer(ch[4], ch[4], style_dim, 4, up=False)]
        to_rgb: list[ToRGB] = [ToRGB(ch[4], out_channels, style_dim)]
        for k in range(3, top + 1):
            r = 2**k
            layers += [SynthesisLayer(ch[r // 2], ch[r], style_dim, r, up=True),
                       SynthesisLayer(ch[r], ch[r], style_dim, r, up=False)]
            to_rgb.append(ToRGB(ch[r], out_channels, style_dim))
        self.layers = nn.ModuleList(layers)
        self.to_rgb = nn.ModuleList(to_rgb)
        self.num_ws = len(layers) + 1
        self.noise_shapes: tuple[tuple[int, int, int], ...] = tuple((1, layer.resolution, layer.resolution) for layer in layers)
        self.register_buffer("fir", fir_kernel(UP_GAIN), persistent=False)  # the skip outputs' upsampling

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.layers[0](x, ws[:, 0], noise[0])
        out = self.to_rgb[0](x, ws[:, 1])
        for block, to_rgb in enumerate(self.to_rgb[1:], start=1):
            i = 2 * block - 1  # layer (and w) index of this block's first conv
            x = self.layers[i](x, ws[:, i], noise[i])
            x = self.layers[i + 1](x, ws[:, i + 1], noise[i + 1])
            out = upsample2x(out, self.fir) + to_rgb(x, ws[:, i + 2])
        return out


class Generator(nn.Module):
    """Mapping + synthesis. ``forward(z, condition, noise, z_mix=None, cutoff=None)``: with ``z_mix``,
    sample ``n`` takes w from ``z_mix`` for the layers from ``cutoff[n]`` on (style mixing;
    ``cutoff[n] == num_ws`` keeps one latent)."""

    def __init__(self, image_size: int, num_classes: int, *, latent_dim: int, style_dim: int, mapping_layers: int,
                 channel_base: int, channel_max: int, num_conditions: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.mapping = MappingNetwork(latent_dim, style_dim, mapping_layers, num_conditions)
        self.synthesis = SynthesisNetwork(image_size, 1 + num_classes, style_dim, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.noise_shapes = self.synthesis.noise_shapes
        self.register_buffer("layer_index", torch.arange(self.num_ws), persistent=False)  # style mixing's w indices

    def forward(self, z: torch.Tensor, condition: torch.Tensor, noise: list[torch.Tensor],
                z_mix: torch.Tensor | None = None, cutoff: torch.Tensor | None = None) -> torch.Tensor:
        w = self.mapping(z, condition)
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if z_mix is not None and cutoff is not None:
            w_mix = self.mapping(z_mix, condition)
            later = self.layer_index.view(1, -1) >= cutoff.view(-1, 1)
            ws = torch.where(later.unsqueeze(2), w_mix.unsqueeze(1), ws)
        return self.synthesis(ws, noise)


# Discriminator ------------------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)
        self.register_buffer("fir", fir_kernel(DOWN_GAIN), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(downsample2x(x, self.fir))
        return (skip + self.conv1(self.conv0(x))) * math.sqrt(0.5)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one feature map: the std over groups of ``group`` samples (the largest divisor of N not
    above ``group``), averaged over channels and pixels (Karras et al. 2018)."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (N/g,)
    y = y.to(x.dtype).view(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator on ``(N, channels, S, S)``; one score per sample ``(N, 1)``.
    ``mbstd_group < 2`` drops the minibatch-stddev feature; ``num_conditions > 0``: projection on a
    class embedding (the label must then be given)."""

    def __init__(self, image_size: int, channels: int, *, channel_base: int, channel_max: int, mbstd_group: int = 4,
                 num_conditions: int = 0) -> None:
        super().__init__()
        top = _log2(image_size)
        ch = {2**k: channels_at(2**k, channel_base, channel_max) for k in range(2, top + 1)}
        self.from_rgb = EqualConv2d(channels, ch[image_size], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(ch[2**k], ch[2 ** (k - 1)]) for k in range(top, 2, -1)))
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(ch[4] + (1 if mbstd_group >= 2 else 0), ch[4], 3)
        self.fc = EqualLinear(ch[4] * 16, ch[4], activation=True)
        self.num_conditions = num_conditions
        self.cmap_dim = ch[4]
        self.out = EqualLinear(ch[4], self.cmap_dim if num_conditions else 1)
        self.embed = EqualLinear(num_conditions, self.cmap_dim) if num_conditions else None

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks(self.from_rgb(x))
        if self.mbstd_group >= 2:
            x = minibatch_stddev(x, self.mbstd_group)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.embed is None:
            return x
        if condition is None:
            raise InvalidInput("this discriminator is class-conditioned: pass the condition.")
        cmap = self.embed(F.one_hot(condition.long(), self.num_conditions).to(x.dtype))
        return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
