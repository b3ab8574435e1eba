"""Diversity check: mean pairwise distance against scipy; a collapsed cohort triggers the
mode-collapse warning although the memorization audit passes it; real-like cohorts do not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from medsynth.core.errors import InvalidInput
from medsynth.metrics.diversity import COLLAPSE_RATIO, diversity_check, mean_pairwise_distance, nearest_neighbour_distances
from medsynth.metrics.fidelity import split_halves
from medsynth.metrics.memorization import memorization_audit
from medsynth.datasets.phantoms import make_phantom


def _phantoms(seeds: range) -> np.ndarray:
    images = [make_phantom(s, shape=(64, 64), spacing=(1.0, 1.0))[0] for s in seeds]
    return np.clip(np.stack(images) / 1000.0, 0.0, 1.0)[:, None].astype(np.float32)


def _pooled(images: np.ndarray) -> np.ndarray:
    """8×8 average pooling: a crude stand-in for an extractor's features."""
    return images.reshape(len(images), 8, 8, 8, 8).mean(axis=(2, 4)).reshape(len(images), -1)


def _checkerboard_cohort(n: int, seed: int = 0) -> np.ndarray:
    """One checkerboard of random grey levels (8×8-pixel cells), repeated n times with faint noise."""
    rng = np.random.default_rng(seed)
    board = np.kron(rng.uniform(0.0, 1.0, size=(8, 8)), np.ones((8, 8)))
    noise = rng.normal(0.0, 0.01, size=(n, 64, 64))
    return np.clip(board + noise, 0.0, 1.0)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return _phantoms(range(60))


def test_mean_pairwise_distance_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 11)) * 3 + 100  # a large offset: the Gram route must stay accurate
    mean, n = mean_pairwise_distance(x)
    assert n == 37 and mean == pytest.approx(pdist(x).mean(), rel=1e-10)
    assert mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == (5.0, 2)  # by hand
    assert mean_pairwise_distance(np.ones((5, 3)))[0] == 0.0


def test_mean_pairwise_distance_subsamples_with_a_seed() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    mean, n = mean_pairwise_distance(x, max_items=150, seed=4)
    keep = np.sort(np.random.default_rng(4).choice(300, 150, replace=False))
    assert n == 150 and mean == pytest.approx(pdist(x[keep]).mean(), rel=1e-10)
    assert mean == pytest.approx(pdist(x).mean(), rel=0.05)  # an unbiased estimate of the same mean
    assert mean_pairwise_distance(x, max_items=150, seed=4) == (mean, n)


def test_nearest_neighbour_distances_match_scipy() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5)) + 50
    expected = np.sort(squareform(pdist(x)) + np.diag(np.full(40, np.inf)), axis=1)[:, 0]
    np.testing.assert_allclose(nearest_neighbour_distances(x), expected, rtol=1e-9)
    twins = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(nearest_neighbour_distances(twins), [0.0, 0.0, 5.0])


def test_identical_checkerboard_cohort_passes_memorization_but_warns_of_collapse(real: np.ndarray) -> None:
    cohort = _checkerboard_cohort(40)
    # The failure this check exists for: no sample is a near-copy of a training image...
    assert memorization_audit(cohort, real, features_synth=_pooled(cohort), features_train=_pooled(real)).fraction_flagged == 0.0
    # ...yet the samples are all alike.
    patients = np.array([f"p{i // 3}" for i in range(len(real))])
    a, b, _ = split_halves(len(real), patients)
    result = diversity_check(cohort, real, features_synth=_pooled(cohort), features_real=_pooled(real), halves=(a, b), feature_extractor="pool8")
    assert result["mode_collapse"] is True
    assert result["pixel"]["ratio"] < 0.2 * COLLAPSE_RATIO and result["feature"]["ratio"] < 0.2 * COLLAPSE_RATIO
    assert "mode collapse" in result["warning"] and "pixel ratio" in result["warning"] and "feature ratio" in result["warning"]
    # The pixel numbers are RMS pixel differences, checked against scipy.
    flat = cohort.reshape(40, -1).astype(np.float64)
    assert result["pixel"]["synthetic"] == pytest.approx(pdist(flat).mean() / 64, rel=1e-8)
    assert result["pixel"]["n_synthetic"] == 40 and result["pixel"]["n_real"] == 60
    assert result["feature"]["extractor"] == "pool8"
    assert 0.8 < result["pixel"]["real_baseline_ratio"] < 1.25  # two real halves are about as diverse


def test_a_real_like_cohort_raises_no_warning(real: np.ndarray) -> None:
    fresh = _phantoms(range(1000, 1040))
    result = diversity_check(fresh, real, features_synth=_pooled(fresh), features_real=_pooled(real))
    assert result["mode_collapse"] is False and result["warning"] is None
    assert 0.8 < result["pixel"]["ratio"] < 1.25 and 0.8 < result["feature"]["ratio"] < 1.25
    assert result["pixel"]["duplicate_fraction"] < 0.05 and result["feature"]["duplicate_fraction"] < 0.05
    assert result["pixel"]["real_baseline_ratio"] is None  # no halves given


def test_collapse_onto_a_few_modes_is_caught_by_the_duplicate_fraction(real: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    modes = real[[0, 11, 23, 37]]  # four real images, each repeated with faint noise
    cohort = np.clip(np.repeat(modes, 10, axis=0) + rng.normal(0, 0.002, size=(40, 1, 64, 64)), 0, 1).astype(np.float32)
    result = diversity_check(cohort, real)
    assert result["feature"] is None
    # Four modes keep the mean pairwise distance at ~(1 - 1/4) of real: the ratio alone misses it...
    assert result["pixel"]["ratio"] > COLLAPSE_RATIO
    # ...but every sample has a near-twin closer than almost any two real images.
    assert result["pixel"]["duplicate_fraction"] == 1.0 and result["pixel"]["n_nearest_neighbour"] == 40
    assert result["pixel"]["median_nn_synthetic"] < result["pixel"]["duplicate_threshold"] < result["pixel"]["median_nn_real"]
    assert result["mode_collapse"] and "duplicate fraction 100%" in result["warning"]
    assert diversity_check(cohort, real, duplicate_warn=1.0)["mode_collapse"] is False


def test_bad_inputs_are_named(real: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="differ in size"):
        diversity_check(np.zeros((3, 1, 32, 32)), real)
    with pytest.raises(InvalidInput, match="N >= 2"):
        diversity_check(real[:1], real)
    with pytest.raises(InvalidInput, match="both features_synth and features_real"):
        diversity_check(real[:5], real, features_synth=np.zeros((5, 3)))
    with pytest.raises(InvalidInput, match="max_items"):
        mean_pairwise_distance(np.zeros((4, 2)), max_items=1)
