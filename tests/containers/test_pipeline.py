"""The demo's path through the containers, over REST with keys: phantoms ingested, a tiny generator trained
(its worker container killed mid-job: the job still finishes), a cohort sampled through TorchServe, a
segmenter trained on real and on synthetic data, an evaluation. Sizes are tiny: this checks the wiring, on
two busy cores, not the science."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compose_runner import ComposeRun

API = "http://127.0.0.1:26000"
INGEST = "http://127.0.0.1:26001"
TORCHSERVE_MANAGEMENT = "http://127.0.0.1:26041"
SERVICE_PORTS = {"api": 26000, "ingest": 26001, "trainer": 26011, "sampler": 26012, "segmenter": 26013, "evaluator": 26014,
                 "preparer": 26015}
DATASET = "phantoms"
TINY_GAN = {"family": "joint-gan", "latent_dim": 16, "base_channels": 8}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def admin_key(stack: ComposeRun) -> str:
    """The first admin key, made as the chart's install notes say: `medsynth keys create` inside the api
    container, which holds the store's credentials."""
    code, out, err = stack.exec("api", ["medsynth", "keys", "create", "--project", "default", "--role", "admin",
                                        "--name", "container test", "--expires-days", "1"])
    assert code == 0, out + err
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keys(admin_key: str) -> dict[str, str]:
    """An uploader's and a researcher's key, made by the admin over REST (POST /v1/keys)."""
    made = {}
    with httpx.Client(base_url=API, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        for role in ("uploader", "researcher"):
            r = admin.post("/v1/keys", json={"role": role, "name": f"container test {role}", "expires_in_days": 1})
            assert r.status_code == 201, r.text
            made[role] = r.json()["token"]
    return made


@pytest.fixture(scope="module")
def api(keys: dict[str, str]) -> Iterator[httpx.Client]:
    from medsynth.local.api_client import api_client

    with api_client(API, api_key=keys["researcher"], timeout=120) as client:
        yield client


@pytest.mark.timeout(1800)  # the stack fixture starts every container first
def test_every_service_is_ready(stack: ComposeRun, results: dict) -> None:
    """Each service answers /readyz (its broker and store checks pass) on the port compose gives it."""
    for name, port in SERVICE_PORTS.items():
        deadline = time.monotonic() + 120
        while (status := _readyz(port)) != 200:
            assert time.monotonic() < deadline, f"{name} on {port} not ready: {status}\n{stack.logs(name, 30)}"
            time.sleep(1)


@pytest.mark.timeout(3600)
def test_the_demo_path_with_a_worker_killed_mid_job(stack: ComposeRun, keys: dict[str, str], api: httpx.Client,
                                                    results: dict, tmp_path: Path) -> None:
    from medsynth.datasets.phantoms import write_phantom_dataset
    from medsynth.local.demo import ingest_all

    stages: dict[str, float] = {}
    results["stages"] = stages

    t = time.monotonic()
    data = tmp_path / "phantoms"
    write_phantom_dataset(data, n=6, seed=3, shape=(24, 24, 10))
    ingest_all(data, DATASET, INGEST, keys["uploader"])
    stages["ingest 6 phantom scans (ingest service)"] = time.monotonic() - t

    view = _run(api, stack, "/v1/datasets/phantoms/views", {"size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
                stages, "prepare views (preparer)")
    view_id = view["result_keys"]["view"].split("/")[-2]

    t = time.monotonic()
    final = _train_generator_killing_the_trainer(api, stack, view_id, results)
    generator = final["job_id"]
    stages["train generator, trainer killed mid-job (trainer)"] = time.monotonic() - t

    cohort = _run(api, stack, "/v1/cohorts", {"generator_id": generator, "count": 16, "seed": 1}, stages,
                  "sample a cohort of 16 (sampler -> TorchServe)")
    models = _torchserve_models(stack)
    assert models, "TorchServe serves no model: the cohort did not go through it"
    results["torchserve_models"] = models

    runs = []
    for source in ("real", "synthetic"):
        body = {"dataset": DATASET, "view_id": view_id, "source": source, "steps": 20, "batch_size": 4}
        if source == "synthetic":
            body["cohort_id"] = cohort["job_id"]
        runs.append(_run(api, stack, "/v1/segmentations", body, stages, f"segment on {source} data (segmenter)")["job_id"])

    evaluation = _run(api, stack, "/v1/evaluations", {"cohort_id": cohort["job_id"], "segmentation_run_ids": runs}, stages,
                      "evaluate (evaluator)")
    report = api.get(f"/v1/evaluations/{evaluation['job_id']}").raise_for_status().json()["report"]
    results["evaluation"] = {"relative Dice (synthetic / real)": _round(report.get("relative_dice")),
                             **{f"Dice {row['source']}": _round(row.get("mean_dice")) for row in report.get("utility", [])}}

    store = _store(stack)
    for job in (view, final, cohort, evaluation):
        for key in job["result_keys"].values():
            assert store.exists(key), f"{job['job_id']}: {key} is not in the store"
    for name in stages:
        stages[name] = round(stages[name], 1)
    results["complete"] = True


# -- helpers -----------------------------------------------------------------------------------------


def _train_generator_killing_the_trainer(api: httpx.Client, stack: ComposeRun, view_id: str, results: dict) -> dict:
    """A tiny generator whose trainer container's process is SIGKILLed once training is under way: the engine
    restarts the container (compose's restart policy), the command comes back to it, and the job finishes on
    its second attempt. Records the times from the kill in ``results["crash"]``; returns the finished job."""
    generator = _submit(api, "/v1/generators", {"dataset": DATASET, "view_id": view_id, "generator": TINY_GAN,
                                                 "training": {"steps": 60, "batch_size": 8, "checkpoint_every": 20, "log_every": 5}})
    running = _wait(api, stack, generator, lambda job: job["state"] in TERMINAL or job["state"] == "running" and job["progress"] > 0)
    assert running["state"] == "running", f"the generator job ended before the trainer could be killed: {running}"
    old_pid, _ = stack.crash("trainer")
    killed = time.monotonic()
    restarted = stack.wait_restarted("trainer", old_pid)
    healthy = stack.wait_healthy("trainer") + restarted
    resumed = _wait(api, stack, generator, lambda job: job["state"] in TERMINAL or job["attempts"] >= 2 and job["state"] == "running")
    resumed_s = time.monotonic() - killed
    final = _wait(api, stack, generator, lambda job: job["state"] in TERMINAL, timeout=1200)
    assert final["state"] == "succeeded", f"{final['state']}: {final['error']}\n{stack.logs('trainer', 40)}"
    assert final["attempts"] == 2, f"the killed attempt and the one that finished: {final}"
    results["crash"] = {"victim": "trainer", "job_kind": "train-generator", "progress_at_kill": running["progress"],
                        "restarted_s": round(restarted, 1), "healthy_s": round(healthy, 1),
                        "job_running_again_s": round(resumed_s, 1) if resumed["state"] == "running" else None,
                        "job_done_s": round(time.monotonic() - killed, 1), "attempts": final["attempts"]}
    return final


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _readyz(port: int) -> int | str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _submit(api: httpx.Client, path: str, body: dict) -> str:
    from medsynth.local.demo import submit_job

    return submit_job(api, path, body, path)


def _wait(api: httpx.Client, stack: ComposeRun, job_id: str, done, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while not done(job := api.get(f"/v1/jobs/{job_id}").raise_for_status().json()):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name} ---\n{stack.logs(name, 20)}" for name in ("api", "trainer", "preparer", "sampler",
                                                                                   "segmenter", "evaluator", "torchserve"))
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout:.0f}s: {job}\n{logs}")
        time.sleep(1)
    return job


def _run(api: httpx.Client, stack: ComposeRun, path: str, body: dict, stages: dict, label: str) -> dict:
    t = time.monotonic()
    job = _wait(api, stack, _submit(api, path, body), lambda job: job["state"] in TERMINAL)
    assert job["state"] == "succeeded", f"{label}: {job['state']}: {job['error']}"
    stages[label] = time.monotonic() - t
    return job


def _torchserve_models(stack: ComposeRun) -> list[str]:
    """The models TorchServe serves, asked with the management key from its key file (in the volume it
    shares with the sampler)."""
    import json

    code, out, err = stack.exec("torchserve", ["cat", "/var/lib/torchserve/key_file.json"])
    assert code == 0, err
    key = json.loads(out)["management"]["key"]
    r = httpx.get(f"{TORCHSERVE_MANAGEMENT}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [m["modelName"] for m in r.json()["models"]]


def _store(stack: ComposeRun):
    from medsynth.store.s3 import S3Store

    env = stack.services["api"]["environment"]
    return S3Store(env["MEDSYNTH_S3_ENDPOINT"], env["MEDSYNTH_S3_BUCKET"], env["MEDSYNTH_S3_ACCESS_KEY"], env["MEDSYNTH_S3_SECRET_KEY"])
