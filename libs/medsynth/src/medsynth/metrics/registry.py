"""Fidelity metrics by name, with the sample count in the name (stylegan2-ada's ``fid50k``): ``fid2k``
is FID on at most 2,000 images a side, ``precision500`` precision on at most 500. The name says what
a number can be compared with: scores of one name, on one extractor, are comparable; ``fid2k`` and
``fid10k`` are not (FID falls as samples grow).

Each entry is a pure function of two feature arrays; ``compute_metric`` subsamples both sides (seeded)
to the count in the name and records name, extractor-independent counts and value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput
from medsynth.metrics.fidelity import frechet_distance_from_features, kernel_inception_distance
from medsynth.metrics.manifold import density_coverage, precision_recall


@dataclass(frozen=True)
class Metric:
    compute: Callable[[np.ndarray, np.ndarray, int], float]
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    "fid": Metric(lambda r, f, seed: frechet_distance_from_features(r, f), False, "Fréchet distance of feature Gaussians"),
    "kid": Metric(lambda r, f, seed: kernel_inception_distance(r, f, max_subset_size=min(1000, len(r), len(f)), seed=seed), False,
                  "unbiased kernel MMD² (cubic polynomial kernel), subset-averaged"),
    "precision": Metric(lambda r, f, seed: precision_recall(r, f, 3)[0], True, "share of synthetic samples on the real manifold (k=3)"),
    "recall": Metric(lambda r, f, seed: precision_recall(r, f, 3)[1], True, "share of real samples on the synthetic manifold (k=3)"),
    "density": Metric(lambda r, f, seed: density_coverage(r, f, 5)[0], True, "real neighbourhoods per synthetic sample / k (k=5)"),
    "coverage": Metric(lambda r, f, seed: density_coverage(r, f, 5)[1], True, "share of real neighbourhoods reached (k=5)"),
}

_NAME = re.compile(r"^([a-z]+?)(\d+)(k?)$")


def metric_name(metric: str, n: int) -> str:
    """``fid`` at 2000 samples → ``fid2k``; at 500 → ``fid500``."""
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    return f"{metric}{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{metric}{n}"


def parse_metric_name(name: str) -> tuple[str, int]:
    """``fid2k`` → ``("fid", 2000)``; a name without a count or of an unknown metric is refused."""
    match = _NAME.match(name)
    if not match or match.group(1) not in METRICS or int(match.group(2)) < 2:
        raise InvalidInput(f"a metric name is a metric and a sample count, e.g. fid2k or precision500; got {name!r} "
                           f"(metrics: {sorted(METRICS)})")
    return match.group(1), int(match.group(2)) * (1000 if match.group(3) else 1)


def compute_metric(name: str, real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """The named metric on at most its count of samples a side (a seeded subset where there are more)."""
    metric, n = parse_metric_name(name)
    rng = np.random.default_rng(seed)
    pick = lambda x: x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]  # noqa: E731
    r, f = pick(np.asarray(real)), pick(np.asarray(fake))
    return {"name": name, "metric": metric, "value": float(METRICS[metric].compute(r, f, seed)), "n_real": len(r), "n_fake": len(f),
            "higher_is_better": METRICS[metric].higher_is_better}
