"""Cohort sampling without TorchServe: determinism, the manifest, regeneration, the contact sheet,
all-or-nothing writes, and the archive/handler round trip (the handler called in this process)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.core.errors import Conflict, InvalidInput, MedsynthError, NotFound
from medsynth.io.nifti import load_nifti
from medsynth.generators.base import SampleMode
from medsynth.generators.registry import GeneratorSpec, parse_options
from medsynth.sampling.archive import build_model_archive, load_exported, net_weights, weights_fingerprint
from medsynth.sampling.backends import InProcessSampler, Sampler
from medsynth.sampling.cohort import (
    discard_incomplete,
    read_manifest,
    regenerate,
    sample_nifti_bytes,
    sheet_layout,
    write_cohort,
)
from medsynth.sampling.generate import generate, latent_seed, sample_noise
from medsynth.store.local import LocalStore
from sampling_helpers import PROVENANCE, SmallGenerator, small_generator

PREFIX = "cohorts/c1/"


# --- latents and generate ------------------------------------------------------------------------------


def sample_latents(seed: int, indices, dim: int) -> torch.Tensor:
    (latent,) = sample_noise(seed, indices, [(dim,)])
    return latent


def test_latents_are_per_sample_and_batch_independent() -> None:
    whole = sample_latents(7, range(10), 16)
    part = sample_latents(7, [3, 4, 9], 16)
    assert torch.equal(part, whole[[3, 4, 9]])
    assert not torch.equal(sample_latents(8, [3], 16), whole[3:4])
    shapes = [(16,), (1, 4, 4)]
    several, some = sample_noise(7, range(10), shapes), sample_noise(7, [3, 9], shapes)
    assert all(torch.equal(a[[3, 9]], b) for a, b in zip(several, some))
    assert torch.equal(several[0], whole)  # the first draw is the single-latent scheme
    assert latent_seed(7, 3) == latent_seed(7, 3) != latent_seed(7, 4)
    assert 0 <= latent_seed(2**63 - 1, 2**40) < 2**63


def test_latents_are_pinned() -> None:
    """The scheme is part of every manifest: changing it silently would orphan old cohorts."""
    assert latent_seed(0, 0) == 0x04F62D767DE62444
    assert latent_seed(7, 3) == 0x3D957D8BE3888DDE
    g = torch.Generator().manual_seed(latent_seed(5, 2))
    assert torch.equal(sample_latents(5, [2], 8)[0], torch.randn(8, generator=g))


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True, "3"])
def test_bad_seed_is_named(generator: SmallGenerator, bad: Any) -> None:
    with pytest.raises(InvalidInput, match="seed"):
        generate(generator.net, bad, [0])


def test_bad_indices_are_named(generator: SmallGenerator) -> None:
    with pytest.raises(InvalidInput, match="-2"):
        generate(generator.net, 1, [0, -2])
    with pytest.raises(InvalidInput, match="empty"):
        generate(generator.net, 1, [])


def test_generate_is_deterministic_and_well_typed(generator: SmallGenerator) -> None:
    images, masks = generate(generator.net, 3, range(6))
    again_images, again_masks = generate(generator.net, 3, range(6))
    assert images.dtype == np.float32 and images.shape == (6, 1, 32, 32)
    assert masks.dtype == np.uint8 and masks.shape == (6, 32, 32)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0, 1, 2}
    assert images.tobytes() == again_images.tobytes() and masks.tobytes() == again_masks.tobytes()
    other, _ = generate(generator.net, 4, range(6))
    assert not np.array_equal(images, other)


def test_generate_refuses_train_mode() -> None:
    net = small_generator().net.train()
    with pytest.raises(InvalidInput, match="eval"):
        generate(net, 1, [0])


# --- cohort writing ------------------------------------------------------------------------------------


def test_cohort_layout_and_manifest(store: LocalStore, in_process: InProcessSampler) -> None:
    seen: list[tuple[int, int]] = []
    key = write_cohort(
        store, PREFIX, in_process, count=7, seed=11, batch_size=3, provenance=PROVENANCE,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert key == PREFIX + "manifest.json"
    assert seen == [(3, 7), (6, 7), (7, 7)]
    keys = list(store.list(PREFIX))
    assert keys == sorted(
        [PREFIX + "contact_sheet.png", PREFIX + "manifest.json"]
        + [f"{PREFIX}samples/{i:05d}/{name}.nii.gz" for i in range(7) for name in ("image", "label")]
    )
    manifest = read_manifest(store, PREFIX)
    assert manifest["seed"] == 11 and manifest["count"] == 7 and manifest["batch_size"] == 3
    assert manifest["batches"] == [[0, 3], [3, 6], [6, 7]]
    assert manifest["provenance"] == PROVENANCE
    assert manifest["sampler"]["backend"] == "in-process"
    assert manifest["sampler"]["generator"] == in_process.spec.to_dict()
    assert manifest["family"] == "joint-gan" and manifest["mode"] == {"mask_source": "generated", "condition": None}
    assert manifest["masks"]["derived_from_training_patients"] is False
    assert manifest["latent"]["noise_shapes"] == [[128]]
    assert {"torch", "numpy", "python", "medsynth", "nibabel"} <= set(manifest["software"])
    for entry in manifest["samples"]:
        assert entry["latent_seed"] == latent_seed(11, entry["index"])
        for part in ("image", "label"):
            assert store.stat(entry[part]["key"]).sha256 == entry[part]["sha256"]


def test_samples_are_the_generated_pixels(store: LocalStore, in_process: InProcessSampler, generator: SmallGenerator) -> None:
    write_cohort(store, PREFIX, in_process, count=4, seed=5, batch_size=4, provenance=PROVENANCE)
    images, masks = generate(generator.net, 5, range(4))
    for i in range(4):
        image = load_nifti(store.get_bytes(f"{PREFIX}samples/{i:05d}/image.nii.gz"), what="image", max_voxels=10**6)
        label = load_nifti(store.get_bytes(f"{PREFIX}samples/{i:05d}/label.nii.gz"), what="label", max_voxels=10**6)
        assert np.array_equal(np.asarray(image.dataobj), images[i, 0])
        assert np.asarray(label.dataobj).dtype == np.uint8
        assert np.array_equal(np.asarray(label.dataobj), masks[i])
        assert np.allclose(image.affine, np.eye(4))


def test_same_seed_same_bytes(tmp_path: Path, in_process: InProcessSampler) -> None:
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    for s in (a, b):
        write_cohort(s, PREFIX, in_process, count=5, seed=9, batch_size=2, provenance=PROVENANCE)
    ma, mb = read_manifest(a, PREFIX), read_manifest(b, PREFIX)
    assert ma["samples"] == mb["samples"] and ma["contact_sheet"] == mb["contact_sheet"]


def test_regenerate_one_sample_bit_for_bit(store: LocalStore, in_process: InProcessSampler) -> None:
    write_cohort(store, PREFIX, in_process, count=10, seed=21, batch_size=4, provenance=PROVENANCE)
    manifest = read_manifest(store, PREFIX)
    # A fresh generator object with the same weights, as a later process would have.
    fresh_generator = small_generator()
    fresh = InProcessSampler(fresh_generator.spec, fresh_generator.nets)
    for index in (6, 0, 9):
        images, masks = regenerate(manifest, fresh, [index], verify=True)
        image_bytes, label_bytes = sample_nifti_bytes(images[0], masks[0])
        assert image_bytes == store.get_bytes(f"{PREFIX}samples/{index:05d}/image.nii.gz")
        assert label_bytes == store.get_bytes(f"{PREFIX}samples/{index:05d}/label.nii.gz")
    images, _ = regenerate(manifest, fresh, [9, 1, 5])
    assert images.shape == (3, 1, 32, 32)


def test_regenerate_refuses_other_weights_and_bad_indices(store: LocalStore, in_process: InProcessSampler) -> None:
    write_cohort(store, PREFIX, in_process, count=3, seed=1, batch_size=2, provenance=PROVENANCE)
    manifest = read_manifest(store, PREFIX)
    with pytest.raises(InvalidInput, match="weights_fingerprint"):
        other = small_generator(seed=99)
        regenerate(manifest, InProcessSampler(other.spec, other.nets), [0])
    with pytest.raises(InvalidInput, match=r"samples \[3\] are not in the cohort"):
        regenerate(manifest, in_process, [3])


def test_contact_sheet_is_a_png_of_the_expected_size(store: LocalStore, in_process: InProcessSampler) -> None:
    write_cohort(store, PREFIX, in_process, count=10, seed=2, batch_size=4, provenance=PROVENANCE, formats=("png",))
    sheet = read_manifest(store, PREFIX)["contact_sheet"]
    data = store.get_bytes(PREFIX + "contact_sheet.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        # 10 tiles -> 4 columns x 3 rows of 32 px images shown at 2x (64 px), 2 px apart.
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (4 * 64 + 5 * 2, 3 * 64 + 4 * 2) == (sheet["width"], sheet["height"])
        pixels = np.asarray(img)
    assert sheet_layout(10, 32) == {k: sheet[k] for k in ("columns", "rows", "scale", "width", "height")}
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # an actual picture, not a blank
    assert not any(k.endswith(".nii.gz") for k in store.list(PREFIX))  # png only


class FailingSampler(Sampler):
    """Draws normally, then fails on the ``fail_on``-th call."""

    def __init__(self, inner: Sampler, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def draw(self, seed: int, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise MedsynthError("sampler died mid-cohort")
        return self.inner.draw(seed, indices)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def test_failure_midway_leaves_nothing(store: LocalStore, in_process: InProcessSampler) -> None:
    store.put_json("cohorts/other/manifest.json", {"untouched": True})
    sampler = FailingSampler(in_process, fail_on=3)
    with pytest.raises(MedsynthError, match="died mid-cohort"):
        write_cohort(store, PREFIX, sampler, count=10, seed=1, batch_size=3, provenance=PROVENANCE)
    assert sampler.calls == 3  # two batches were written before the failure
    assert list(store.list(PREFIX)) == []
    assert not (store.root / "cohorts" / "c1").exists()
    assert store.get_json("cohorts/other/manifest.json") == {"untouched": True}
    # The prefix is usable again.
    write_cohort(store, PREFIX, in_process, count=2, seed=1, batch_size=3, provenance=PROVENANCE)


def test_failing_progress_callback_also_rolls_back(store: LocalStore, in_process: InProcessSampler) -> None:
    def progress(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cohort(store, PREFIX, in_process, count=4, seed=1, batch_size=2, provenance=PROVENANCE, progress=progress)
    assert list(store.list(PREFIX)) == []


def test_cohorts_are_write_once(store: LocalStore, in_process: InProcessSampler) -> None:
    write_cohort(store, PREFIX, in_process, count=2, seed=1, batch_size=2, provenance=PROVENANCE)
    before = list(store.list(PREFIX))
    with pytest.raises(Conflict, match="already holds"):
        write_cohort(store, PREFIX, in_process, count=2, seed=2, batch_size=2, provenance=PROVENANCE)
    assert list(store.list(PREFIX)) == before
    with pytest.raises(Conflict, match="complete"):
        discard_incomplete(store, PREFIX)


def test_claimed_prefix_and_crash_leftovers(store: LocalStore, in_process: InProcessSampler) -> None:
    store.put_bytes(PREFIX + ".writing.json", b"{}")  # another writer, or one that was killed
    store.put_bytes(PREFIX + "samples/00000/image.nii.gz", b"partial")
    with pytest.raises(Conflict, match="being written"):
        write_cohort(store, PREFIX, in_process, count=2, seed=1, batch_size=2, provenance=PROVENANCE)
    with pytest.raises(NotFound):
        read_manifest(store, PREFIX)
    assert len(discard_incomplete(store, PREFIX)) == 2
    write_cohort(store, PREFIX, in_process, count=2, seed=1, batch_size=2, provenance=PROVENANCE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "count must be a positive integer"),
        ({"batch_size": 5000}, "batch_size must be a positive integer and at most 4096"),
        ({"formats": ("nifti", "jpeg")}, "formats must be a non-empty subset"),
        ({"provenance": {"when": object()}}, "JSON-serialisable"),
        ({"seed": -5}, "seed must be between"),
    ],
)
def test_bad_arguments_are_named(store: LocalStore, in_process: InProcessSampler, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"count": 2, "seed": 1, "batch_size": 2, "provenance": PROVENANCE, **kwargs}
    with pytest.raises(InvalidInput, match=message):
        write_cohort(store, PREFIX, in_process, **args)
    assert list(store.list("cohorts/")) == []


@pytest.mark.parametrize("prefix", ["cohorts/c1", "", "/", "cohorts//c1/"])
def test_bad_prefix_is_named(store: LocalStore, in_process: InProcessSampler, prefix: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        write_cohort(store, prefix, in_process, count=1, seed=1, batch_size=1, provenance=PROVENANCE)


# --- archive and handler (no server) -----------------------------------------------------------------


def test_archive_contents_and_round_trip(tmp_path: Path, generator: SmallGenerator) -> None:
    mar = build_model_archive(generator.spec, generator.weights, model_name="g", version="2.0", out_dir=tmp_path)
    assert mar == tmp_path / "g.mar"
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        assert {"weights.pt", "generator.json", "medsynth_sampler_handler.py", "MAR-INF/MANIFEST.json"} <= names
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        zf.extractall(tmp_path / "unpacked")
    assert manifest["model"]["handler"] == "medsynth_sampler_handler.py"
    assert manifest["model"]["serializedFile"] == "weights.pt"
    assert "sampler-generated.torchscript.pt" in names
    assert mar.stat().st_size < 4_000_000
    spec, nets, meta = load_exported(tmp_path / "unpacked")
    assert spec == generator.spec and meta["spec"] == generator.spec.to_dict()
    assert weights_fingerprint(net_weights(nets)) == weights_fingerprint(generator.weights) == meta["weights_fingerprint"]
    loaded = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode())
    assert np.array_equal(generate(loaded, 4, range(3))[0], generate(generator.net, 4, range(3))[0])
    traced = torch.jit.load(str(tmp_path / "unpacked" / meta["torchscript"]["generated"]))
    noise = sample_noise(4, range(3), generator.net.noise_shapes)
    with torch.no_grad():
        assert torch.allclose(traced(noise, torch.zeros(3, dtype=torch.int64)), generator.net(noise, torch.zeros(3, dtype=torch.int64)), atol=1e-6)
    with pytest.raises(Conflict, match="already exists"):
        build_model_archive(generator.spec, generator.weights, model_name="g", version="2.0", out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.mar", "unpacked"]  # no staging leftovers


def test_archive_refuses_mismatched_weights_and_names(tmp_path: Path, generator: SmallGenerator) -> None:
    wider = small_generator(family="joint-gan")
    wider_spec = GeneratorSpec(parse_options({"family": "joint-gan", "base_channels": 16}), wider.spec.training, wider.spec.data)
    with pytest.raises(InvalidInput, match="generator weights do not fit"):
        build_model_archive(wider_spec, generator.weights, model_name="g", version="1", out_dir=tmp_path)
    with pytest.raises(InvalidInput, match="no weights for"):
        build_model_archive(generator.spec, {}, model_name="g", version="1", out_dir=tmp_path)
    with pytest.raises(InvalidInput, match="model name"):
        build_model_archive(generator.spec, generator.weights, model_name="a b", version="1", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


class FakeContext:
    """The parts of TorchServe's Context the handler uses."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.headers: dict[int, dict[str, str]] = {}
        self.status: dict[int, int] = {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.headers.setdefault(idx, {})["content-type"] = value

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = code


@pytest.fixture
def restore_determinism() -> Any:
    """The handler's initialize() switches torch to deterministic algorithms process-wide (right in a
    TorchServe worker); put the test process back as it was."""
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


@pytest.mark.usefixtures("restore_determinism")
def test_handler_in_process(tmp_path: Path, generator: SmallGenerator, handler_module: ModuleType) -> None:
    mar = build_model_archive(generator.spec, generator.weights, model_name="g", version="1", out_dir=tmp_path)
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(tmp_path / "model")
    context = FakeContext(tmp_path / "model")
    handler = handler_module.SamplerHandler()
    handler.initialize(SimpleNamespace(system_properties=context.system_properties))
    batch = [
        {"body": bytearray(json.dumps({"seed": 3, "start": 2, "count": 3}).encode())},
        {"data": {"seed": 3, "indices": [4, 2]}},
        {"body": b"not json"},
        {"data": {"seed": 3, "start": 0, "count": 0}},
        {"data": {"describe": True}},
    ]
    out = handler.handle(batch, context)
    expected, expected_masks = generate(generator.net, 3, range(2, 5))
    with np.load(io.BytesIO(out[0])) as npz:
        assert np.array_equal(npz["images"], expected) and np.array_equal(npz["masks"], expected_masks)
        assert npz["indices"].tolist() == [2, 3, 4] and int(npz["seed"]) == 3
    with np.load(io.BytesIO(out[1])) as npz:
        assert npz["indices"].tolist() == [4, 2]
    assert context.status == {2: 400, 3: 400}
    assert "must be JSON" in json.loads(out[2])["error"]
    assert "'count' in 1..4096" in json.loads(out[3])["error"]
    described = json.loads(out[4])
    assert described["generator"] == generator.spec.to_dict()
    assert described["mode"] == {"mask_source": "generated", "condition": None}
    assert described["weights_fingerprint"] == weights_fingerprint(generator.weights)
    assert context.headers[0]["content-type"] == "application/x-npz"
