"""Segmentation networks (MONAI 2D UNet, SwinUNETR) and their encoders.

``encoder(model)`` returns the network's contracting path as an ``nn.Module`` that maps
``(N, 1, S, S)`` images to a feature map, for use as an in-domain feature extractor (e.g. FID
between real and synthetic images). It *shares* parameters with ``model`` (no copy): put it in
``eval()`` and under ``torch.no_grad()`` for feature extraction, and ``copy.deepcopy`` it if the
segmenter is to be trained further.

How the MONAI UNet is cut. ``monai.networks.nets.UNet`` keeps everything in ``model.model``, built
recursively as::

    Sequential(down_0, SkipConnection(<inner>), up_0)
    <inner> = Sequential(down_1, SkipConnection(<inner'>), up_1) | bottom

where ``down_i`` is a strided ``ResidualUnit`` (or ``Convolution``), ``SkipConnection`` concatenates
its input with its submodule's output, ``up_i`` is the transposed-convolution decoder block and
``bottom`` the unstrided innermost unit. The encoder is ``Sequential(down_0, down_1, ..., bottom)``:
follow ``[1].submodule`` while it is again a 3-element ``Sequential`` whose middle element is a
``SkipConnection``; the first non-matching submodule is the bottom. With the default channels
``(16, 32, 64, 128)`` and strides ``(2, 2, 2)`` it yields ``(N, 128, S/8, S/8)``.

For SwinUNETR the encoder is its Swin transformer backbone (``model.swinViT``) returning the last,
deepest hidden state: ``(N, 16 * feature_size, S/32, S/32)``.
"""

from __future__ import annotations

import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import SwinUNETR, UNet
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.segmentation.config import SegmentationSpec

NUM_RES_UNITS = 1
SWIN_MIN_SIZE = 64


def build_model(spec: SegmentationSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` (uses the global torch RNG for initialisation)."""
    if spec.model == "unet":
        return UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=spec.num_classes,
            channels=spec.channels,
            strides=(2,) * (len(spec.channels) - 1),
            num_res_units=NUM_RES_UNITS,
        )
    if spec.model == "swin-unetr":
        _require_einops()
        return SwinUNETR(in_channels=1, out_channels=spec.num_classes, feature_size=spec.swin_feature_size, spatial_dims=2)
    raise InvalidInput(f"unknown model {spec.model!r}.")  # unreachable: the spec checks it


def check_image_size(spec: SegmentationSpec, size: int) -> None:
    """Raise InvalidInput if the model cannot take ``size``×``size`` images.

    The UNet needs multiples of ``2 ** (len(channels) - 1)``; SwinUNETR multiples of 32 and at least
    64 (at 32 its deepest map is 1×1, which its instance norms reject in training mode).
    """
    if size % spec.size_divisor:
        raise InvalidInput(f"model {spec.model!r} needs an image size divisible by {spec.size_divisor}, got {size}.")
    if spec.model == "swin-unetr" and size < SWIN_MIN_SIZE:
        raise InvalidInput(f"model 'swin-unetr' needs images of at least {SWIN_MIN_SIZE}×{SWIN_MIN_SIZE}, got {size}×{size}.")


def _require_einops() -> None:
    """MONAI's SwinUNETR imports einops lazily and fails on first use without it; fail early instead."""
    try:
        import einops  # noqa: F401
    except ImportError as exc:
        raise InvalidInput("model 'swin-unetr' needs the 'einops' package, which is not installed.") from exc


class _SwinEncoder(nn.Module):
    def __init__(self, model: SwinUNETR) -> None:
        super().__init__()
        self.swin = model.swinViT
        self.normalize = model.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin(x, self.normalize)[-1]


def encoder(model: nn.Module) -> nn.Module:
    """The contracting path of a UNet or SwinUNETR (sharing its parameters); see the module docs.

    Args:
        model: a network built by :func:`build_model` (or any MONAI ``UNet`` / ``SwinUNETR``).

    Returns:
        A module mapping ``(N, 1, S, S)`` to the deepest feature map ``(N, C, S/d, S/d)``.
    """
    if isinstance(model, UNet):
        return nn.Sequential(*_unet_down_path(model.model))
    if isinstance(model, SwinUNETR):
        return _SwinEncoder(model)
    raise InvalidInput(f"encoder() needs a MONAI UNet or SwinUNETR, got {type(model).__name__}.")


def _is_level(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], SkipConnection)


def _unet_down_path(root: nn.Module) -> list[nn.Module]:
    if not _is_level(root):
        raise InvalidInput("unexpected MONAI UNet layout: its top level is not Sequential(down, SkipConnection, up).")
    layers: list[nn.Module] = []
    node = root
    while _is_level(node):
        layers.append(node[0])
        node = node[1].submodule
    layers.append(node)  # the bottom unit
    return layers
