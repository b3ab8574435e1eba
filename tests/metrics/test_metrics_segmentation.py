"""Dice and HD95 by hand and against MONAI; per-case rows; bootstrap summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from medsynth.core.errors import InvalidInput
from medsynth.metrics.segmentation import dice_per_class, hd95, per_case_metrics, summarise

# MONAI's own warnings: empty masks, and a deprecated argument it passes to itself.
pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning"),
]


# --- Dice -------------------------------------------------------------------------------------


def test_dice_by_hand() -> None:
    pred = np.array([[1, 1, 1], [2, 0, 0]])
    target = np.array([[1, 0, 0], [2, 2, 0]])
    # class 1: |P|=3, |T|=1, |P∩T|=1 → 2/4; class 2: |P|=1, |T|=2, |P∩T|=1 → 2/3; class 3 absent → NaN.
    dice = dice_per_class(pred, target, num_classes=4)
    np.testing.assert_allclose(dice[:2], [0.5, 2 / 3])
    assert math.isnan(dice[2])
    assert dice_per_class(target, target, 3).tolist() == [1.0, 1.0]
    # Present in one only → 0, not NaN.
    assert dice_per_class(np.array([0, 2]), np.array([0, 0]), 3)[1] == 0.0


def _one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).movedim(-1, 1).float()


def test_dice_matches_monai_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 3, size=(6, 16, 16))
    targets = np.where(rng.random((6, 16, 16)) < 0.7, preds, rng.integers(0, 3, size=(6, 16, 16)))
    preds[4][preds[4] == 2] = 0  # class 2 absent from both in case 4
    targets[4][targets[4] == 2] = 0
    targets[5][targets[5] == 2] = 1  # class 2 predicted but absent from the target in case 5
    ours = np.stack([dice_per_class(p, t, 3) for p, t in zip(preds, targets)])
    monai = compute_dice(_one_hot(preds, 3), _one_hot(targets, 3), include_background=False, ignore_empty=False)
    monai = monai.numpy()
    assert math.isnan(ours[4, 1]) and monai[4, 1] == 1.0  # both empty: NaN here, 1.0 in MONAI (ignore_empty=False)
    assert ours[5, 1] == 0.0 == monai[5, 1]
    mask = ~np.isnan(ours)
    np.testing.assert_allclose(ours[mask], monai[mask], rtol=1e-6)
    assert 0.5 < np.nanmean(ours) < 0.95


def test_dice_rejects_bad_labels() -> None:
    with pytest.raises(InvalidInput, match=r"pred has labels \[3\] outside \[0, 3\)"):
        dice_per_class(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(InvalidInput, match="target must be an integer label map, got dtype float64"):
        dice_per_class(np.array([0, 1]), np.array([0.0, 1.0]), 3)
    with pytest.raises(InvalidInput, match=r"\(2,\) and \(3,\)"):
        dice_per_class(np.array([0, 1]), np.array([0, 1, 1]), 3)
    with pytest.raises(InvalidInput, match="num_classes"):
        dice_per_class(np.array([0]), np.array([0]), 1)


# --- HD95 -------------------------------------------------------------------------------------


def _point(shape: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[at] = True
    return mask


@pytest.mark.parametrize(
    ("a", "b", "spacing", "expected"),
    [
        ((2, 4, 4), (5, 4, 4), (2.5, 1.0, 1.0), 7.5),  # offset 3 along axis 0, spacing 2.5
        ((4, 4, 1), (4, 4, 5), (1.0, 1.0, 2.5), 10.0),  # offset 4 along axis 2, spacing 2.5
        ((1, 1), (4, 5), (1.0, 1.0), 5.0),  # 3-4-5 triangle
        ((1, 1), (2, 2), (2.0, 3.0), math.sqrt(13.0)),
    ],
)
def test_hd95_of_single_voxels_by_hand(a: tuple, b: tuple, spacing: tuple, expected: float) -> None:
    shape = (8, 8, 8) if len(a) == 3 else (8, 8)
    assert hd95(_point(shape, a), _point(shape, b), spacing) == pytest.approx(expected)
    assert hd95(_point(shape, b), _point(shape, a), spacing) == pytest.approx(expected)


def test_hd95_of_nested_squares_by_hand() -> None:
    # Surfaces: the 20-voxel ring of a 6x6 square and a 2x2 square in its middle.
    # Ring → inner: 8 side voxels at 2, 8 at sqrt(5), 4 corners at sqrt(8); inner → ring: all 2.
    outer = np.zeros((10, 10), bool)
    outer[2:8, 2:8] = True
    inner = np.zeros((10, 10), bool)
    inner[4:6, 4:6] = True
    assert hd95(outer, inner, (1.0, 1.0)) == pytest.approx(math.sqrt(8))  # P95 of the ring's 20 values
    assert hd95(inner, outer, (1.0, 1.0)) == pytest.approx(math.sqrt(8))  # symmetric
    assert hd95(outer, inner, (1.0, 1.0), percentile=50) == pytest.approx(math.sqrt(5))
    assert hd95(outer, inner, (1.0, 1.0), percentile=0) == pytest.approx(2.0)
    assert hd95(outer, outer, (3.0, 0.5)) == 0.0


def _blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, level: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > level


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((40, 40), (1.0, 1.0)), ((40, 48), (0.7, 2.5)), ((24, 24, 12), (1.0, 1.0, 2.5)), ((20, 24, 16), (0.8, 1.3, 3.0))],
)
def test_hd95_matches_monai_on_random_blobs(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    checked = 0
    for _ in range(4):
        a, b = _blob(rng, shape, 2.0, 0.05), _blob(rng, shape, 2.0, 0.05)  # blobs touch the borders too
        ours = hd95(a, b, spacing)
        monai = compute_hausdorff_distance(
            torch.from_numpy(a)[None, None].float(),
            torch.from_numpy(b)[None, None].float(),
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        ).item()
        assert ours == pytest.approx(monai, rel=1e-5)
        assert ours > 0
        checked += 1
    assert checked == 4


def test_hd95_is_nan_for_empty_masks_like_monai() -> None:
    empty, blob = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    blob[2:5, 2:5] = True
    for a, b in ((empty, blob), (blob, empty), (empty, empty)):
        assert math.isnan(hd95(a, b, (1.0, 1.0)))
        monai = compute_hausdorff_distance(
            torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(),
            include_background=True, percentile=95,
        )
        assert math.isnan(monai.item())


def test_hd95_rejects_bad_spacing_and_shapes() -> None:
    mask = np.ones((4, 4), bool)
    with pytest.raises(InvalidInput, match="spacing must be 2 positive numbers"):
        hd95(mask, mask, (1.0, 1.0, 2.5))
    with pytest.raises(InvalidInput, match="spacing must be 2 positive numbers"):
        hd95(mask, mask, (1.0, 0.0))
    with pytest.raises(InvalidInput, match=r"\(4, 4\) and \(4, 5\)"):
        hd95(mask, np.ones((4, 5), bool), (1.0, 1.0))


# --- per case and summaries -------------------------------------------------------------------


def test_per_case_metrics_rows() -> None:
    rng = np.random.default_rng(1)
    targets = [np.where(_blob(rng, (24, 24), 2.0, 0.1), 1, 0) + _blob(rng, (24, 24), 1.5, 0.3) for _ in range(3)]
    targets = [np.clip(t, 0, 2).astype(np.int64) for t in targets]
    preds = [ndimage.shift(t, (1, 0), order=0, mode="constant") for t in targets]
    preds[2][preds[2] == 2] = 0  # lesion missed in case 2
    rows = per_case_metrics(preds, targets, 3, (1.0, 2.0))
    assert [r["case"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"case", "dice_1", "hd95_1", "dice_2", "hd95_2", "dice_mean"}
    for row, p, t in zip(rows, preds, targets):
        np.testing.assert_allclose([row["dice_1"], row["dice_2"]], dice_per_class(p, t, 3))
        assert row["hd95_1"] == hd95(p == 1, t == 1, (1.0, 2.0))
    assert rows[2]["dice_2"] == 0.0 and math.isnan(rows[2]["hd95_2"])
    assert rows[0]["dice_mean"] == pytest.approx((rows[0]["dice_1"] + rows[0]["dice_2"]) / 2)
    per_case = per_case_metrics(preds, targets, 3, [(1.0, 1.0), (1.0, 2.0), (2.0, 2.0)])
    assert per_case[1]["hd95_1"] == rows[1]["hd95_1"]
    assert per_case[2]["hd95_1"] == pytest.approx(2 * hd95(preds[2] == 1, targets[2] == 1, (1.0, 1.0)))
    with pytest.raises(InvalidInput, match="2 predictions but 3 targets"):
        per_case_metrics(preds[:2], targets, 3, (1.0, 1.0))


def test_summarise_bootstrap_interval() -> None:
    rng = np.random.default_rng(2)
    small = rng.normal(0.8, 0.05, size=20)
    large = rng.normal(0.8, 0.05, size=500)
    s_small, s_large = summarise(small), summarise(large)
    for s, x in ((s_small, small), (s_large, large)):
        assert s["ci_low"] < s["mean"] < s["ci_high"]
        assert s["mean"] == pytest.approx(x.mean())
        assert s["ci_low"] < 0.8 < s["ci_high"]
    width_small = s_small["ci_high"] - s_small["ci_low"]
    width_large = s_large["ci_high"] - s_large["ci_low"]
    assert width_large < width_small / 3  # ~ 1/sqrt(n): sqrt(500/20) = 5
    # The percentile interval approximates mean ± 1.96 s/√n for a normal sample.
    assert width_large == pytest.approx(2 * 1.96 * large.std(ddof=1) / np.sqrt(500), rel=0.15)
    assert summarise(large, seed=3) != summarise(large, seed=4)
    assert summarise(large, seed=3) == summarise(large, seed=3)
    assert summarise(large, ci=0.5)["ci_high"] - summarise(large, ci=0.5)["ci_low"] < width_large


def test_summarise_ignores_nan_and_handles_degenerate_inputs() -> None:
    s = summarise([0.5, np.nan, 0.7, np.nan, 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7)
    assert 0.5 <= s["ci_low"] <= s["ci_high"] <= 0.9
    one = summarise([0.4, np.nan])
    assert (one["mean"], one["ci_low"], one["ci_high"], one["n"]) == (0.4, 0.4, 0.4, 1)
    none = summarise([np.nan, np.nan])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["ci_low"])
    with pytest.raises(InvalidInput, match="ci must lie strictly between 0 and 1, got 95"):
        summarise([1.0], ci=95)
