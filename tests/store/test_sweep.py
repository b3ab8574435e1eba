"""A write killed midway leaves a ``.tmp-`` file in the local store; services sweep such leftovers
when they start, and only those old enough not to be a write still running."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medsynth.core.settings import Settings
from medsynth.store import open_service_store
from medsynth.store.local import TEMP_PREFIX, LocalStore


def test_old_partial_writes_are_swept_and_young_ones_and_objects_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("cohorts/c1/samples/00000/image.nii.gz", b"image")
    folder = tmp_path / "store" / "cohorts" / "c1" / "samples" / "00000"
    old, young = folder / f"{TEMP_PREFIX}dead", folder / f"{TEMP_PREFIX}writing"
    old.write_bytes(b"half")
    young.write_bytes(b"half")
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.sweep_abandoned() == 1
    assert not old.exists() and young.exists()
    assert store.get_bytes("cohorts/c1/samples/00000/image.nii.gz") == b"image"
    assert list(store.list("")) == ["cohorts/c1/samples/00000/image.nii.gz"]


def test_a_service_store_is_swept_when_it_opens(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    root = settings.local_store_root
    (root / "jobs").mkdir(parents=True)
    leftover = root / "jobs" / f"{TEMP_PREFIX}x"
    leftover.write_bytes(b"")
    os.utime(leftover, (0, 0))
    open_service_store(settings)
    assert not leftover.exists()
