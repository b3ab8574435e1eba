"""Precision/recall and density/coverage against a case worked by hand and a loop-by-loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.metrics.manifold import ManifoldMetric, density_coverage, knn_radii, precision_recall

# 1-D points: real 0, 1, 2, 10 and synthetic 0.5, 5, 20 (worked in the comments below)
REAL = np.array([[0.0], [1.0], [2.0], [10.0]])
FAKE = np.array([[0.5], [5.0], [20.0]])


def test_a_case_worked_by_hand() -> None:
    # k = 1: real radii 1, 1, 1, 8 (10's nearest is 2); synthetic radii 4.5, 4.5, 15
    assert knn_radii(REAL, 1).tolist() == [1.0, 1.0, 1.0, 8.0]
    assert knn_radii(FAKE, 1).tolist() == [4.5, 4.5, 15.0]
    precision, recall = precision_recall(REAL, FAKE, k=1)
    assert precision == pytest.approx(2 / 3)  # 0.5 is within 1 of 0; 5 within 8 of 10; 20 is 10 from 10 > 8
    assert recall == 1.0  # 0, 1, 2 within 4.5 of 0.5; 10 within 15 of 20
    density, coverage = density_coverage(REAL, FAKE, k=1)
    assert density == pytest.approx((2 + 1 + 0) / 3)  # 0.5 in the balls of 0 and 1; 5 in 10's; 20 in none
    assert coverage == pytest.approx(3 / 4)  # the balls of 0, 1 and 10 hold a synthetic sample; 2's does not


def _reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """The papers' definitions, one pair of points at a time."""
    def radius(points, i):
        return sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)[k - 1]

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    inside = [[np.linalg.norm(fake[j] - real[i]) <= r_real[i] for i in range(len(real))] for j in range(len(fake))]
    precision = np.mean([any(row) for row in inside])
    recall = np.mean([any(np.linalg.norm(real[i] - fake[j]) <= r_fake[j] for j in range(len(fake))) for i in range(len(real))])
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = np.mean([any(inside[j][i] for j in range(len(fake))) for i in range(len(real))])
    return precision, recall, density, coverage


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_the_definitions_on_random_features(k: int) -> None:
    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(60, 4)), rng.normal(0.4, 1.3, size=(45, 4))
    precision, recall = precision_recall(real, fake, k)
    density, coverage = density_coverage(real, fake, k)
    assert (precision, recall, density, coverage) == pytest.approx(_reference(real, fake, k))


def test_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(70, 3)), rng.normal(size=(50, 3))
    whole = precision_recall(real, fake, 3), density_coverage(real, fake, 5)
    monkeypatch.setattr("medsynth.metrics.manifold.BLOCK", 16)
    assert (precision_recall(real, fake, 3), density_coverage(real, fake, 5)) == whole


def test_accumulating_metric_names_its_extractor_and_counts() -> None:
    metric = ManifoldMetric("in-domain unet encoder", k_pr=1, k_dc=1)
    metric.update(real=REAL[:2], fake=FAKE[:1])
    metric.update(real=REAL[2:], fake=FAKE[1:])
    rows = {r["metric"]: r for r in metric.aggregate()}
    assert rows["precision"]["value"] == pytest.approx(2 / 3) and rows["coverage"]["value"] == pytest.approx(0.75)
    assert all(r["extractor"] == "in-domain unet encoder" and r["n_real"] == 4 and r["n_fake"] == 3 for r in rows.values())
    metric.reset()
    with pytest.raises(InvalidInput, match="needs real and synthetic"):
        metric.aggregate()


def test_bad_input_is_named() -> None:
    with pytest.raises(InvalidInput, match="k should be between 1 and"):
        precision_recall(REAL, FAKE, k=4)
    with pytest.raises(InvalidInput, match="differ in width"):
        density_coverage(REAL, np.zeros((3, 2)))
    with pytest.raises(InvalidInput, match="NaN"):
        precision_recall(REAL, np.array([[np.nan], [1.0]]), k=1)
