"""Projects: each one's resources live apart; another project's answer 404 with nothing of theirs.

Scans go in through the ingest service with an uploader key, jobs are submitted through the api and
run by a real worker over the broker; the store is the real local-directory backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.bus.client import Bus
from medsynth.bus.messages import JobKind
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import Settings
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.handlers import handlers_for
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import Worker
from medsynth.store.projects import DEFAULT_PROJECT, Projects, project_store
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2

from platform_fixtures import bearer, wait_for_state


def test_a_project_store_holds_its_resources_and_nothing_else(store: ObjectStore) -> None:
    alpha, default = project_store(store, "alpha"), project_store(store, DEFAULT_PROJECT)
    alpha.put_json("datasets/d/x.json", {"a": 1})
    default.put_json("datasets/d/x.json", {"d": 1})
    store.put_json("auth/keys/k.json", {"secret_sha256": "…"})
    assert store.get_json("projects/alpha/datasets/d/x.json") == {"a": 1}
    assert store.get_json("datasets/d/x.json") == {"d": 1}  # the default project keeps the pre-project layout
    assert alpha.stat("datasets/d/x.json").key == "datasets/d/x.json"
    assert list(default.list("")) == ["datasets/d/x.json"]  # neither auth/ nor projects/ shows through
    assert list(alpha.list("")) == ["datasets/d/x.json"]
    for key in ("auth/keys/k.json", "projects/beta/datasets/d/x.json", "audit/head.json"):
        with pytest.raises(InvalidInput, match="outside a project's resources"):
            default.get_json(key)
        with pytest.raises(InvalidInput):
            alpha.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        project_store(store, "../alpha")


@pytest.fixture
def clients(platform_settings: Settings, store: ObjectStore) -> Iterator[dict]:
    for name in ("alpha", "beta"):
        Projects(store).create(name)
    with TestClient(create_api_app(platform_settings, reconcile=False)) as api, \
            TestClient(create_ingest_app(platform_settings)) as ingest:
        yield {"api": api, "ingest": ingest, **{f"{role}@{p}": bearer(platform_settings, role, p)
                                              for role in ("uploader", "researcher") for p in ("alpha", "beta")}}


def upload(c: dict, tmp_path: Path, dataset: str, as_: str, n: int = 4) -> None:
    names = write_phantom_dataset(tmp_path / dataset, n=n, seed=2, shape=(16, 16, 6))
    for name in names:
        files = {"image": ("i.nii.gz", (tmp_path / dataset / "imagesTr" / f"{name}.nii.gz").read_bytes()),
                 "label": ("l.nii.gz", (tmp_path / dataset / "labelsTr" / f"{name}.nii.gz").read_bytes())}
        r = c["ingest"].post(f"/v1/datasets/{dataset}/scans", data={"patient_id": name}, files=files, headers=c[as_])
        assert r.status_code == 201, r.text


def test_another_projects_resources_answer_404_and_listings_show_ones_own(clients, tmp_path: Path, store: ObjectStore) -> None:
    c, api = clients, clients["api"]
    upload(c, tmp_path, "knee", "uploader@alpha")
    assert any(k.startswith("projects/alpha/datasets/knee/") for k in store.list("projects/alpha/"))
    assert not list(store.list("datasets/"))  # nothing landed in the default project
    mine = api.get("/v1/datasets", headers=c["researcher@alpha"]).json()["datasets"]
    assert [d["dataset"] for d in mine] == ["knee"] and mine[0]["scans"] == 4
    assert api.get("/v1/datasets", headers=c["researcher@beta"]).json()["datasets"] == []
    for path in ("/v1/datasets/knee", "/v1/datasets/knee/manifest", "/v1/datasets/knee/versions"):
        r = api.get(path, headers=c["researcher@beta"])
        assert r.status_code == 404, (path, r.text)
        assert "phantom" not in r.text
    assert api.post("/v1/datasets/knee/views", json={"size": 16}, headers=c["researcher@beta"]).status_code == 404
    job = api.post("/v1/datasets/knee/views", json={"size": 16, "val_fraction": 0.25, "test_fraction": 0.25},
                   headers=c["researcher@alpha"]).json()
    assert job["job_id"] and api.get(f"/v1/jobs/{job['job_id']}", headers=c["researcher@alpha"]).status_code == 200
    for method, path in (("GET", f"/v1/jobs/{job['job_id']}"), ("POST", f"/v1/jobs/{job['job_id']}/cancel")):
        r = api.request(method, path, headers=c["researcher@beta"])
        assert r.status_code == 404 and "knee" not in r.text, r.text
    assert api.get("/v1/jobs", headers=c["researcher@beta"]).json()["count"] == 0
    projects = api.get("/v1/projects", headers=c["researcher@alpha"]).json()["projects"]
    assert [(p["name"], p["roles"]) for p in projects] == [("alpha", ["researcher"])]


def test_workers_run_each_job_in_its_own_project(clients, tmp_path: Path, platform_settings: Settings, store: ObjectStore) -> None:
    c = clients
    upload(c, tmp_path, "knee", "uploader@alpha")
    worker = Worker("trainer", platform_settings, store, Bus(platform_settings, client_id="trainer"), handlers_for("trainer"))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    bus = Bus(platform_settings, client_id="test")
    try:
        r = c["api"].post("/v1/datasets/knee/views", json={"size": 16, "val_fraction": 0.25, "test_fraction": 0.25},
                          headers=c["researcher@alpha"])
        alpha = JobRecords(project_store(store, "alpha"), "alpha")
        done = wait_for_state(alpha, r.json()["job_id"], JobState.succeeded, timeout=120)
        assert store.exists(f"projects/alpha/{done.result_keys['view']}")
        # a job of project beta that names alpha's dataset (as a forged or stale command would): the
        # worker reads it through beta's part of the store, and the dataset is not there
        beta = JobService(JobRecords(project_store(store, "beta"), "beta"), bus)
        forged = beta.submit(JobKind.prepare_dataset, jobs_pb2.PrepareDataset(dataset="knee", version=1, size=16))
        failed = wait_for_state(beta.records, forged.job_id, JobState.failed, timeout=60)
        assert "NotFound" in failed.error and failed.project == "beta"
    finally:
        worker.stop()
        thread.join(30)
        worker.bus.close()
        bus.close()
