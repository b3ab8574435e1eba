"""Per-case evaluation: slices grouped by patient, metrics per case, JSON-able summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import NUM_CLASSES
from medsynth.core.errors import InvalidInput
from medsynth.segmentation import evaluate_segmenter
from medsynth.segmentation.evaluate import group_cases, pooled_dice


class Oracle(nn.Module):
    """Predicts a fixed label map per input image, looked up by the image's bytes."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.lookup = {img.tobytes(): m for img, m in zip(images, masks)}
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.stack([torch.from_numpy(self.lookup[img.numpy().tobytes()].astype(np.int64)) for img in x])
        return nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()


def test_group_cases_counts_patients_and_orders_slices():
    patients = ["b", "a", "b", "c", "a", "b"]
    scans = ["b1", "a1", "b1", "c1", "a1", "b0"]
    index = [7, 3, 2, 0, 1, 9]
    cases = group_cases(patients, scans, index)
    assert list(cases) == ["a", "b", "c"]
    assert [len(v) for v in cases.values()] == [2, 3, 1]
    assert cases["a"].tolist() == [4, 1]            # index 1 before 3
    assert cases["b"].tolist() == [5, 2, 0]         # scan b0 first, then b1 by index
    with pytest.raises(InvalidInput, match="one entry per item"):
        group_cases(patients, scans[:2], index)


def test_per_case_metrics_of_a_perfect_model(splits):
    test = splits["test"]
    result = evaluate_segmenter(Oracle(test["images"], test["masks"], NUM_CLASSES), test, NUM_CLASSES, n_boot=50)
    patients = sorted(set(test["patients"].tolist()))
    assert result["n_cases"] == len(patients) == 4
    assert [c["patient"] for c in result["per_case"]] == patients
    assert sum(c["n_slices"] for c in result["per_case"]) == len(test["images"])
    for c in result["per_case"]:
        assert c["n_slices"] == int((test["patients"] == c["patient"]).sum())
    assert result["dice"]["1"]["mean"] == 1.0 and result["dice"]["1"]["n"] == 4
    assert result["hd95"]["1"]["mean"] == 0.0
    assert result["mean_dice"]["mean"] == 1.0
    json.dumps(result, allow_nan=False)  # strict JSON: NaN became None


def test_per_case_dice_pools_a_patients_slices(splits):
    test = splits["test"]
    wrong = test["masks"].copy()
    first = group_cases(test["patients"])[sorted(set(test["patients"].tolist()))[0]]
    wrong[first[0]] = 0  # the first patient loses all foreground on one slice
    result = evaluate_segmenter(Oracle(test["images"], wrong, NUM_CLASSES), test, NUM_CLASSES, n_boot=50, slice_spacing=2.5)
    case = result["per_case"][0]
    target = test["masks"][first]
    missed = (test["masks"][first[0]] == 1).sum()
    expected = 2 * ((target == 1).sum() - missed) / (2 * (target == 1).sum() - missed)
    assert case["dice"]["1"] == pytest.approx(expected)
    assert all(c["dice"]["1"] == 1.0 for c in result["per_case"][1:])
    assert result["hd95_mode"] == "3d-stack" and case["hd95"]["1"] > 0


def test_evaluation_needs_patient_ids_and_valid_spacing(splits):
    test = splits["test"]
    oracle = Oracle(test["images"], test["masks"], NUM_CLASSES)
    with pytest.raises(InvalidInput, match="patients"):
        evaluate_segmenter(oracle, {"images": test["images"], "masks": test["masks"]}, NUM_CLASSES)
    with pytest.raises(InvalidInput, match="spacing"):
        evaluate_segmenter(oracle, test, NUM_CLASSES, spacing=(1.0, 0.0))


def test_pooled_dice():
    target = torch.tensor([[0, 1, 1, 2]])
    assert pooled_dice(target, target, 3) == 1.0
    assert pooled_dice(torch.tensor([[0, 1, 0, 0]]), target, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert pooled_dice(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 3) == 1.0
