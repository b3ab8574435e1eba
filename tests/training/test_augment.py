"""DiffAugment on joint image + mask batches: shapes, differentiability, channel semantics."""

from __future__ import annotations

import torch

from medsynth.generators.augment import _color, _cutout, _translation, diff_augment


def _joint(n: int = 4, size: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch whose image channel is ``2 * foreground - 1`` and whose mask is one-hot foreground."""
    g = torch.Generator().manual_seed(seed)
    fg = (torch.rand(n, 1, size, size, generator=g) > 0.6).to(dtype)
    return torch.cat([2 * fg - 1, 1 - fg, fg], dim=1)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_and_determinism() -> None:
    x = _joint()
    out = diff_augment(x, _gen())
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, diff_augment(x, _gen()))
    assert not torch.equal(out, diff_augment(x, _gen(2)))


def test_differentiable() -> None:
    x = _joint().requires_grad_(True)
    diff_augment(x, _gen()).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradcheck() -> None:
    x = _joint(n=2, size=8, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, _gen()), (x,))


def test_color_touches_only_the_image_channel() -> None:
    x = _joint()
    out = _color(x, _gen())
    assert torch.equal(out[:, 1:], x[:, 1:])
    assert not torch.equal(out[:, :1], x[:, :1])


def test_translation_and_cutout_move_image_and_mask_together() -> None:
    x = _joint(n=8)
    for transform in (_translation, _cutout):
        out = transform(x, _gen())
        assert not torch.equal(out, x)
        # image and mask still agree pixel for pixel; filled pixels are background in both
        assert torch.equal(out[:, :1], 2 * out[:, 2:3] - 1)
        assert torch.equal(out[:, 1:].sum(dim=1), torch.ones_like(out[:, 0]))


def test_cutout_fills_background() -> None:
    x = torch.cat([torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)], dim=1)
    out = _cutout(x, _gen())
    filled = out[:, 0] == -1
    assert filled.any(dim=(1, 2)).all()  # every sample lost a square
    assert torch.equal(out[:, 1][filled], torch.ones(int(filled.sum())))
