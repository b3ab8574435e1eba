"""Memorisation audit: planted copies are flagged, fresh phantoms are not."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.metrics.memorization import TRANSFORMS, memorization_audit
from medsynth.datasets.phantoms import make_phantom


def _phantoms(seeds: range) -> np.ndarray:
    images = [make_phantom(s, shape=(64, 64), spacing=(1.0, 1.0))[0] for s in seeds]
    return np.clip(np.stack(images) / 1000.0, 0.0, 1.0)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return _phantoms(range(60))


@pytest.fixture(scope="module")
def fresh() -> np.ndarray:
    return _phantoms(range(1000, 1040))  # same distribution, not in the training set


def _planted(train: np.ndarray) -> tuple[np.ndarray, list[int], list[str]]:
    rng = np.random.default_rng(0)
    noisy = np.clip(train[[17, 19]] + rng.normal(0.0, 0.02, size=(2, 1, 64, 64)), 0, 1).astype(np.float32)
    copies = np.concatenate(
        [
            train[[3, 7]],  # exact
            train[[11]][..., ::-1],  # horizontal flip
            train[[13]][..., ::-1, :],  # vertical flip
            train[[5]][..., ::-1, ::-1],  # both (180° rotation)
            noisy,  # small Gaussian noise, σ = 0.02 (~9% of the image's standard deviation)
        ]
    )
    transforms = ["identity", "identity", "hflip", "vflip", "hvflip", "identity", "identity"]
    return copies, [3, 7, 11, 13, 5, 17, 19], transforms


def test_planted_copies_are_flagged_and_fresh_samples_are_not(train: np.ndarray, fresh: np.ndarray) -> None:
    copies, sources, transforms = _planted(train)
    synthetic = np.concatenate([fresh[:20], copies, fresh[20:]])
    planted_at = np.arange(20, 20 + len(copies))
    result = memorization_audit(synthetic, train)

    assert result.flagged[planted_at].all()
    assert result.nn_index[planted_at].tolist() == sources
    assert [TRANSFORMS[t] for t in result.nn_transform[planted_at]] == transforms
    assert not np.delete(result.flagged, planted_at).any()
    assert result.fraction_flagged == pytest.approx(7 / 47)
    assert result.summary()["n_flagged"] == 7 and result.summary()["n_train"] == 60
    # Exact copies sit at distance 0; flips at rounding level; noisy copies well inside the threshold.
    assert result.nn_distance[20] == 0.0 and result.nn_distance[21] == 0.0
    assert result.nn_distance[22:25].max() < 1e-5
    assert 0.01 < result.nn_distance[25:27].max() < result.threshold
    # Fresh samples are as far from the training set as training images are from each other.
    fresh_d = np.delete(result.nn_distance, planted_at)
    assert fresh_d.min() > 2 * result.threshold
    assert np.median(fresh_d) == pytest.approx(np.median(result.train_nn_distance), rel=0.25)


def test_threshold_follows_the_documented_rule(train: np.ndarray, fresh: np.ndarray) -> None:
    result = memorization_audit(fresh, train, threshold_quantile=0.1, threshold_ratio=0.8)
    assert result.threshold == pytest.approx(0.8 * np.quantile(result.train_nn_distance, 0.1))
    assert (result.flagged == (result.nn_distance <= result.threshold)).all()
    assert "0.8 x quantile" in result.rule and "0.1" in result.rule
    # Train-to-train excludes the image itself (and its flips): distances are positive.
    assert result.train_nn_distance.min() > 0.1
    # A ratio large enough flags everything; the fraction follows.
    loose = memorization_audit(fresh, train, threshold_quantile=1.0, threshold_ratio=10.0)
    assert loose.fraction_flagged == 1.0


def test_worst_pairs_are_the_closest_pairs_in_order(train: np.ndarray, fresh: np.ndarray) -> None:
    copies, sources, _ = _planted(train)
    synthetic = np.concatenate([fresh[:10], copies])
    worst = memorization_audit(synthetic, train).worst_pairs(3)
    assert worst[:2] == [(10, 3, 0.0), (11, 7, 0.0)]  # the exact copies, ties in index order
    assert (worst[2][0], worst[2][1]) in {(12, 11), (13, 13), (14, 5)}  # then a flipped copy
    pairs = memorization_audit(synthetic, train).worst_pairs(100)
    assert len(pairs) == len(synthetic)
    assert {s for s, _, _ in pairs[:7]} == set(range(10, 17))


def test_feature_space_flags_what_pixels_miss(train: np.ndarray, fresh: np.ndarray) -> None:
    def pooled(images: np.ndarray) -> np.ndarray:  # 8x8 average pooling: a crude noise-robust feature
        return images.reshape(len(images), 8, 8, 8, 8).mean(axis=(2, 4)).reshape(len(images), -1)

    rng = np.random.default_rng(1)
    # σ = 0.07 (not clipped, so the noise stays zero-mean): pixel distance ~0.29, ~2x the pixel
    # threshold; pooling averages the noise away, leaving ~half the feature threshold.
    very_noisy = (train[[23]] + rng.normal(0.0, 0.07, size=(1, 1, 64, 64))).astype(np.float32)
    synthetic = np.concatenate([fresh[:10], very_noisy])
    result = memorization_audit(synthetic, train, features_synth=pooled(synthetic), features_train=pooled(train))
    assert not result.flagged_pixel[10]  # the noise hides it in pixel space
    assert result.flagged_feature[10] and result.feature_nn_index[10] == 23
    assert result.flagged.tolist() == [False] * 10 + [True]
    assert result.worst_pairs(1, space="feature")[0][:2] == (10, 23)
    assert result.summary()["n_flagged_feature"] == 1


def test_chunking_does_not_change_the_result(train: np.ndarray, fresh: np.ndarray) -> None:
    copies, _, _ = _planted(train)
    synthetic = np.concatenate([fresh[:15], copies])
    a = memorization_audit(synthetic, train, chunk_size=512)
    b = memorization_audit(synthetic[:, 0], train[:, 0], chunk_size=7)  # (N, H, W) input too
    assert (a.nn_index == b.nn_index).all() and (a.flagged == b.flagged).all()
    np.testing.assert_allclose(a.nn_distance, b.nn_distance, atol=1e-12)
    np.testing.assert_allclose(a.train_nn_distance, b.train_nn_distance, atol=1e-12)


def test_duplicated_training_images_are_each_others_neighbours(train: np.ndarray) -> None:
    with_duplicate = np.concatenate([train[:10], train[[4]]])
    result = memorization_audit(train[:2], with_duplicate)
    assert result.train_nn_distance[4] == 0.0 and result.train_nn_distance[10] == 0.0
    assert result.train_nn_distance[:4].min() > 0


def test_bad_inputs_are_named(train: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match=r"differ in size: \(32, 32\) vs \(64, 64\)"):
        memorization_audit(np.zeros((2, 1, 32, 32)), train)
    with pytest.raises(InvalidInput, match=r"at least 2 training images \(for train-to-train distances\), got 1"):
        memorization_audit(train[:3], train[:1])
    with pytest.raises(InvalidInput, match="both features_synth and features_train"):
        memorization_audit(train[:3], train, features_synth=np.zeros((3, 4)))
    with pytest.raises(InvalidInput, match=r"features_train must have shape \(60, D\)"):
        memorization_audit(train[:3], train, features_synth=np.zeros((3, 4)), features_train=np.zeros((5, 4)))
    with pytest.raises(InvalidInput, match="threshold_quantile"):
        memorization_audit(train[:3], train, threshold_quantile=5)
    with pytest.raises(InvalidInput, match="finite"):
        memorization_audit(np.full((2, 64, 64), np.nan), train)


def test_the_cohort_audit_searches_the_whole_training_split_and_says_so(train: np.ndarray, fresh: np.ndarray) -> None:
    """The evaluation's audit (cohort_audit): copies in disguise of any training image — a shift the
    pixel rule misses, a mask copied beside a fresh image — are flagged; the section says the search
    covered every training image and the feature space only the subsample it was given."""
    from medsynth.metrics.memorization import cohort_audit

    masks = np.stack([make_phantom(s, shape=(64, 64), spacing=(1.0, 1.0))[1] for s in range(60)])
    patients = np.array([f"p{i // 2}" for i in range(60)])  # two images a patient
    shifted = np.ascontiguousarray(np.roll(train[[21]], 3, axis=-1))  # moved 3 px: missed by the pixel rule
    cohort = np.concatenate([fresh[:6], shifted])
    cohort_masks = np.concatenate([np.zeros((5, 64, 64), np.uint8), masks[[30]], masks[[21]]])  # sample 5: a copied mask
    subsample = np.arange(0, 60, 2)
    features = cohort.reshape(len(cohort), -1)[:, ::64], train.reshape(60, -1)[subsample, ::64]
    feature_audit = memorization_audit(cohort, train[subsample], features_synth=features[0], features_train=features[1])
    section = cohort_audit(cohort, cohort_masks, train, masks, patients, feature_audit=feature_audit, feature_train=subsample,
                           feature_extractor="every 64th pixel")  # fmt: skip
    assert section["copies"]["image"]["reference"]["fraction_searched"] == 1.0 and section["n_train"] == 60
    assert section["feature_space"]["fraction_searched"] == 0.5 and "30 of 60 training images (50.0%)" in section["searched"]
    assert "copies in disguise: 60 of 60 training images (100.0%" in section["searched"]
    assert section["n_flagged_image"] >= 1 and section["n_flagged_mask"] >= 1 and section["n_synthetic"] == 7
    pair = next(p for p in section["worst_pairs"] if p["synthetic"] == 6)
    assert pair["train"] == 21 and "shift" in pair["transform"]
    assert section["fraction_flagged"] >= 2 / 7


def test_the_cohort_audit_histograms_where_a_cohort_sits_between_copies_and_new_patients(train: np.ndarray, fresh: np.ndarray) -> None:
    """nn_distances: the cohort's, held-out patients' and the training images' own nearest-training
    distances on shared bins; a cohort of copies piles up at 0, left of the threshold, where held-out
    patients do not; the evaluation report draws the three (issue 26, item 5)."""
    from medsynth.metrics.memorization import cohort_audit, nn_histograms
    from medsynth.metrics.report import nn_histogram_svg

    patients = np.array([f"p{i // 2}" for i in range(60)])
    copies = np.ascontiguousarray(train[:20])
    section = cohort_audit(copies, None, train, None, patients, heldout_images=fresh[:30])
    hist = section["nn_distances"]
    groups = hist["groups"]
    assert set(groups) == {"synthetic", "held-out real", "training (other patients)"}
    assert groups["synthetic"]["n"] == 20 and groups["held-out real"]["n"] == 30
    assert all(sum(g["counts"]) == g["n"] for g in groups.values()) and len(hist["edges"]) == len(groups["synthetic"]["counts"]) + 1
    assert groups["synthetic"]["median"] == pytest.approx(0.0, abs=1e-6) and groups["synthetic"]["counts"][0] == 20
    assert groups["held-out real"]["median"] > hist["threshold"] > 0  # new patients are not copies
    assert hist["threshold"] == section["threshold"]
    without = cohort_audit(copies, None, train, None, patients)  # no held-out images: the cohort and training only
    assert set(without["nn_distances"]["groups"]) == {"synthetic", "training (other patients)"}
    svg = nn_histogram_svg(hist)
    assert svg.count("<polyline") == 3 and "held-out real (n 30" in svg and "stroke-dasharray" in svg
    assert nn_histogram_svg(None) == ""
    outlier = nn_histograms({"a": np.array([0.1, 0.2, 0.3, 50.0, np.inf])}, threshold=0.15, bins=4)
    assert outlier["groups"]["a"]["n"] == 4 and sum(outlier["groups"]["a"]["counts"]) == 4  # inf left out, 50 in the last bin
