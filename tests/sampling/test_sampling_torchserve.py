"""Cohort sampling through a real TorchServe 0.12 server (one per session, see conftest.py): the
pixels must equal the in-process path bit for bit. Also: TorchServe down -> SamplerUnavailable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import MaskSource, SampleMode
from medsynth.sampling.backends import InProcessSampler, TorchServeSampler
from medsynth.sampling.cohort import read_manifest, regenerate, write_cohort
from medsynth.sampling.generate import generate
from medsynth.local.torchserve import TorchServeProcess, free_ports
from medsynth.sampling.torchserve import LoadedModels, SamplerUnavailable, TorchServeClient
from medsynth.store.local import LocalStore
from sampling_helpers import (
    MODEL_NAME,
    PROVENANCE,
    SmallGenerator,
    family_names,
    served_generators,
    small_generator,
    small_spec,
)

PREFIX = "cohorts/ts/"


@pytest.fixture(scope="module")
def client(torchserve: TorchServeProcess) -> Iterator[TorchServeClient]:
    with torchserve.client() as c:
        c.register(f"{MODEL_NAME}.mar", MODEL_NAME, initial_workers=1)
        yield c


@pytest.fixture
def served(client: TorchServeClient) -> TorchServeSampler:
    return TorchServeSampler(client, MODEL_NAME)


def test_register_is_idempotent(client: TorchServeClient, torchserve: TorchServeProcess) -> None:
    assert client.ping()
    assert client.is_registered(MODEL_NAME)
    assert client.register(f"{MODEL_NAME}.mar", MODEL_NAME) is False
    assert not client.is_registered("no-such-model")
    assert torchserve.startup_s is not None and torchserve.startup_s < 120


def test_the_lru_unloads_generators_from_a_real_torchserve(client: TorchServeClient) -> None:
    """LoadedModels over TorchServe's own management API: a second generator loaded with capacity 1 unregisters
    the first (its worker, on a GPU its CUDA context, goes away); unregistering an absent model is False."""
    loaded = LoadedModels(capacity=2)
    assert MODEL_NAME in client.models()
    loaded.use(client, MODEL_NAME, lambda: pytest.fail("registered already"))
    loaded.capacity = 1
    others = [m for m in client.models() if m != MODEL_NAME]  # left by other tests: the least recent
    evicted = loaded.use(client, "fam-joint-gan", lambda: client.register("fam-joint-gan.mar", "fam-joint-gan", initial_workers=1))
    assert set(evicted) == {MODEL_NAME, *others} and client.models() == ["fam-joint-gan"]
    assert not client.is_registered(MODEL_NAME) and client.unregister(MODEL_NAME) is False
    client.register(f"{MODEL_NAME}.mar", MODEL_NAME, initial_workers=1)  # back as the other tests expect
    assert client.unregister("fam-joint-gan") is True


def test_cohort_through_torchserve_equals_in_process(
    tmp_path: Path, served: TorchServeSampler, in_process: InProcessSampler
) -> None:
    via_ts, local = LocalStore(tmp_path / "ts"), LocalStore(tmp_path / "local")
    write_cohort(via_ts, PREFIX, served, count=20, seed=42, batch_size=8, provenance=PROVENANCE)
    write_cohort(local, PREFIX, in_process, count=20, seed=42, batch_size=8, provenance=PROVENANCE)
    ts_manifest, local_manifest = read_manifest(via_ts, PREFIX), read_manifest(local, PREFIX)

    assert ts_manifest["sampler"]["backend"] == "torchserve"
    assert ts_manifest["sampler"]["model_name"] == MODEL_NAME
    for field in ("generator", "weights_fingerprint", "latent_scheme"):
        assert ts_manifest["sampler"][field] == local_manifest["sampler"][field]
    # Same pixel digests and the same NIfTI/PNG bytes, object for object.
    assert ts_manifest["samples"] == local_manifest["samples"]
    assert ts_manifest["contact_sheet"] == local_manifest["contact_sheet"]
    keys = list(via_ts.list(PREFIX))
    assert keys == list(local.list(PREFIX)) and len(keys) == 2 * 20 + 2
    for key in keys:
        if not key.endswith("manifest.json"):
            assert via_ts.get_bytes(key) == local.get_bytes(key), key

    # A sample of the TorchServe cohort regenerated in this process, and the other way round.
    images, masks = regenerate(ts_manifest, in_process, [13], verify=True)
    again, again_masks = regenerate(local_manifest, served, [13, 2], verify=True)
    assert images[0].tobytes() == again[0].tobytes() and np.array_equal(masks[0], again_masks[0])


def test_draw_any_indices(served: TorchServeSampler, generator: SmallGenerator) -> None:
    for indices in ([5, 1, 3], range(30, 34)):
        images, masks = served.draw(7, indices)
        expected, expected_masks = generate(generator.net, 7, indices)
        assert images.tobytes() == expected.tobytes() and masks.tobytes() == expected_masks.tobytes()


def test_bad_request_names_the_problem(client: TorchServeClient) -> None:
    with pytest.raises(InvalidInput, match="seed must be between 0 and"):
        client.infer(MODEL_NAME, {"seed": -1, "start": 0, "count": 1})
    with pytest.raises(InvalidInput, match="'count' in 1..4096"):
        client.infer(MODEL_NAME, {"seed": 1, "start": 0, "count": 100_000})


def test_unknown_model_is_unavailable(client: TorchServeClient) -> None:
    with pytest.raises(SamplerUnavailable, match=r"/predictions/no-such-model failed .* HTTP 404"):
        TorchServeSampler(client, "no-such-model").draw(1, [0])


def test_torchserve_down_is_sampler_unavailable(store: LocalStore) -> None:
    inference, management = (f"http://127.0.0.1:{port}" for port in free_ports(2))
    with TorchServeClient(inference, management, timeout_s=5) as client:
        assert client.ping() is False
        sampler = TorchServeSampler(client, MODEL_NAME)
        with pytest.raises(SamplerUnavailable, match=rf"TorchServe at {inference}/predictions/{MODEL_NAME} is unreachable"):
            sampler.draw(1, [0])
        with pytest.raises(SamplerUnavailable, match=rf"TorchServe at {management}/models is unreachable"):
            client.register(f"{MODEL_NAME}.mar", MODEL_NAME)
        with pytest.raises(SamplerUnavailable, match=r"unreachable .*; is it running\?"):
            write_cohort(store, PREFIX, sampler, count=4, seed=1, batch_size=2, provenance=PROVENANCE)
    assert list(store.list(PREFIX)) == []


def test_process_refuses_a_missing_model_store(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="missing"):
        TorchServeProcess(tmp_path / "missing", tmp_path / "work").start()


# --- every family (and variant): exported → TorchServe → the same pixels as in-process, and regenerated --


def _served_modes() -> list[tuple[str, MaskSource]]:
    """(served generator, mask source) for every mask source each served generator has."""
    modes = []
    for served, (family, options) in served_generators().items():
        spec = small_spec(family, **options)
        modes += [(served, source) for source in spec.family.mask_sources_for(spec.options)]
    return modes


@pytest.mark.parametrize(("served", "source"), _served_modes())
def test_every_family_through_torchserve_equals_in_process(
    served: str, source: MaskSource, client: TorchServeClient, tmp_path: Path
) -> None:
    name = f"fam-{served}"
    family, options = served_generators()[served]
    client.register(f"{name}.mar", name, initial_workers=1)
    small = small_generator(family=family, **options)  # the same weights the archive was built from (conftest)
    mode = SampleMode(mask_source=source)
    remote, local = TorchServeSampler(client, name, mode), InProcessSampler(small.spec, small.nets, mode)
    via_ts, here = LocalStore(tmp_path / "ts"), LocalStore(tmp_path / "local")
    write_cohort(via_ts, PREFIX, remote, count=6, seed=5, batch_size=4, provenance=PROVENANCE)
    write_cohort(here, PREFIX, local, count=6, seed=5, batch_size=4, provenance=PROVENANCE)
    ts_manifest, local_manifest = read_manifest(via_ts, PREFIX), read_manifest(here, PREFIX)
    assert ts_manifest["family"] == family and ts_manifest["mode"]["mask_source"] == source.value
    assert ts_manifest["masks"]["derived_from_training_patients"] is (source is MaskSource.real_deformed)
    for field in ("generator", "mode", "noise_shapes", "weights_fingerprint"):
        assert ts_manifest["sampler"][field] == local_manifest["sampler"][field], field
    assert ts_manifest["samples"] == local_manifest["samples"]
    regenerate(ts_manifest, local, [5, 0], verify=True)


@pytest.mark.parametrize("family", family_names())
def test_a_mode_the_generator_lacks_is_refused(family: str, client: TorchServeClient) -> None:
    name = f"fam-{family}"
    client.register(f"{name}.mar", name, initial_workers=1)
    with pytest.raises(InvalidInput, match="trained without class conditioning"):
        client.infer(name, {"seed": 1, "start": 0, "count": 1, "condition": 1})
    with pytest.raises(InvalidInput, match="mask_source must be one of"):
        client.infer(name, {"seed": 1, "start": 0, "count": 1, "mask_source": "drawn-by-hand"})


def test_diffusion_cohort_with_its_own_steps_and_eta_through_torchserve(client: TorchServeClient, tmp_path: Path) -> None:
    """A cohort's sample_steps / eta reach the TorchServe handler, are recorded, and regenerate in-process."""
    client.register("fam-diffusion.mar", "fam-diffusion", initial_workers=1)
    small = small_generator(family="diffusion")
    mode = SampleMode(sample_steps=2, eta=0.5)
    served, local = TorchServeSampler(client, "fam-diffusion", mode), InProcessSampler(small.spec, small.nets, mode)
    store = LocalStore(tmp_path)
    write_cohort(store, PREFIX, served, count=4, seed=3, batch_size=4, provenance=PROVENANCE)
    manifest = read_manifest(store, PREFIX)
    assert manifest["mode"]["sample_steps"] == 2 and manifest["mode"]["eta"] == 0.5
    assert manifest["latent"]["noise_shapes"] == [[4, 32, 32], [2, 4, 32, 32]]
    regenerate(manifest, local, [1, 3], verify=True)
    with pytest.raises(InvalidInput, match="sample_steps must be in"):
        client.infer("fam-diffusion", {"seed": 1, "start": 0, "count": 1, "sample_steps": 10_000})


def test_torchserve_metrics_are_served_in_prometheus_format(torchserve: TorchServeProcess, served: TorchServeSampler, tmp_path: Path) -> None:
    """0.12 leaves its metrics API empty unless metrics_mode is prometheus."""
    write_cohort(LocalStore(tmp_path / "m"), PREFIX, served, count=4, seed=1, batch_size=4, provenance=PROVENANCE)
    text = httpx.get(f"{torchserve.metrics_url}/metrics", timeout=10).text
    line = next(l for l in text.splitlines() if l.startswith("ts_inference_requests_total{"))
    assert float(line.rsplit(" ", 1)[1]) >= 1, line


def test_torchserve_answers_only_with_the_right_key(torchserve: TorchServeProcess, client: TorchServeClient) -> None:
    """Token authorization is on: no key, or the inference key on the management API, is refused;
    the key file is the owner's alone."""
    keys = json.loads(torchserve.key_file.read_text())
    assert oct(torchserve.key_file.stat().st_mode & 0o777) == "0o600"
    models = f"{torchserve.management_url}/models"
    assert httpx.get(models, timeout=10).status_code in (400, 401)
    wrong = {"Authorization": f"Bearer {keys['inference']['key']}"}
    assert httpx.get(models, headers=wrong, timeout=10).status_code in (400, 401)
    right = {"Authorization": f"Bearer {keys['management']['key']}"}
    assert httpx.get(models, headers=right, timeout=10).status_code == 200
    assert httpx.get(f"{torchserve.inference_url}/ping", timeout=10).status_code in (400, 401)
    assert client.ping()
    with TorchServeClient(torchserve.inference_url, torchserve.management_url, timeout_s=10) as keyless:
        with pytest.raises(SamplerUnavailable):
            keyless.is_registered("fam-diffusion")


def test_a_refused_key_is_renewed_through_the_token_api(torchserve: TorchServeProcess) -> None:
    """A client whose key TorchServe no longer takes (expired after token_expiration_min, or replaced)
    asks the token API for a new one with the API key, rereads the key file and retries."""
    with torchserve.client(timeout_s=10) as c:
        assert c.is_registered("no-such-model") is False  # the client now holds the current management key
        keys = json.loads(torchserve.key_file.read_text())
        replaced = httpx.get(f"{torchserve.management_url}/token", params={"type": "management"},
                             headers={"Authorization": f"Bearer {keys['API']['key']}"}, timeout=10)
        assert replaced.status_code == 200, replaced.text  # the key the client holds is void now
        stale = {"Authorization": f"Bearer {keys['management']['key']}"}
        assert httpx.get(f"{torchserve.management_url}/models", headers=stale, timeout=10).status_code in (400, 401)
        assert c.is_registered("no-such-model") is False  # answered: the client renewed and retried
