"""t-SNE on features with a known structure: separate clusters stay separate, the fit improves, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.metrics.embedding import joint_p, kl_divergence, tsne


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, 12))
    labels = np.repeat(np.arange(3), 40)
    return centres[labels] + rng.normal(0, 1, (120, 12)), labels


def test_separate_clusters_stay_separate_and_the_map_fits_better_than_at_the_start() -> None:
    x, labels = _clusters()
    y = tsne(x, perplexity=20, seed=1)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.97  # each point's nearest neighbour in the map is from its cluster
    p = joint_p(x, 20)
    start = np.random.default_rng(1).normal(0, 1e-4, (120, 2))
    assert kl_divergence(p, y) < 0.5 * kl_divergence(p, start)
    assert np.array_equal(tsne(x, perplexity=20, seed=1), y)  # seeded


def test_the_neighbourhoods_match_the_perplexity() -> None:
    # each row of the conditional P has entropy log(perplexity): 2**H = perplexity (within the search tolerance)
    from medsynth.metrics.embedding import _conditional_p

    x, _ = _clusters(2)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    p = _conditional_p(d2 / np.median(d2), 15.0)
    rows = p[p.sum(1) > 0]
    entropy = -(rows * np.log(np.where(rows > 0, rows, 1.0))).sum(1)
    assert np.exp(entropy) == pytest.approx(15.0, rel=1e-3)


def test_bad_input() -> None:
    with pytest.raises(InvalidInput, match="t-SNE needs"):
        tsne(np.zeros((3, 4)))


def test_against_scikit_learns_exact_tsne() -> None:
    """The in-house t-SNE against scikit-learn's (method="exact"), an independent implementation: the same joint
    P for a perplexity, the same KL(P || Q) of a map, and a map of about the same quality (KL within 10 %,
    trustworthiness within 0.02) on features with a known structure."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.manifold import TSNE, trustworthiness
    from sklearn.manifold._t_sne import _joint_probabilities

    x, _ = _clusters()
    reference_p = squareform(_joint_probabilities(squareform(pdist(x, "sqeuclidean")), 20.0, 0))
    p = joint_p(x, 20.0)
    off_diagonal = ~np.eye(len(x), dtype=bool)
    # both binary searches stop within 1e-5 of the entropy log(perplexity): the same P to about that
    assert np.abs(p - reference_p)[off_diagonal].max() < 1e-4 * reference_p.max()
    reference = TSNE(perplexity=20, method="exact", init="random", random_state=1)
    y_reference = reference.fit_transform(x)
    assert kl_divergence(p, y_reference) == pytest.approx(reference.kl_divergence_, rel=1e-3)  # the same objective
    y = tsne(x, perplexity=20, seed=1)
    assert kl_divergence(p, y) < 1.1 * reference.kl_divergence_
    assert trustworthiness(x, y, n_neighbors=10) > trustworthiness(x, y_reference, n_neighbors=10) - 0.02
