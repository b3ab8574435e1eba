"""The memorization gate on cohort release: planted copies of training images (exact, flipped,
lightly noised) are caught under each policy, fresh samples pass, and a refused cohort leaves
nothing behind."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.datasets.phantoms import make_phantom, phantom_seed
from medsynth.sampling.backends import InProcessSampler, Sampler
from medsynth.sampling.cohort import read_manifest, regenerate, sample_digests, write_cohort
from medsynth.sampling.gate import GateOptions, ReleaseGate, ReleaseRefused, gate_from_proto, gate_to_proto
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2
from sampling_helpers import PROVENANCE, small_generator

PREFIX = "cohorts/c1/"
AUDIT_KEY = "audits/c1/closest_pairs.png"


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    """36 phantom slices (6 patients × 6 neighbouring slices, each scaled to [0, 1])."""
    slices = []
    for patient in range(6):
        volume = make_phantom(phantom_seed(11, patient), (32, 32, 8))[0]
        for z in range(1, 7):
            s = volume[:, :, z]
            slices.append((s - s.min()) / (s.max() - s.min()))
    return np.stack(slices)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def fresh() -> InProcessSampler:
    small = small_generator()
    return InProcessSampler(small.spec, small.nets)


def planted_copy(train: np.ndarray, index: int) -> np.ndarray:
    """What a memorizing generator draws at sample ``index``: training image ``index`` exact, flipped
    left-right, upside down, or under light noise (σ = 0.01 of the [0, 1] range), by ``index % 4``."""
    image = train[index % len(train)].copy()
    kind = index % 4
    if kind == 1:
        image = image[:, :, ::-1]
    elif kind == 2:
        image = image[:, ::-1, :]
    elif kind == 3:
        noise = np.random.default_rng(index).normal(0.0, 0.01, image.shape)
        image = np.clip(image + noise, 0.0, 1.0)
    return np.ascontiguousarray(image, dtype=np.float32)


class Memorizing(Sampler):
    """A generator that returns a planted copy at the ``planted`` indices and its own fresh sample
    elsewhere (a stand-in for the generator only: the gate, writer and store are the real ones)."""

    def __init__(self, inner: Sampler, train: np.ndarray, planted: Iterable[int]) -> None:
        self.inner, self.train, self.planted = inner, train, set(planted)

    def draw(self, seed: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = list(indices)
        images, masks = self.inner.draw(seed, indices)
        for k, index in enumerate(indices):
            if index in self.planted:
                images[k] = planted_copy(self.train, index)
        return images, masks

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def write(store: LocalStore, sampler: Sampler, train: np.ndarray, count: int = 12, **options: Any) -> dict[str, Any]:
    gate = ReleaseGate.for_training_images(train, GateOptions(**options))
    write_cohort(store, PREFIX, sampler, count=count, seed=3, batch_size=5, provenance=PROVENANCE, gate=gate, audit_key=AUDIT_KEY)
    return read_manifest(store, PREFIX)


def test_fresh_samples_pass_and_the_manifest_records_the_audit(tmp_path, fresh, train) -> None:
    store = LocalStore(tmp_path)
    manifest = write(store, fresh, train)
    release = manifest["release"]
    assert release["policy"] == "filter" and release["flagged"] == 0 and release["draws"] == manifest["draws"] == 12
    assert [s["index"] for s in manifest["samples"]] == list(range(12))
    assert all(not s["memorization"]["flagged"] for s in manifest["samples"])
    assert 0 < release["thresholds"]["pixel"] < release["reference"]["median_train_nn_distance"]
    assert release["reference"]["train_images"] == len(train) and "quantile" in release["thresholds"]["how"]
    assert len(release["worst_pairs"]) == 8 and store.get_bytes(release["closest_pairs"]["key"]).startswith(b"\x89PNG")
    assert not any(k.startswith("audits/") for k in store.list(PREFIX))  # the figure is not in the download


def test_report_marks_planted_copies_and_releases_everything(tmp_path, fresh, train) -> None:
    planted = {1, 4, 6, 11}  # exact (4), hflip (1), vflip (6), noised (11)
    manifest = write(LocalStore(tmp_path), Memorizing(fresh, train, planted), train, policy="report")
    flagged = {s["index"] for s in manifest["samples"] if s["memorization"]["flagged"]}
    assert flagged == planted
    release = manifest["release"]
    assert release["flagged"] == release["released_flagged"] == 4 and release["withheld"] == []
    assert release["fraction_flagged"] == pytest.approx(4 / 12)
    assert {p["index"] for p in release["worst_pairs"][:4]} == planted
    exact = next(p for p in release["worst_pairs"] if p["index"] == 4)
    assert exact["distance"] == 0.0 and exact["train_index"] == 4 and exact["transform"] == "identity"
    assert next(p for p in release["worst_pairs"] if p["index"] == 1)["transform"] == "hflip"


def test_filter_withholds_copies_and_draws_replacements(tmp_path, fresh, train) -> None:
    store = LocalStore(tmp_path)
    planted = {1, 4, 6, 11, 13}  # 13: a replacement draw that is itself a copy
    sampler = Memorizing(fresh, train, planted)
    manifest = write(store, sampler, train)
    released = [s["index"] for s in manifest["samples"]]
    assert len(released) == manifest["count"] == 12 and not set(released) & planted
    assert released == [i for i in range(17) if i not in planted]
    release = manifest["release"]
    assert {w["index"] for w in release["withheld"]} == planted and release["released_flagged"] == 0
    assert manifest["draws"] == 17 and manifest["batches"] == [[0, 5], [5, 10], [10, 15], [15, 17]]
    # a withheld copy's pixels are stored nowhere under the cohort, and a replacement regenerates exactly
    assert not any(k.startswith(f"{PREFIX}samples/00004/") for k in store.list(PREFIX))
    images, masks = regenerate(manifest, sampler, [14])
    assert sample_digests(images[0], masks[0]) == {k: manifest["samples"][-3][k] for k in ("pixels_sha256", "mask_sha256")}
    with pytest.raises(InvalidInput, match="withheld by the memorization gate"):
        regenerate(manifest, sampler, [4])


def test_filter_that_cannot_fill_the_count_fails_and_leaves_nothing(tmp_path, fresh, train) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ReleaseRefused, match="cap of 3 replacement draws"):
        write(store, Memorizing(fresh, train, range(100)), train, count=6, max_extra_draws=0.5)
    assert list(store.list("")) == []


def test_block_fails_above_the_fraction_and_releases_below_it(tmp_path, fresh, train) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ReleaseRefused, match="block"):
        write(store, Memorizing(fresh, train, {3}), train, policy="block")
    assert list(store.list("")) == []
    manifest = write(store, Memorizing(fresh, train, {3}), train, policy="block", max_flagged_fraction=0.1)
    assert manifest["release"]["flagged"] == 1 and len(manifest["samples"]) == 12


def test_blank_training_images_are_left_out_and_a_blank_sample_passes(tmp_path, train) -> None:
    with_blank = np.concatenate([train, np.zeros((2, 1, 32, 32), np.float32)])
    gate = ReleaseGate.for_training_images(with_blank, GateOptions(policy="report"))
    assert gate.reference.n_train == len(train) and gate.n_blank_dropped == 2
    assert gate.check(0, 0, np.zeros((1, 1, 32, 32), np.float32), 1) == [True] and not gate.verdicts[0].flagged


def test_options_through_the_command_and_bad_values() -> None:
    options = GateOptions(policy="block", max_flagged_fraction=0.05)
    assert gate_from_proto(gate_to_proto(options)) == options
    assert gate_from_proto(jobs_pb2.ReleaseGate()) == GateOptions()  # unset: filter with the defaults
    with pytest.raises(InvalidInput, match="policy"):
        gate_from_proto(jobs_pb2.ReleaseGate(policy="ship-it"))
    with pytest.raises(InvalidInput, match="max_flagged_fraction"):
        gate_from_proto(jobs_pb2.ReleaseGate(max_flagged_fraction=1.5))
    with pytest.raises(InvalidInput, match="at least 2 non-blank"):
        ReleaseGate.for_training_images(np.zeros((3, 1, 32, 32), np.float32), GateOptions())
