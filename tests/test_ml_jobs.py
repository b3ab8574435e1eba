"""The machine-learning jobs through the real worker loop and broker: a trainer killed mid-run
resumes to the same generator; a cohort survives TorchServe being down only as a clean failure; a
corrupt checkpoint fails clearly; a cohort regenerates bit for bit from its manifest."""

from __future__ import annotations

import json
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
from medsynth.handlers.artifacts import cohort_arrays
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import Worker
from medsynth.messages import JobKind
from medsynth.sampling.backends import InProcessSampler
from medsynth.sampling.cohort import regenerate, sample_digests
from medsynth.store import ObjectStore
from medsynth.training.checkpoint import load_checkpoint, load_generator
from medsynth.v1 import jobs_pb2

from pipeline_fixtures import phantom_view
from platform_fixtures import settings_env, wait_for_state

REPO = Path(__file__).resolve().parents[1]
GAN = {"generator": {"image_size": 32, "num_classes": 3, "latent_dim": 16, "base_channels": 8},
       "loss": "lsgan", "steps": 24, "batch_size": 8, "ema_decay": 0.9, "diff_augment": False,
       "checkpoint_every": 4, "seed": 3}  # fmt: skip


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


def train_job(jobs: JobService, view_id: str, config: dict = GAN) -> str:
    spec = jobs_pb2.TrainGenerator(dataset="ph", view_id=view_id, config_json=json.dumps(config))
    return jobs.submit(JobKind.train_generator, spec).job_id


def test_trainer_killed_mid_run_resumes_to_the_same_generator(platform_settings, store, jobs, tmp_path: Path) -> None:
    view_id = phantom_view(store, tmp_path)
    env = settings_env(platform_settings.model_copy(update={"http_port": 0}))
    argv = [sys.executable, str(REPO / "services" / "trainer" / "main.py")]
    first = subprocess.Popen(argv, env=env, stdout=open(tmp_path / "t1.log", "wb"), stderr=subprocess.STDOUT)
    job_id = train_job(jobs, view_id)
    deadline = time.monotonic() + 120
    while not any(k.endswith(".pt") and "/step-" in k for k in store.list(f"generators/{job_id}/checkpoints/")):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "t1.log").read_text()[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert jobs.records.get(job_id).state is JobState.running
    second = subprocess.Popen(argv, env=env, stdout=open(tmp_path / "t2.log", "wb"), stderr=subprocess.STDOUT)
    try:
        done = wait_for_state(jobs.records, job_id, JobState.succeeded, timeout=240)
        # the same recipe again, uninterrupted, in the same worker process (same threads, same build)
        straight = wait_for_state(jobs.records, train_job(jobs, view_id), JobState.succeeded, timeout=240)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    registry = store.get_json(done.result_keys["generator"])
    assert registry["resumed_from"] is not None and 0 < registry["resumed_from"] < GAN["steps"]
    assert done.attempts == 2 and store.get_json(straight.result_keys["generator"])["resumed_from"] is None
    a, b = (load_checkpoint(store.get_bytes(r.result_keys["checkpoint"])) for r in (straight, done))
    for name in ("generator", "generator_ema", "discriminator"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    assert a.metrics["curves"] == b.metrics["curves"]
