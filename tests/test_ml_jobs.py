"""The machine-learning jobs through the real worker loop and broker: a trainer killed mid-run
resumes to the same generator; a cohort survives TorchServe being down only as a clean failure; a
corrupt checkpoint fails clearly; a cohort regenerates bit for bit from its manifest."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.bus.client import Bus
from medsynth.core.settings import SamplerBackend, Settings
from medsynth.handlers import handlers_for
from medsynth.jobs.artifacts import cohort_arrays
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import Worker
from medsynth.bus.messages import JobKind
from medsynth.sampling.backends import InProcessSampler
from medsynth.sampling.cohort import regenerate, sample_digests
from medsynth.store import ObjectStore
from medsynth.generators.base import DataSpec
from medsynth.generators.proto import to_proto
from medsynth.generators.registry import GeneratorSpec, parse_options, parse_training
from medsynth.generators.checkpoint import load_checkpoint, load_sampling_nets
from medsynth.v1 import jobs_pb2

from pipeline_fixtures import phantom_view
from platform_fixtures import settings_env, wait_for_state

REPO = Path(__file__).resolve().parents[1]
TRAINING = {"steps": 12, "batch_size": 8, "ema_decay": 0.9, "checkpoint_every": 3, "seed": 3}
# One small generator of each kind: joint, two-stage SPADE, StyleGAN2, latent diffusion.
OPTIONS = {
    "joint-gan": {"family": "joint-gan", "loss": "lsgan", "latent_dim": 16, "base_channels": 8},
    "spade": {"family": "spade", "latent_dim": 16, "base_channels": 8, "spade_hidden": 8, "disc_channels": 8,
              "num_scales": 1, "mask_latent_dim": 16, "mask_base_channels": 4, "mask_bank_size": 16},
    "stylegan2": {"family": "stylegan2", "latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16, "mbstd_group": 2},
    # latent diffusion: the kill lands in the autoencoder stage, the resumed run crosses into the denoiser's
    "diffusion": {"family": "diffusion", "channels": [8, 16], "num_head_channels": 8, "train_timesteps": 50, "sample_steps": 4,
                  "latent": True, "autoencoder_steps": 5, "autoencoder_channels": [8, 16], "latent_channels": 2},
}


@pytest.fixture
def jobs(platform_settings: Settings, store: ObjectStore):
    bus = Bus(platform_settings, client_id="api")
    yield JobService(JobRecords(store), bus)
    bus.close()


@pytest.fixture
def workers(platform_settings: Settings, store: ObjectStore):
    running: list[tuple[Worker, threading.Thread]] = []

    def start(name: str, settings: Settings | None = None) -> None:
        s = settings or platform_settings
        worker = Worker(name, s, store, Bus(s, client_id=name), handlers_for(name))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append((worker, thread))

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(60)
        worker.bus.close()


def train_job(jobs: JobService, view_id: str, family: str = "joint-gan", **training: int) -> str:
    spec = GeneratorSpec(parse_options(OPTIONS[family]), parse_training(TRAINING | training), DataSpec(32, 3))
    return jobs.submit(JobKind.train_generator, to_proto(spec, dataset="ph", view_id=view_id)).job_id


@pytest.mark.parametrize("family", sorted(OPTIONS))
def test_trainer_killed_mid_run_resumes_to_the_same_generator(family: str, platform_settings, store, jobs, tmp_path: Path) -> None:
    view_id = phantom_view(store, tmp_path)
    env = settings_env(platform_settings.model_copy(update={"http_port": 0}))
    argv = [sys.executable, str(REPO / "services" / "trainer" / "main.py")]
    first = subprocess.Popen(argv, env=env, stdout=open(tmp_path / "t1.log", "wb"), stderr=subprocess.STDOUT)
    job_id = train_job(jobs, view_id, family)
    deadline = time.monotonic() + 120
    # kill once a resume point exists: latest.json is written after the step checkpoint it names
    while not store.exists(f"generators/{job_id}/checkpoints/latest.json"):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "t1.log").read_text()[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert jobs.records.get(job_id).state is JobState.running
    second = subprocess.Popen(argv, env=env, stdout=open(tmp_path / "t2.log", "wb"), stderr=subprocess.STDOUT)
    try:
        done = wait_for_state(jobs.records, job_id, JobState.succeeded, timeout=240)
        # the same recipe again, uninterrupted, in the same worker process (same threads, same build)
        straight = wait_for_state(jobs.records, train_job(jobs, view_id, family), JobState.succeeded, timeout=240)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    registry = store.get_json(done.result_keys["generator"])
    assert registry["family"] == family and registry["spec"]["options"]["family"] == family
    assert registry["resumed_from"] is not None and 0 < registry["resumed_from"] < TRAINING["steps"]
    assert done.attempts == 2 and store.get_json(straight.result_keys["generator"])["resumed_from"] is None
    a, b = (load_checkpoint(store.get_bytes(r.result_keys["checkpoint"]), family=family) for r in (straight, done))
    for group in ("nets", "ema"):
        x, y = getattr(a, group), getattr(b, group)
        assert x.keys() == y.keys()
        for name in x:
            assert all(torch.equal(x[name][k], y[name][k]) for k in x[name]), (group, name)
    assert a.metrics["curves"] == b.metrics["curves"]


def test_cohort_regenerates_bit_for_bit_and_corrupt_checkpoint_fails(platform_settings, store, jobs, workers, tmp_path: Path) -> None:
    view_id = phantom_view(store, tmp_path)
    inprocess = platform_settings.model_copy(update={"sampler_backend": SamplerBackend.inprocess})
    workers("trainer")
    workers("sampler", inprocess)
    gen = wait_for_state(jobs.records, train_job(jobs, view_id, steps=8), JobState.succeeded, timeout=120)
    spec = jobs_pb2.SampleCohort(generator_id=gen.job_id, count=10, seed=5, formats=["nifti", "png"], batch_size=4)
    cohort = wait_for_state(jobs.records, jobs.submit(JobKind.sample_cohort, spec).job_id, JobState.succeeded)
    manifest, images, masks = cohort_arrays(store, jobs.records, cohort.job_id)
    assert images.shape == (10, 1, 32, 32) and masks.max() < 3
    checkpoint = load_checkpoint(store.get_bytes(gen.result_keys["checkpoint"]))
    again, again_masks = regenerate(manifest, InProcessSampler(checkpoint.spec, load_sampling_nets(checkpoint)), [7, 2])
    assert [sample_digests(again[i], again_masks[i]) for i in range(2)] == [
        {k: manifest["samples"][j][k] for k in ("pixels_sha256", "mask_sha256")} for j in (7, 2)
    ]
    np.testing.assert_array_equal(again[0], images[7])

    store.put_bytes(gen.result_keys["checkpoint"], b"this is not a checkpoint")
    bad = wait_for_state(jobs.records, jobs.submit(JobKind.sample_cohort, spec).job_id, JobState.failed)
    assert "corrupt checkpoint" in bad.error and bad.attempts == 1
    assert list(store.list(f"cohorts/{bad.job_id}/")) == []


def test_cohort_with_torchserve_down_waits_retries_then_fails_cleanly(platform_settings, store, jobs, workers, tmp_path: Path) -> None:
    view_id = phantom_view(store, tmp_path)
    down = platform_settings.model_copy(update={
        "torchserve_inference_url": "http://127.0.0.1:9", "torchserve_management_url": "http://127.0.0.1:9",
        "sampler_wait_s": 1.0, "max_attempts": 2,
    })  # fmt: skip
    workers("trainer")
    workers("sampler", down)
    gen = wait_for_state(jobs.records, train_job(jobs, view_id, steps=4), JobState.succeeded, timeout=120)
    spec = jobs_pb2.SampleCohort(generator_id=gen.job_id, count=4, seed=0, formats=["nifti"], batch_size=4)
    failed = wait_for_state(jobs.records, jobs.submit(JobKind.sample_cohort, spec).job_id, JobState.failed, timeout=60)
    assert failed.attempts == 2 and failed.dead_lettered
    assert "TorchServe at http://127.0.0.1:9 did not answer" in failed.error
    assert list(store.list(f"cohorts/{failed.job_id}/")) == []
