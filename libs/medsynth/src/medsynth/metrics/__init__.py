"""How faithful, useful and safe a synthetic cohort is.

- ``fidelity``: FID and KID from the features of a pluggable extractor (ImageNet Inception-v3 from
  clean-fid's TorchScript file, or an in-domain encoder); the Inception Score from the Inception
  file's class probabilities (an in-domain encoder has none).
- ``segmentation``: per-case Dice and HD95 of a segmentation model, bootstrap summaries.
- ``memorization``: nearest-neighbour audit of synthetic images against the training set.
- ``diversity``: within-cohort versus within-real mean pairwise distance, a mode-collapse check.
- ``manifold``: precision/recall and density/coverage on k-NN manifolds (``ManifoldMetric`` accumulates).
- ``registry``: the fidelity metrics by name with their sample count (``fid2k``, ``precision500``).
- ``reference``: real reference features cached under a hash of the extractor and the images.
- ``statistics``: study statistics (two-level bootstrap, Wilcoxon + Holm, Friedman/Nemenyi, Spearman).
- ``reader``: visual Turing test numbers (accuracy, sensitivity, specificity, exact binomial CIs).

Every fidelity score can be read against a real-versus-real baseline (``heldout_baseline``: real
images of held-out patients against the training images, and the synthetic images at the same count,
through the same extractor).

Pure functions do the arithmetic and can be checked by hand on tiny arrays; every score dictionary
they return names its extractor, preprocessing mode and sample counts.
"""

from __future__ import annotations

from medsynth.metrics.diversity import COLLAPSE_RATIO, diversity_check, mean_pairwise_distance, nearest_neighbour_distances
from medsynth.metrics.fidelity import (
    EncoderExtractor,
    FeatureExtractor,
    InceptionExtractor,
    extract_features,
    feature_statistics,
    fidelity_from_features,
    fidelity_scores,
    frechet_distance,
    heldout_baseline,
    frechet_distance_from_features,
    inception_score,
    kernel_inception_distance,
    real_baseline,
    split_halves,
)
from medsynth.metrics.memorization import AuditResult, memorization_audit
from medsynth.metrics.segmentation import dice_per_class, hd95, per_case_metrics, summarise

__all__ = [
    "COLLAPSE_RATIO",
    "AuditResult",
    "EncoderExtractor",
    "FeatureExtractor",
    "InceptionExtractor",
    "dice_per_class",
    "diversity_check",
    "extract_features",
    "feature_statistics",
    "fidelity_from_features",
    "fidelity_scores",
    "frechet_distance",
    "frechet_distance_from_features",
    "hd95",
    "heldout_baseline",
    "inception_score",
    "kernel_inception_distance",
    "mean_pairwise_distance",
    "memorization_audit",
    "nearest_neighbour_distances",
    "per_case_metrics",
    "real_baseline",
    "split_halves",
    "summarise",
]
