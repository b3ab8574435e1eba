"""Reference features of real data, cached under a hash of everything that produced them (stylegan2-ada's
idea): the extractor (its name, which for an in-domain encoder names its segmentation run, and its
preprocessing) and the exact real images (a SHA-256 of their array). A study evaluates many cohorts
against the same real images through the same encoder: each computes them once.

The reference extractor itself is a finished real-only segmentation run (its encoder):
:func:`reference_run_problem` says why a run cannot be one for a cohort (the evaluation request's
check, a 422, and the evaluation job's own, so that a command built elsewhere cannot score through the
wrong yardstick either)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medsynth.store import ObjectStore

PREFIX = "evaluations/reference/"


def images_digest(images: np.ndarray) -> str:
    array = np.ascontiguousarray(images)
    head = json.dumps({"dtype": str(array.dtype), "shape": list(array.shape)}).encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def reference_key(extractor_name: str, preprocessing: str, digest: str) -> str:
    text = json.dumps({"extractor": extractor_name, "preprocessing": preprocessing, "images": digest}, sort_keys=True)
    return f"{PREFIX}{hashlib.sha256(text.encode()).hexdigest()}.npy"


def cached_features(store: ObjectStore, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """The features stored under ``key``, or ``compute()`` stored there; and whether they were cached."""
    if store.exists(key):
        return np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False), True
    features = compute()
    out = io.BytesIO()
    np.save(out, features, allow_pickle=False)
    store.put_bytes(key, out.getvalue())
    return features, False


def reference_run_problem(run: Mapping[str, Any], run_id: str, dataset: str, view_id: str) -> str | None:
    """Why the segmentation run ``run_id`` (``run``: its ``metrics.json``, or its command's fields
    ``source``, ``dataset``, ``view_id``) cannot give the feature extractor for a cohort whose generator
    learned from ``view_id`` of ``dataset``; None when it can. The extractor must have learned from real
    data only (a run on synthetic data would measure the cohort with its own kind of images), and
    from the same view: another view's encoder has seen other images, at another size or slicing, and
    its numbers would look valid and not be."""
    source = run.get("source")
    if source != "real":
        return (f"reference run {run_id} was trained on {source or 'unrecorded'} data; the FID extractor must be a "
                "real-only segmentation run (source real)")
    if run.get("dataset") != dataset:
        return (f"reference run {run_id} was trained on dataset {run.get('dataset')!r}; the cohort's generator learned "
                f"from dataset {dataset!r}")
    if run.get("view_id") != view_id:
        return (f"reference run {run_id} was trained on view {run.get('view_id')}; the cohort's generator learned "
                f"from view {view_id}")
    return None
