"""Per-case 3D Dice and HD95 with the empty slices of test patients kept: false positives there count,
the slices of a scan stack back into its volume, and the numbers match MONAI's on hand-made volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from torch import nn

from conftest import NUM_CLASSES, phantom_split
from medsynth.core.errors import InvalidInput
from medsynth.segmentation import evaluate_segmenter

pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning"),
]


class Lookup(nn.Module):
    """Predicts a fixed label map per input image, looked up by the image's bytes."""

    def __init__(self, images: np.ndarray, preds: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.lookup = {img.tobytes(): p for img, p in zip(images, preds)}
        assert len(self.lookup) == len(images), "test images must differ"
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.stack([torch.from_numpy(self.lookup[img.numpy().tobytes()].astype(np.int64)) for img in x])
        return nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()


def _false_positive_on_empty(split: dict[str, np.ndarray]) -> np.ndarray:
    """The true masks, plus a 3×3 organ blob on every slice without foreground."""
    preds = split["masks"].copy()
    for k, m in enumerate(preds):
        if not m.any():
            m[10:13, 10:13] = 1
    return preds


def test_a_false_positive_on_an_empty_slice_costs_dice_now_and_went_unseen_before() -> None:
    seeds = range(200, 204)
    dropped, whole = phantom_split(seeds), phantom_split(seeds, keep_empty=True)
    empty = ~whole["masks"].reshape(len(whole["masks"]), -1).any(axis=1)
    assert empty.sum() > 0 and len(whole["masks"]) == len(dropped["masks"]) + empty.sum()
    preds = _false_positive_on_empty(whole)
    model = Lookup(whole["images"], preds, NUM_CLASSES)

    # The old rule (empty slices dropped from the test split): this segmenter looks perfect.
    old = evaluate_segmenter(model, dropped, NUM_CLASSES, n_boot=20)
    assert old["mean_dice"]["mean"] == 1.0 and old["dice"]["1"]["mean"] == 1.0
    assert old["empty_slices"] == old["false_positive_slices"] == 0

    # Every slice kept: each case loses exactly its false-positive voxels' worth of organ Dice.
    new = evaluate_segmenter(model, whole, NUM_CLASSES, n_boot=20, slice_spacing=2.5)
    assert new["empty_slices"] == new["false_positive_slices"] == int(empty.sum())
    assert new["n_slices"] == len(whole["masks"]) and new["hd95_mode"] == "3d-stack"
    assert new["dice"]["1"]["mean"] < 1.0 and new["mean_dice"]["mean"] < 1.0
    for case in new["per_case"]:
        mine = whole["patients"] == case["patient"]
        organ = int((whole["masks"][mine] == 1).sum())
        fp = 9 * int(empty[mine].sum())
        assert case["n_slices"] == 8 and case["empty_slices"] == int(empty[mine].sum())
        assert case["dice"]["1"] == pytest.approx(2 * organ / (2 * organ + fp))
        assert case["dice"]["1"] < 1.0
        assert case["hd95"]["1"] is not None  # 9 stray voxels are under 5 % of the surface: HD95 shrugs them off, Dice does not
    json.dumps(new, allow_nan=False)


def test_a_class_predicted_where_the_target_has_none_scores_zero_and_says_why_hd95_is_undefined() -> None:
    split = phantom_split([201], keep_empty=True)
    masks = split["masks"].copy()
    masks[masks == 2] = 1  # this patient has no lesion
    split = {**split, "masks": masks}
    preds = masks.copy()
    preds[0, 2:4, 2:4] = 2  # a lesion predicted on the first (empty) slice
    result = evaluate_segmenter(Lookup(split["images"], preds, NUM_CLASSES), split, NUM_CLASSES, n_boot=20, slice_spacing=2.5)
    case = result["per_case"][0]
    assert case["dice"] == {"1": 1.0, "2": 0.0} and case["mean_dice"] == 0.5
    assert case["hd95"] == {"1": 0.0, "2": None} and case["hd95_undefined"] == {"2": "false positive"}
    assert result["hd95_undefined"] == {"1": {}, "2": {"false positive": 1}}
    perfect = evaluate_segmenter(Lookup(split["images"], masks, NUM_CLASSES), split, NUM_CLASSES, n_boot=20, slice_spacing=2.5)
    assert perfect["per_case"][0]["dice"] == {"1": 1.0, "2": None}  # absent from both: no score, not 1
    assert perfect["per_case"][0]["hd95_undefined"] == {"2": "absent"} and perfect["per_case"][0]["mean_dice"] == 1.0


def _box(shape: tuple[int, int, int], z: slice, y: slice, x: slice, label: int, into: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(shape, np.uint8) if into is None else into
    out[z, y, x] = label
    return out


def _hand_made_cases() -> list[dict]:
    """Three patients' (target, prediction) volumes, slices along axis 0, each with its own spacing."""
    shape = (7, 16, 16)
    a_t = _box(shape, slice(1, 5), slice(3, 11), slice(4, 12), 1)
    _box(shape, slice(2, 4), slice(5, 8), slice(6, 9), 2, a_t)
    a_p = _box(shape, slice(2, 6), slice(4, 12), slice(4, 13), 1)  # shifted a slice, a row, grown a column
    _box(shape, slice(2, 4), slice(6, 9), slice(6, 9), 2, a_p)
    _box(shape, slice(0, 1), slice(12, 15), slice(0, 3), 1, a_p)  # organ on an empty end slice: a false positive
    b_t = _box(shape, slice(2, 5), slice(2, 9), slice(2, 9), 1)
    b_p = _box(shape, slice(2, 5), slice(2, 9), slice(3, 10), 1)
    _box(shape, slice(6, 7), slice(1, 3), slice(1, 3), 2, b_p)  # a lesion the patient does not have
    c_t = _box(shape, slice(3, 6), slice(5, 12), slice(5, 12), 1)
    c_p = np.zeros(shape, np.uint8)  # nothing found: organ missed, lesion absent from both
    return [
        {"patient": "a", "target": a_t, "pred": a_p, "spacing": (0.8, 1.2), "slice": 2.5},
        {"patient": "b", "target": b_t, "pred": b_p, "spacing": (0.5, 0.5), "slice": 3.0},
        {"patient": "c", "target": c_t, "pred": c_p, "spacing": (1.0, 0.7), "slice": 1.5},
    ]


def _as_view_split(cases: list[dict], rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Every slice of every case as view items, in shuffled order: split, predictions, spacing, slice spacing."""
    rows = [(c["patient"], k, c["target"][k], c["pred"][k], c["spacing"], c["slice"], c.get("scan", f"{c['patient']}-scan"))
            for c in cases for k in range(len(c["target"]))]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    images = rng.random((len(rows), 1, 16, 16)).astype(np.float32)
    split = {"images": images, "masks": np.stack([r[2] for r in rows]), "patients": np.array([r[0] for r in rows]),
             "scans": np.array([r[6] for r in rows]), "index": np.array([r[1] for r in rows], dtype=np.int32)}
    return split, np.stack([r[3] for r in rows]), np.array([r[4] for r in rows]), np.array([r[5] for r in rows])


def _one_hot(volume: np.ndarray) -> torch.Tensor:
    return nn.functional.one_hot(torch.from_numpy(volume).long(), NUM_CLASSES).movedim(-1, 0)[None].float()


def test_3d_dice_and_hd95_match_monai_on_hand_made_volumes() -> None:
    cases = _hand_made_cases()
    split, preds, spacing, slice_spacing = _as_view_split(cases, np.random.default_rng(0))
    result = evaluate_segmenter(Lookup(split["images"], preds, NUM_CLASSES), split, NUM_CLASSES, spacing,
                                spacing_unit="mm", slice_spacing=slice_spacing, n_boot=20)
    assert [c["patient"] for c in result["per_case"]] == ["a", "b", "c"] and result["hd95_mode"] == "3d-stack"
    for case, made in zip(result["per_case"], cases):
        p, t = _one_hot(made["pred"]), _one_hot(made["target"])
        keep_all = compute_dice(p, t, include_background=False, ignore_empty=False)[0].numpy()
        ignore = compute_dice(p, t, include_background=False, ignore_empty=True)[0].numpy()
        hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95,
                                        spacing=[made["slice"], *made["spacing"]])[0].numpy()  # fmt: skip
        for c in (1, 2):
            ours_dice, ours_hd = case["dice"][str(c)], case["hd95"][str(c)]
            both_empty = not (made["pred"] == c).any() and not (made["target"] == c).any()
            if both_empty:  # NaN here and in MONAI with ignore_empty (MONAI's default); 1.0 with ignore_empty=False
                assert ours_dice is None and math.isnan(ignore[c - 1]) and keep_all[c - 1] == 1.0
            else:  # a false positive or a miss is 0, as MONAI with ignore_empty=False
                assert ours_dice == pytest.approx(float(keep_all[c - 1]), rel=1e-6)
            if math.isfinite(hd[c - 1]):
                assert ours_hd == pytest.approx(float(hd[c - 1]), rel=1e-6)
            else:  # MONAI: NaN (or inf) where either mask is empty
                assert ours_hd is None
    a, b, c = result["per_case"]
    assert 0 < a["dice"]["1"] < 1 and a["hd95"]["1"] > 0 and a["false_positive_slices"] == 2 and a["empty_slices"] == 3  # slices 0, 5, 6; predicted on 0 and 5
    assert a["slice_spacing"] == [2.5] and a["pixel_spacing"] == [[0.8, 1.2]]
    assert b["dice"]["2"] == 0.0 and b["hd95_undefined"] == {"2": "false positive"}
    assert c["dice"] == {"1": 0.0, "2": None} and c["hd95_undefined"] == {"1": "missed", "2": "absent"} and c["mean_dice"] == 0.0
    assert result["hd95_undefined"]["2"] == {"false positive": 1, "absent": 1} and result["hd95_undefined"]["1"] == {"missed": 1}
    # The 3D distance is not the mean of in-plane ones: the slice shift of patient a is seen only in 3D.
    per_slice = evaluate_segmenter(Lookup(split["images"], preds, NUM_CLASSES), split, NUM_CLASSES, spacing, spacing_unit="mm", n_boot=20)
    assert per_slice["hd95_mode"] == "per-slice" and per_slice["per_case"][0]["hd95"]["1"] != pytest.approx(a["hd95"]["1"])
    assert [x["dice"] for x in per_slice["per_case"]] == [x["dice"] for x in result["per_case"]]  # Dice is 3D either way


def test_3d_hd95_takes_each_scan_as_its_own_volume() -> None:
    """A patient with two scans: Dice pools both, HD95 is the mean of the two scans' 3D values."""
    cases = _hand_made_cases()
    one = {**cases[0], "patient": "p", "scan": "p-0"}
    two = {**cases[1], "patient": "p", "scan": "p-1", "spacing": cases[0]["spacing"], "slice": 2.0}
    split, preds, spacing, slice_spacing = _as_view_split([one, two], np.random.default_rng(1))
    result = evaluate_segmenter(Lookup(split["images"], preds, NUM_CLASSES), split, NUM_CLASSES, spacing, spacing_unit="mm",
                                slice_spacing=slice_spacing, n_boot=20)  # fmt: skip
    (case,) = result["per_case"]
    expected = []
    for made in (one, two):
        hd = compute_hausdorff_distance(_one_hot(made["pred"]), _one_hot(made["target"]), include_background=False, percentile=95,
                                        spacing=[made["slice"], *made["spacing"]])[0, 0].item()  # fmt: skip
        expected.append(hd)
    assert case["hd95"]["1"] == pytest.approx(np.mean(expected), rel=1e-6) and case["slice_spacing"] == [2.0, 2.5]
    both_t = np.concatenate([one["target"], two["target"]])
    both_p = np.concatenate([one["pred"], two["pred"]])
    pooled = compute_dice(_one_hot(both_p), _one_hot(both_t), include_background=False, ignore_empty=False)[0, 0].item()
    assert case["dice"]["1"] == pytest.approx(pooled, rel=1e-6)


def test_3d_hd95_refuses_a_scan_with_missing_slices() -> None:
    split = phantom_split([200, 201])  # empty slices dropped: phantom 200 keeps slices 2..5 only, which are contiguous
    model = Lookup(split["images"], split["masks"], NUM_CLASSES)
    evaluate_segmenter(model, split, NUM_CLASSES, n_boot=5, slice_spacing=2.5)  # contiguous: fine
    gap = {**split, "index": np.where(np.arange(len(split["index"])) == 1, split["index"] + 10, split["index"])}
    with pytest.raises(InvalidInput, match="every slice of a scan"):
        evaluate_segmenter(model, gap, NUM_CLASSES, n_boot=5, slice_spacing=2.5)
    with pytest.raises(InvalidInput, match="slice_spacing"):
        evaluate_segmenter(model, split, NUM_CLASSES, n_boot=5, slice_spacing=np.full(len(split["index"]) - 1, 2.5))
    with pytest.raises(InvalidInput, match="slice_spacing"):
        evaluate_segmenter(model, split, NUM_CLASSES, n_boot=5, slice_spacing=-1.0)
    with pytest.raises(InvalidInput, match="index"):
        evaluate_segmenter(model, {k: v for k, v in split.items() if k != "index"}, NUM_CLASSES, n_boot=5, slice_spacing=2.5)
