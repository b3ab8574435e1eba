"""Deterministic train / validation / test split by patient — never by slice."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from medsynth.core.errors import InvalidInput

SPLITS = ("train", "val", "test")


def split_patients(patients: Iterable[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Assign each patient to one split.

    Patients are ordered by a seeded hash of their id (so the split does not depend on upload order and
    adding a patient moves few others), then the first ``round(n * test_fraction)`` go to test, the next
    ``round(n * val_fraction)`` to validation and the rest to train. A non-zero fraction gets at least
    one patient whenever that still leaves one for training.
    """
    ids = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise InvalidInput(
            f"val_fraction and test_fraction must be in [0, 1) and sum below 1, got {val_fraction} and {test_fraction}."
        )
    n = len(ids)
    if n == 0:
        raise InvalidInput("cannot split a dataset with no patients.")
    n_test = _count(n, test_fraction, room=n - 1)
    n_val = _count(n, val_fraction, room=n - 1 - n_test)
    assignment = {p: "test" for p in ids[:n_test]}
    assignment.update({p: "val" for p in ids[n_test : n_test + n_val]})
    assignment.update({p: "train" for p in ids[n_test + n_val :]})
    return assignment


def _count(n: int, fraction: float, room: int) -> int:
    if fraction <= 0 or room <= 0:
        return 0
    return min(max(1, round(n * fraction)), room)
