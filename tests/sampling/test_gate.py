"""The memorization gate on cohort release: planted copies of training images (exact, flipped,
lightly noised) and of training masks are caught under each policy, fresh samples pass, and a
refused cohort leaves nothing behind. (Copies in every disguise: tests/metrics/test_metrics_copies.py.)"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.sampling.backends import InProcessSampler, Sampler
from medsynth.sampling.cohort import read_manifest, regenerate, sample_digests, write_cohort
from medsynth.sampling.gate import GateOptions, ReleaseGate, ReleaseRefused, gate_from_proto, gate_to_proto
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2
from pipeline_fixtures import phantom_slices
from sampling_helpers import PROVENANCE, small_generator

PREFIX = "cohorts/c1/"
AUDIT_KEY = "audits/c1/closest_pairs.png"


@pytest.fixture(scope="module")
def view() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """36 phantom slices: 6 patients × 6 neighbouring slices (images, masks, patients)."""
    return phantom_slices(range(6), 32, range(1, 7))


@pytest.fixture(scope="module")
def train(view) -> np.ndarray:
    return view[0]


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
    elsewhere (a stand-in for the generator only: the gate, writer and store are the real ones).
    With ``masks``, it plants a copy of training mask ``index`` (beside its own fresh image) instead."""

    def __init__(self, inner: Sampler, train: np.ndarray, planted: Iterable[int], masks: np.ndarray | None = None) -> None:
        self.inner, self.train, self.planted, self.masks = inner, train, set(planted), masks

    def draw(self, seed: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = list(indices)
        images, masks = self.inner.draw(seed, indices)
        for k, index in enumerate(indices):
            if index in self.planted and self.masks is None:
                images[k] = planted_copy(self.train, index)
            elif index in self.planted:
                masks[k] = self.masks[index % len(self.masks)][:, ::-1] if index % 2 else self.masks[index % len(self.masks)]
        return images, masks

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def write(store: LocalStore, sampler: Sampler, train: np.ndarray, count: int = 12, *, view=None, **options: Any) -> dict[str, Any]:
    """A cohort through the gate over ``train`` (with the masks and patients of ``view`` when given)."""
    extra = {"masks": view[1], "patients": view[2]} if view is not None else {}
    gate = ReleaseGate.for_training_images(train, GateOptions(**options), **extra)
    write_cohort(store, PREFIX, sampler, count=count, seed=3, batch_size=5, provenance=PROVENANCE, gate=gate, audit_key=AUDIT_KEY)
    return read_manifest(store, PREFIX)


def test_fresh_samples_pass_and_the_manifest_records_the_audit(tmp_path, fresh, train) -> None:
    store = LocalStore(tmp_path)
    manifest = write(store, fresh, train)
    release = manifest["release"]
    assert release["policy"] == "filter" and release["flagged"] == 0 and release["draws"] == manifest["draws"] == 12
    assert [s["index"] for s in manifest["samples"]] == list(range(12))
    assert all(not s["memorization"]["flagged"] for s in manifest["samples"])
    image = release["audits"]["image"]
    assert 0 < release["thresholds"]["image"] == image["threshold"] < image["calibration"]["median_distance"]
    assert release["reference"]["train_images"] == len(train) and "quantile" in release["thresholds"]["how"]
    assert image["reference"]["fraction_searched"] == 1.0 and "rotations" in image["search"] and "mask" not in release["audits"]
    assert release["masks_not_audited"] == "no training masks"
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


def test_a_copied_training_mask_is_flagged_beside_a_fresh_image(tmp_path, fresh, view) -> None:
    """A released training mask is patient data: a draw whose mask copies one (as is, or flipped) is
    flagged by its mask, though its image is the generator's own."""
    images, masks, _ = view
    big = [i for i in range(len(masks)) if (masks[i] > 0).mean() >= 0.02]
    planted = {1, 4}  # mask big[1] flipped left-right, mask big[4] as is
    manifest = write(LocalStore(tmp_path), Memorizing(fresh, images, planted, masks=masks[big]), images, view=view, policy="report")
    release = manifest["release"]
    flagged = {s["index"] for s in manifest["samples"] if s["memorization"]["flagged"]}
    assert flagged == planted and release["flagged_by_mask"] == 2 and release["flagged_by_image"] == 0
    copies = {p["index"]: p for p in release["worst_pairs"] if p["index"] in planted}
    assert copies[4]["mask_distance"] == 0.0 and copies[4]["mask_flagged"] and not copies[4]["image_flagged"]
    assert copies[1]["mask_transform"] == "hflip" and copies[1]["mask_train_index"] == big[1]
    assert "mask" in release["audits"] and release["masks_audited"] >= 2
    assert store_png(tmp_path, release)


def store_png(root, release: dict[str, Any]) -> bool:
    return LocalStore(root).get_bytes(release["closest_pairs"]["key"]).startswith(b"\x89PNG")


def test_masks_too_small_to_audit_leave_the_images_audited(view) -> None:
    images, masks, patients = view
    specks = np.zeros_like(masks)
    specks[:, 10, 10] = 1  # one labelled pixel each: too small to audit
    gate = ReleaseGate.for_training_images(images, GateOptions(policy="report"), masks=specks, patients=patients)
    assert gate.masks is None and "large enough" in gate.masks_not_audited
    assert gate.check(0, 0, images[:2], 2, masks=specks[:2]) == [True, True] and all(v.flagged for v in gate.verdicts)


def test_blank_training_images_are_left_out_and_a_blank_sample_passes(tmp_path, train) -> None:
    with_blank = np.concatenate([train, np.zeros((2, 1, 32, 32), np.float32)])
    gate = ReleaseGate.for_training_images(with_blank, GateOptions(policy="report"))
    assert gate.images.n_reference == len(train) and gate.images.n_total - gate.images.n_reference == 2
    assert gate.check(0, 0, np.zeros((1, 1, 32, 32), np.float32), 1) == [True] and not gate.verdicts[0].flagged


def test_options_through_the_command_and_bad_values() -> None:
    options = GateOptions(policy="block", max_flagged_fraction=0.05, threshold_ratio=0.6, threshold_quantile=0.05)
    assert gate_from_proto(gate_to_proto(options)) == options
    assert gate_from_proto(jobs_pb2.ReleaseGate()) == GateOptions()  # unset: filter with the defaults
    with pytest.raises(InvalidInput, match="policy"):
        gate_from_proto(jobs_pb2.ReleaseGate(policy="ship-it"))
    with pytest.raises(InvalidInput, match="max_flagged_fraction"):
        gate_from_proto(jobs_pb2.ReleaseGate(max_flagged_fraction=1.5))
    with pytest.raises(InvalidInput, match="at least 2 non-blank"):
        ReleaseGate.for_training_images(np.zeros((3, 1, 32, 32), np.float32), GateOptions())


@pytest.mark.parametrize("field", ["threshold_ratio", "threshold_quantile"])
@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.2])
def test_a_threshold_outside_0_1_is_refused_naming_it(field: str, value: float) -> None:
    """Both parts of the gate's threshold lie strictly between 0 and 1: the command (the worker's
    side of the API's 422) and the options model say which one is wrong."""
    with pytest.raises(InvalidInput, match=field):
        gate_from_proto(jobs_pb2.ReleaseGate(**{field: value}))
    with pytest.raises(ValueError, match=field):
        GateOptions(**{field: value})
