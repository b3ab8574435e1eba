"""Reference features of real data, cached under a hash of everything that produced them (stylegan2-ada's
idea): the extractor (its name, which for an in-domain encoder names its segmentation run, and its
preprocessing) and the exact real images (a SHA-256 of their array). A study evaluates many cohorts
against the same real images through the same encoder: each computes them once."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable

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
