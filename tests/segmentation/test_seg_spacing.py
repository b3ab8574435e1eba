"""HD95 in millimetres: the pixel spacing of view items (by hand and against the view's own resize),
and per-item spacing in evaluate_segmenter (against MONAI's compute_hausdorff_distance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from torch import nn

from conftest import NUM_CLASSES
from medsynth.core.errors import InvalidInput
from medsynth.datasets.views import resize_square
from medsynth.metrics.segmentation import hd95
from medsynth.segmentation import evaluate_segmenter
from medsynth.segmentation.evaluate import group_cases
from medsynth.segmentation.spacing import slice_pixel_spacing, view_pixel_spacing

pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning"),
]


@pytest.mark.parametrize(
    ("shape", "spacing", "axis", "size", "expected"),
    [
        ((48, 32, 10), (0.8, 1.2, 3.0), 2, 64, (0.8 * 48 / 64, 1.2 * 48 / 64)),  # rows 48 > cols 32: side 48
        ((48, 32, 10), (0.8, 1.2, 3.0), -1, 64, (0.6, 0.9)),  # negative axis as np.take reads it
        ((48, 32, 10), (0.8, 1.2, 3.0), 0, 64, (1.2 * 32 / 64, 3.0 * 32 / 64)),  # in-plane axes 1, 2
        ((48, 32, 10), (0.8, 1.2, 3.0), 1, 16, (0.8 * 48 / 16, 3.0 * 48 / 16)),  # in-plane axes 0, 2
        ((40, 20), (0.5, 0.7), 0, 32, (0.5 * 40 / 32, 0.7 * 40 / 32)),  # a 2D scan ignores the axis
    ],
)
def test_slice_pixel_spacing_by_hand(shape, spacing, axis, size, expected) -> None:
    assert slice_pixel_spacing(shape, spacing, axis, size) == pytest.approx(expected)


def test_view_spacing_gives_the_source_distance_in_mm_through_resize_square() -> None:
    """A structure shifted by a known number of millimetres in the source slice is measured at that
    distance in the resized view with the derived spacing (within a view pixel), not in pixels."""
    shape, spacing, size = (48, 32), (0.8, 1.2), 64
    target, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    target[10:30, 8:20] = 1
    pred[16:36, 11:23] = 1  # 6 rows (4.8 mm) and 3 columns (3.6 mm) away
    # By hand, the classic Hausdorff distance is corner to corner: (35, 22) to (29, 19).
    assert hd95(pred, target, spacing, percentile=100) == pytest.approx(math.hypot(4.8, 3.6), abs=1e-9)
    source_mm = hd95(pred, target, spacing)
    image = np.zeros(shape, np.float32)
    _, view_target = resize_square(image, target, size)
    _, view_pred = resize_square(image, pred, size)
    view_spacing = slice_pixel_spacing(shape, spacing, axis=2, size=size)
    ours = hd95(view_pred, view_target, view_spacing)
    monai = compute_hausdorff_distance(
        torch.from_numpy(view_pred)[None, None].float(), torch.from_numpy(view_target)[None, None].float(),
        include_background=True, percentile=95, spacing=list(view_spacing),
    ).item()  # fmt: skip
    assert ours == pytest.approx(monai, rel=1e-6)
    assert ours == pytest.approx(source_mm, abs=max(view_spacing))
    assert hd95(view_pred, view_target, view_spacing, percentile=100) == pytest.approx(6.0, abs=max(view_spacing))
    assert abs(hd95(view_pred, view_target, (1.0, 1.0)) - source_mm) > 1.0  # pixels are not millimetres


def test_view_pixel_spacing_per_item_and_its_fallbacks() -> None:
    view = {"spec": {"mode": "slices2d", "size": 32, "axis": 2}}
    scans = {"a": {"shape": [40, 32, 8], "spacing": [0.7, 1.1, 2.5]}, "b": {"shape": [16, 16, 4], "spacing": [1.0, 1.0, 3.0]}}
    out = view_pixel_spacing(view, scans, np.array(["a", "b", "a"]))
    np.testing.assert_allclose(out, [[0.875, 1.375], [0.5, 0.5], [0.875, 1.375]])

    class Entry:  # manifest ScanEntry objects work too (attributes, not keys)
        shape, spacing = [40, 32, 8], [0.7, 1.1, 2.5]

    np.testing.assert_allclose(view_pixel_spacing(view, {"a": Entry()}, ["a"]), [[0.875, 1.375]])
    assert view_pixel_spacing(view, scans, ["a", "missing"]) is None
    assert view_pixel_spacing({"spec": {**view["spec"], "mode": "patches3d"}}, scans, ["a"]) is None
    assert view_pixel_spacing({}, scans, ["a"]) is None


class ShiftedOracle(nn.Module):
    """Predicts each test image's true mask shifted by one row, looked up by the image's bytes."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.lookup = {img.tobytes(): np.roll(m, 1, axis=0) for img, m in zip(images, masks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.stack([torch.from_numpy(self.lookup[img.numpy().tobytes()].astype(np.int64)) for img in x])
        return nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()


def test_per_item_spacing_gives_monai_hd95_in_mm(splits) -> None:
    test = splits["test"]
    oracle = ShiftedOracle(test["images"], test["masks"])
    cases = group_cases(test["patients"], test["scans"], test["index"])
    spacing = np.empty((len(test["images"]), 2))
    for k, idx in enumerate(cases.values()):  # one spacing per patient, all different
        spacing[idx] = (0.5 + 0.25 * k, 0.75 + 0.5 * k)
    result = evaluate_segmenter(oracle, test, NUM_CLASSES, spacing, spacing_unit="mm", n_boot=20)
    assert result["hd95_unit"] == "mm"
    for case, (pid, idx) in zip(result["per_case"], cases.items()):
        assert case["patient"] == pid and case["pixel_spacing"] == [list(spacing[idx[0]])]
        pred = np.stack([oracle.lookup[test["images"][i].tobytes()] for i in idx])
        values = []
        for p, t, sp in zip(pred == 1, test["masks"][idx] == 1, spacing[idx]):
            if p.any() or t.any():
                values.append(compute_hausdorff_distance(
                    torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float(),
                    include_background=True, percentile=95, spacing=list(sp),
                ).item())  # fmt: skip
        finite = [v for v in values if math.isfinite(v)]
        assert case["hd95"]["1"] == pytest.approx(np.mean(finite), rel=1e-6)
        assert case["hd95"]["1"] > 0
    pixels = evaluate_segmenter(oracle, test, NUM_CLASSES, n_boot=20)
    assert pixels["hd95_unit"] == "px" and pixels["per_case"][0]["pixel_spacing"] == [[1.0, 1.0]]
    assert pixels["per_case"][0]["hd95"]["1"] != pytest.approx(result["per_case"][0]["hd95"]["1"])
    # Dice does not depend on the spacing.
    assert [c["dice"] for c in pixels["per_case"]] == [c["dice"] for c in result["per_case"]]


def test_per_item_spacing_is_checked(splits) -> None:
    test = splits["test"]
    oracle = ShiftedOracle(test["images"], test["masks"])
    n = len(test["images"])
    with pytest.raises(InvalidInput, match=rf"\({n}, 2\) array"):
        evaluate_segmenter(oracle, test, NUM_CLASSES, np.ones((n - 1, 2)))
    with pytest.raises(InvalidInput, match="spacing_unit"):
        evaluate_segmenter(oracle, test, NUM_CLASSES, spacing_unit="inch")
    mixed = np.ones((n, 2))
    mixed[0] = (2.0, 2.0)  # one slice of the first patient differs
    with pytest.raises(InvalidInput, match="one in-plane spacing per case"):
        evaluate_segmenter(oracle, test, NUM_CLASSES, mixed, slice_spacing=2.5)
