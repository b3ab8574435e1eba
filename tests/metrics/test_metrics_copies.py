"""Copies in disguise (medsynth.metrics.copies): phantom slices planted under every disguise the
gate bench plants — shifted, flipped, turned, rescaled, cropped, re-toned, noised — are flagged
against the training slices they copy; slices of other patients are not; a copied mask is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.bench.gate import DISGUISES, disguise
from medsynth.core.errors import InvalidInput
from medsynth.metrics.copies import CopyAudit, check_threshold

from pipeline_fixtures import phantom_slices

SIZE = 64


def slices(patients: range, depth: tuple[int, ...] = (2, 3, 4, 5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return phantom_slices(patients, SIZE, depth)


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return slices(range(10))  # 40 slices of 10 patients


@pytest.fixture(scope="module")
def images(train) -> CopyAudit:
    return CopyAudit.of_images(train[0], train[2])


@pytest.fixture(scope="module")
def masks(train) -> CopyAudit:
    return CopyAudit.of_masks(train[1], train[2])


@pytest.mark.parametrize("kind", list(DISGUISES))
def test_every_disguise_of_a_training_slice_is_flagged(train, images: CopyAudit, kind: str) -> None:
    sources = np.arange(0, 40, 3)  # 14 slices of all 10 patients
    planted, _ = disguise(kind, train[0][sources], train[1][sources], np.random.default_rng(7))
    verdict = images.audit(planted)
    assert verdict.flagged.all(), (kind, verdict.distance / images.threshold)
    # the match is the slice copied, or a neighbouring slice of its patient
    assert (train[2][verdict.index] == train[2][sources]).all()


def test_slices_of_other_patients_are_not_flagged(images: CopyAudit, masks: CopyAudit) -> None:
    other, other_masks, _ = slices(range(10, 16), depth=(1, 2, 3, 4, 5, 6))  # 36 slices of 6 unseen patients
    verdict = images.audit(other)
    assert not verdict.flagged.any() and (verdict.distance > images.threshold).all()
    mask_verdict = masks.audit(other_masks)
    assert mask_verdict.audited.any() and not mask_verdict.flagged.any()


def test_an_exact_copy_is_at_distance_zero_and_the_pose_is_found(train, images: CopyAudit) -> None:
    planted, _ = disguise("hflip", train[0][[5]], train[1][[5]], np.random.default_rng(0))
    verdict = images.audit(planted)
    assert verdict.index[0] == 5 and verdict.distance[0] < 1e-6 and verdict.poses[0].describe() == "hflip"
    turned, _ = disguise("rotate ±10°", train[0][[9]], train[1][[9]], np.random.default_rng(0))
    pose = images.audit(turned).poses[0]
    assert abs(abs(pose.angle) - 10.0) < 1.0 and pose.flip == 0


@pytest.mark.parametrize("kind", ["exact", "hflip", "vflip", "shift 2 px"])
def test_a_copied_training_mask_is_flagged(train, masks: CopyAudit, kind: str) -> None:
    big = np.flatnonzero((train[1] > 0).reshape(len(train[1]), -1).mean(axis=1) >= 0.02)[:8]
    _, copied = disguise(kind, train[0][big], train[1][big], np.random.default_rng(3))
    verdict = masks.audit(copied)
    assert verdict.audited.all() and verdict.flagged.all(), verdict.distance / masks.threshold


def test_masks_too_small_to_tell_apart_are_not_audited(train, masks: CopyAudit) -> None:
    tiny = np.zeros((2, SIZE, SIZE), np.uint8)
    tiny[0, 30:32, 30:32] = 1  # 4 pixels: any other patient's speck matches it
    verdict = masks.audit(tiny)
    assert not verdict.audited.any() and not verdict.flagged.any() and np.isnan(verdict.distance).all()
    assert masks.summary()["min_pixels"] == int(np.ceil(0.01 * SIZE * SIZE))


def test_the_calibration_is_across_patients_and_the_summary_says_what_was_searched(train, images: CopyAudit) -> None:
    summary = images.summary()
    assert summary["reference"] == {"searched": 40, "of": 40, "fraction_searched": 1.0, "left_out": "blank (constant) images"}
    assert summary["calibration"]["n"] == 40 and "other patients" in summary["calibration"]["how"]
    assert 0 < images.threshold == pytest.approx(0.8 * summary["calibration"]["quantile_distance"])
    # without patient ids each slice stands for its own patient: its neighbours then calibrate it, and the threshold is lower
    alone = CopyAudit.of_images(train[0])
    assert alone.threshold < images.threshold and "no patient ids" in alone.summary()["calibration"]["how"]


@pytest.mark.parametrize(("ratio", "quantile", "named"), [(1.0, 0.01, "threshold_ratio"), (0.0, 0.01, "threshold_ratio"),
                                                           (0.5, 1.0, "threshold_quantile"), (0.5, -0.1, "threshold_quantile")])
def test_a_threshold_outside_0_1_is_refused_naming_it(train, ratio: float, quantile: float, named: str) -> None:
    with pytest.raises(InvalidInput, match=f"{named} must lie strictly between 0 and 1"):
        check_threshold(ratio, quantile)
    with pytest.raises(InvalidInput, match=named):
        CopyAudit.of_images(train[0], train[2], threshold_ratio=ratio, threshold_quantile=quantile)


def test_small_images_and_a_single_patient_still_audit(train) -> None:
    """Images smaller than the search needs are enlarged first; a training set of one patient has no
    other to calibrate against, so each image stands for its own (the summary says so)."""
    small = train[0][:, :, ::4, ::4]  # 16 × 16
    audit = CopyAudit.of_images(small, train[2])
    copies, _ = disguise("hflip", small[:4], train[1][:4, ::4, ::4], np.random.default_rng(0))
    assert audit.audit(copies).flagged.all() and audit.summary()["reference"]["searched"] == 40
    alone = CopyAudit.of_images(train[0], np.array(["p0"] * 40))
    assert "one patient only" in alone.summary()["calibration"]["how"] and alone.audit(train[0][:2]).flagged.all()


def test_bad_inputs_are_refused(train) -> None:
    with pytest.raises(InvalidInput, match="patients must give"):
        CopyAudit.of_images(train[0], train[2][:3])
    with pytest.raises(InvalidInput, match="at least 2 non-blank"):
        CopyAudit.of_images(np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(InvalidInput, match="integer label maps"):
        CopyAudit.of_masks(train[1] + 0.5, train[2])
