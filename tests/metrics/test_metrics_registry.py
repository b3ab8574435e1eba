"""Metrics by name with their sample count: names, subsets, and the pure functions behind them."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.metrics.fidelity import frechet_distance_from_features
from medsynth.metrics.manifold import precision_recall
from medsynth.metrics.registry import METRICS, compute_metric, metric_name, parse_metric_name


def test_names_carry_the_sample_count() -> None:
    assert metric_name("fid", 2000) == "fid2k" and metric_name("fid", 500) == "fid500" and metric_name("kid", 2500) == "kid2500"
    assert parse_metric_name("fid2k") == ("fid", 2000) and parse_metric_name("precision500") == ("precision", 500)
    for name in METRICS:
        assert parse_metric_name(metric_name(name, 3000)) == (name, 3000)
    for bad in ("fid", "fidk", "mse2k", "fid1", "FID2k"):
        with pytest.raises(InvalidInput, match="metric name"):
            parse_metric_name(bad)


def test_values_are_the_pure_functions_on_the_named_count() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 8)), rng.normal(0.3, 1.0, size=(80, 8))
    whole = compute_metric("fid300", real, fake)
    assert whole["value"] == pytest.approx(frechet_distance_from_features(real, fake)) and (whole["n_real"], whole["n_fake"]) == (300, 80)
    sub = compute_metric("precision50", real, fake, seed=3)
    assert (sub["n_real"], sub["n_fake"]) == (50, 50) and sub["higher_is_better"] is True
    keep = np.random.default_rng(3)
    r = real[np.sort(keep.choice(300, 50, replace=False))]
    f = fake[np.sort(keep.choice(80, 50, replace=False))]
    assert sub["value"] == pytest.approx(precision_recall(r, f, 3)[0])
    assert compute_metric("precision50", real, fake, seed=3) == sub  # seeded
