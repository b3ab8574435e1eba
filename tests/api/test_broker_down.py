"""With the broker unreachable, a POST that makes a job answers 503 with Retry-After within a bounded
time; the job is recorded (sent again with its Idempotency-Key, the same job) and the reconciler publishes
it once the broker is back."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app
from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.jobs.reconciler import reconcile_once
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.store.local import LocalStore

from platform_fixtures import bearer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_post_answers_503_with_retry_after_and_the_job_is_published_later(platform_settings: Settings, tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "msd", n=1, seed=1, shape=(16, 16, 6))
    store = LocalStore(platform_settings.local_store_root)
    name = "phantom_000"
    ingest_scan(store, "d", name, Upload(f"{name}.nii.gz", (tmp_path / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes()),
                Upload(f"{name}.nii.gz", (tmp_path / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes()), max_voxels=10**6)
    down = platform_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{closed_port()}", "publish_timeout_s": 1.0})
    with TestClient(create_api_app(down, reconcile=False), raise_server_exceptions=False,
                    headers=bearer(down, "researcher")) as api:
        started = time.monotonic()
        r = api.post("/v1/datasets/d/views", json={"size": 16}, headers={"Idempotency-Key": "views-of-d"})
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert elapsed < 8, elapsed
        assert int(r.headers["retry-after"]) == int(down.reconcile_after_s + down.reconcile_every_s)
        job_id = r.json()["detail"].split()[1]
        assert "Do not resubmit" in r.json()["detail"]
        assert r.headers["content-type"] == "application/problem+json" and r.headers["location"] == f"/v1/jobs/{job_id}"
        assert r.json()["type"] == "urn:medsynth:problem:job-deferred" and r.json()["job_id"] == job_id
        assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        again = api.post("/v1/datasets/d/views", json={"size": 16}, headers={"Idempotency-Key": "views-of-d"})
        assert again.status_code == 202 and again.json()["job_id"] == job_id, again.text  # sent again: the recorded job, not a second
        assert again.headers["location"] == f"/v1/jobs/{job_id}" and again.headers["idempotent-replayed"] == "true"
        assert api.get("/readyz").status_code == 503
    records = JobRecords(store)
    assert records.publication(job_id).count == 0
    bus = Bus(platform_settings, client_id="reconciler")
    try:  # the broker is back (the real one): the reconciler publishes the recorded job
        assert reconcile_once(JobService(records, bus), older_than_s=0) == [job_id]
    finally:
        bus.close()
    assert records.publication(job_id).count == 1 and records.get(job_id).state is JobState.queued
