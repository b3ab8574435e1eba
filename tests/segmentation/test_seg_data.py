"""Batch sampling (real / synthetic / mixed) and image+mask augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.segmentation.augment import GEOMETRY_ONLY, AugmentParams, augment_batch, flip_batch, intensity_batch, warp
from medsynth.segmentation.data import BatchSampler, EpochSampler, Pairs, as_pairs, batch_counts


def _pairs(n: int, value: float) -> Pairs:
    """``n`` 8×8 items whose image is the constant ``value`` and whose mask labels every pixel 1."""
    return Pairs(torch.full((n, 1, 8, 8), value), torch.ones((n, 8, 8), dtype=torch.int64))


@pytest.mark.parametrize(("batch_size", "ratio", "expected"), [(16, 0.5, (8, 8)), (10, 0.25, (8, 2)), (4, 0.01, (3, 1)), (4, 0.99, (1, 3)), (32, 0.75, (8, 24))])
def test_mixed_counts_follow_the_ratio(batch_size, ratio, expected):
    assert batch_counts("mixed", batch_size, ratio) == expected
    assert batch_counts("real", batch_size, ratio) == (batch_size, 0)
    assert batch_counts("synthetic", batch_size, ratio) == (0, batch_size)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mixed_batches_contain_both_sources_at_the_ratio(ratio):
    real, synthetic = _pairs(7, 0.0), _pairs(5, 1.0)  # source recognisable from the image value
    sampler = BatchSampler(real, synthetic, batch_counts("mixed", 8, ratio), np.random.default_rng(0))
    for _ in range(20):
        images, masks, is_syn = sampler.next()
        from_syn = images[:, 0, 0, 0] == 1.0
        assert torch.equal(from_syn, is_syn)
        assert int(from_syn.sum()) == round(8 * ratio)
        assert images.shape == (8, 1, 8, 8) and masks.shape == (8, 8, 8)


def test_single_source_batches_and_missing_cohort():
    real, synthetic = _pairs(7, 0.0), _pairs(5, 1.0)
    images, _, flags = BatchSampler(real, synthetic, batch_counts("real", 6, 0.5), np.random.default_rng(0)).next()
    assert not flags.any() and (images == 0).all()
    images, _, flags = BatchSampler(None, synthetic, batch_counts("synthetic", 6, 0.5), np.random.default_rng(0)).next()
    assert flags.all() and (images == 1).all()
    with pytest.raises(InvalidInput, match="synthetic"):
        BatchSampler(real, None, batch_counts("mixed", 6, 0.5), np.random.default_rng(0))


def test_epoch_sampler_visits_every_item_once_per_pass():
    sampler = EpochSampler(5, np.random.default_rng(1))
    drawn = np.concatenate([sampler.take(3) for _ in range(10)])  # 30 draws = 6 passes
    for p in range(6):
        assert sorted(drawn[5 * p : 5 * p + 5]) == [0, 1, 2, 3, 4]


def test_as_pairs_checks_shapes_and_labels():
    images, masks = np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8)
    assert len(as_pairs({"images": images, "masks": masks}, "x", 3)) == 2
    with pytest.raises(InvalidInput, match=r"x images must have shape \(N, 1, S, S\)"):
        as_pairs((images[:, 0], masks), "x", 3)
    with pytest.raises(InvalidInput, match="x masks must have shape"):
        as_pairs((images, masks[:1]), "x", 3)
    with pytest.raises(InvalidInput, match="x is empty"):
        as_pairs({}, "x", 3)
    with pytest.raises(InvalidInput, match=r"labels 0\.\.5"):
        as_pairs((images, masks + np.uint8(5) * (np.arange(8) == 0)), "x", 3)


def _asymmetric_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 16×16 L-shaped object (labels 1 and 2) whose image intensity is its label / 2."""
    mask = torch.zeros(1, 16, 16, dtype=torch.int64)
    mask[0, 2:12, 3:6] = 1
    mask[0, 9:12, 6:13] = 2
    return mask[:, None].float() / 2, mask


def test_flips_move_image_and_mask_together():
    image, mask = _asymmetric_pair()
    images, masks = image.repeat(64, 1, 1, 1), mask.repeat(64, 1, 1)
    out_img, out_msk = flip_batch(images, masks, torch.Generator().manual_seed(0), p=0.5)
    variants = {tuple(m.flatten().tolist()) for m in out_msk}
    assert len(variants) == 4  # identity, flip H, flip W, both: all drawn in 64 items
    assert torch.equal((out_img[:, 0] * 2).round().long(), out_msk)
    assert torch.equal(images, image.repeat(64, 1, 1, 1))  # inputs untouched


def test_affine_keeps_image_and_mask_aligned():
    image, mask = _asymmetric_pair()
    images, masks = image.repeat(32, 1, 1, 1), mask.repeat(32, 1, 1)
    out_img, out_msk = augment_batch(images, masks, torch.Generator().manual_seed(3), GEOMETRY_ONLY)
    assert not torch.equal(out_msk, masks)
    assert out_msk.dtype == masks.dtype and set(out_msk.unique().tolist()) <= {0, 1, 2}
    # Bilinear image vs nearest mask differ only along edges. Over the union of the two objects the
    # labels agree on ~86% of pixels; a mask left unwarped or taken from another item gets ~20%.
    labels_from_image = (out_img[:, 0] * 2).round().long()
    union = (labels_from_image > 0) | (out_msk > 0)
    agree = ((labels_from_image == out_msk) & union).sum() / union.sum()
    assert agree > 0.75


def test_a_known_rotation_moves_both_the_same_way():
    image, mask = _asymmetric_pair()
    quarter_turn = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    out_img, out_msk = warp(image, mask, quarter_turn)
    assert torch.equal(out_msk, torch.rot90(mask, k=1, dims=(1, 2))) or torch.equal(out_msk, torch.rot90(mask, k=-1, dims=(1, 2)))
    assert torch.allclose(out_img[:, 0] * 2, out_msk.float(), atol=1e-5)


def test_intensity_jitter_changes_images_only_within_0_1():
    image, mask = _asymmetric_pair()
    images = image.repeat(8, 1, 1, 1)
    out = intensity_batch(images, torch.Generator().manual_seed(0), AugmentParams(p_intensity=1.0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)
    _, out_msk = augment_batch(images, mask.repeat(8, 1, 1), torch.Generator().manual_seed(0), AugmentParams(p_flip=0.0, p_affine=0.0, p_intensity=1.0))
    assert torch.equal(out_msk, mask.repeat(8, 1, 1))


def test_augmentation_is_deterministic_by_generator_seed():
    image, mask = _asymmetric_pair()
    images, masks = image.repeat(4, 1, 1, 1), mask.repeat(4, 1, 1)
    a = augment_batch(images, masks, torch.Generator().manual_seed(5))
    b = augment_batch(images, masks, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
