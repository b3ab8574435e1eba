"""The fault suite: the supervised local stack (SeaweedFS, tansu, TorchServe, six services; the store
on SeaweedFS) runs real jobs through REST while a process is killed or the S3 server is frozen, and
no person helps. For each fault the jobs submitted must each end ``succeeded`` exactly once (one
``succeeded`` event, its outputs in the store), none lost, none left running.

Every test appends a row to ``fault-table.json`` in the session's temporary folder (its path is
printed): fault, jobs submitted / finished once / lost / duplicated, seconds from the fault to the
affected job finishing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import pytest

from medsynth.bus.messages import Event
from medsynth.bus.topics import events_topic
from medsynth.core.settings import Settings
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.local.servers import S3Credentials
from medsynth.store.s3 import S3Store

from platform_fixtures import consume

BASE = 21700  # api on it; broker +20, SeaweedFS +30.., TorchServe +40.. (tests/test_stack.py uses 18700)
API = f"http://127.0.0.1:{BASE}"
TINY_GAN = {"family": "joint-gan", "latent_dim": 16, "base_channels": 8}
TERMINAL = ("succeeded", "failed", "cancelled")


def medsynth(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsynth.local.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("faults")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    env.update(MEDSYNTH_HOME=str(root / "home"), MEDSYNTH_STACK_BASE_PORT=str(BASE), MEDSYNTH_STORE="s3",
               MEDSYNTH_RECONCILE_EVERY_S="2", MEDSYNTH_RECONCILE_AFTER_S="10", MEDSYNTH_LEASE_S="15",
               MEDSYNTH_RETRY_BACKOFF_S="2", MEDSYNTH_SAMPLER_WAIT_S="90")
    up = medsynth("stack", "up", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    for role in ("uploader", "researcher"):  # keys in the stack's SeaweedFS store, as the README bootstraps them
        made = medsynth("keys", "create", "--role", role, env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        env[f"TEST_KEY_{role.upper()}"] = made.stdout.strip()
    try:
        data = root / "msd"
        write_phantom_dataset(data, n=6, seed=3, shape=(24, 24, 10))
        ingest = medsynth("ingest", str(data), "--dataset", "f", "--url", f"http://127.0.0.1:{BASE + 1}",
                          env={**env, "MEDSYNTH_API_KEY": env["TEST_KEY_UPLOADER"]})
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        with httpx.Client(base_url=API, timeout=30, headers=auth(env)) as api:
            view = wait_done(api, post(api, "/v1/datasets/f/views", {"size": 32, "val_fraction": 0.2, "test_fraction": 0.2}))
        yield {"env": env, "root": root, "view_id": view["result_keys"]["view"].split("/")[-2], "table": root / "fault-table.json"}
    finally:
        down = medsynth("stack", "down", env=env)
        print(f"fault table: {root / 'fault-table.json'}")
        assert down.returncode == 0, down.stdout + down.stderr


def auth(env: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['TEST_KEY_RESEARCHER']}"}


def post(api: httpx.Client, path: str, body: dict) -> str:
    r = api.post(path, json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def job(api: httpx.Client, job_id: str) -> dict:
    for _ in range(60):  # the api itself may be restarting
        try:
            return api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        except httpx.HTTPError:
            time.sleep(1)
    raise AssertionError(f"the api did not answer for job {job_id}")


def wait_for(api: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (record := job(api, job_id))["state"] not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {record['state']} after {timeout:.0f}s: {record}"
        time.sleep(0.3)
    return record


def wait_done(api: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    record = wait_for(api, job_id, TERMINAL, timeout)
    assert record["state"] == "succeeded", record
    return record


def pid_of(env: dict, name: str) -> int:
    home = Path(env["MEDSYNTH_HOME"])
    stack = json.loads((home / "stack.json").read_text())
    (proc,) = [p for p in stack["processes"] if p["name"] == name]
    assert proc["pid"], stack
    return proc["pid"]


def store(env: dict) -> S3Store:
    creds = S3Credentials.for_home(Path(env["MEDSYNTH_HOME"]))
    return S3Store(f"127.0.0.1:{BASE + 30}", "medsynth", creds.access_key, creds.secret_key)


def succeeded_events(env: dict, job_ids: set[str]) -> dict[str, int]:
    """How many ``succeeded`` events each job has on the stack's events topic (``job_ids``: jobs whose
    record says succeeded, so each must have one)."""
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{BASE + 20}", topic_prefix="medsynth")
    counts = dict.fromkeys(job_ids, 0)

    def enough(messages: list) -> bool:
        for m in messages[len(seen):]:
            e = Event.FromString(m.value)
            if e.WhichOneof("body") == "succeeded" and e.job_id in counts:
                counts[e.job_id] += 1
        seen.extend(messages[len(seen):])
        return all(counts.values()) and time.monotonic() > settle

    seen: list = []
    settle = time.monotonic() + 3  # read on a little past the last expected event: a duplicate would show
    consume(settings, events_topic("medsynth"), until=enough, timeout=60)
    return counts


def record_row(stack: dict, fault: str, job_ids: list[str], records: list[dict], recovery_s: float) -> None:
    failed = [r for r in records if r["state"] != "succeeded"]
    assert not failed, f"{fault}: not every job succeeded: {failed}"
    events = succeeded_events(stack["env"], set(job_ids))
    once = [j for j in job_ids if events[j] == 1 and next(r for r in records if r["job_id"] == j)["state"] == "succeeded"]
    row = {"fault": fault, "submitted": len(job_ids), "finished_once": len(once),
           "lost": sum(r["state"] not in TERMINAL for r in records), "duplicated": sum(n > 1 for n in events.values()),
           "attempts": {r["job_id"]: r["attempts"] for r in records}, "recovery_s": round(recovery_s, 1)}
    table = json.loads(stack["table"].read_text()) if stack["table"].exists() else []
    stack["table"].write_text(json.dumps(table + [row], indent=2))
    print(json.dumps(row))
    assert row["finished_once"] == row["submitted"] and row["lost"] == 0 and row["duplicated"] == 0, row


def ended_after(record: dict, moment: datetime) -> None:
    """The job was still at work when the fault struck: it finished after ``moment``."""
    assert datetime.fromisoformat(record["finished_at"]) > moment, (record, moment)


def kill_when_running(api: httpx.Client, env: dict, job_id: str, victim: str) -> float:
    wait_for(api, job_id, ("running", *TERMINAL))
    state = job(api, job_id)
    assert state["state"] == "running", f"{job_id} ended before {victim} could be killed: {state}"
    os.kill(pid_of(env, victim), signal.SIGKILL)
    return time.monotonic()


def generator_body(stack: dict, steps: int) -> dict:
    return {"dataset": "f", "view_id": stack["view_id"], "generator": TINY_GAN,
            "training": {"steps": steps, "batch_size": 8, "checkpoint_every": 20, "log_every": 5}}


@pytest.fixture(scope="module")
def generator_id(stack: dict) -> str:
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        return wait_done(api, post(api, "/v1/generators", generator_body(stack, 30)))["job_id"]


# -- the faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("victim", "kind"), [("trainer", "generator"), ("sampler", "cohort"), ("segmenter", "segmentation"), ("evaluator", "evaluation")])
def test_a_worker_killed_mid_job(stack: dict, generator_id: str, victim: str, kind: str) -> None:
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        if kind == "generator":
            body, path = generator_body(stack, 60), "/v1/generators"
        elif kind == "cohort":
            body, path = {"generator_id": generator_id, "count": 64, "seed": 2}, "/v1/cohorts"
        else:
            # an evaluation is short: a larger cohort keeps it at work long enough to be killed mid-job
            count = 160 if kind == "evaluation" else 16
            cohort = wait_done(api, post(api, "/v1/cohorts", {"generator_id": generator_id, "count": count, "seed": 3}))
            seg = {"dataset": "f", "view_id": stack["view_id"], "source": "synthetic", "cohort_id": cohort["job_id"], "steps": 20, "batch_size": 4}
            if kind == "segmentation":
                body, path = seg, "/v1/segmentations"
            else:  # a real-only run: its encoder is the evaluation's feature extractor
                run = wait_done(api, post(api, "/v1/segmentations", seg | {"source": "real", "cohort_id": None}))
                body, path = {"cohort_id": cohort["job_id"], "segmentation_run_ids": [run["job_id"]]}, "/v1/evaluations"
        job_id = post(api, path, body)
        killed = kill_when_running(api, stack["env"], job_id, victim)
        fault_at = datetime.now(timezone.utc)
        final = wait_for(api, job_id, TERMINAL)
        ended_after(final, fault_at)
        recovery = time.monotonic() - killed
        assert final["attempts"] == 2, final
        for key in final["result_keys"].values():
            assert store(stack["env"]).exists(key), key
    record_row(stack, f"kill -9 {victim} mid-{kind}", [job_id], [final], recovery)


def test_the_broker_restarted_mid_cohort(stack: dict, generator_id: str) -> None:
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        job_id = post(api, "/v1/cohorts", {"generator_id": generator_id, "count": 96, "seed": 4})
        killed = kill_when_running(api, stack["env"], job_id, "broker")
        fault_at = datetime.now(timezone.utc)
        final = wait_for(api, job_id, TERMINAL)
        recovery = time.monotonic() - killed
        ended_after(final, fault_at)
    record_row(stack, "kill -9 broker mid-cohort (supervisor restarts it)", [job_id], [final], recovery)


def test_torchserve_killed_mid_cohort(stack: dict, generator_id: str) -> None:
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        job_id = post(api, "/v1/cohorts", {"generator_id": generator_id, "count": 96, "seed": 5})
        wait_for(api, job_id, ("running", *TERMINAL))
        # the Java frontend itself, not the medsynth wrapper: TorchServe dies as it would on its own
        java = [p for p in psutil.Process(pid_of(stack["env"], "torchserve")).children(recursive=True) if "java" in p.name()]
        assert java
        for p in java:
            p.kill()
        killed, fault_at = time.monotonic(), datetime.now(timezone.utc)
        final = wait_for(api, job_id, TERMINAL, timeout=400)
        recovery = time.monotonic() - killed
        ended_after(final, fault_at)
    record_row(stack, "kill -9 TorchServe mid-cohort", [job_id], [final], recovery)


def test_the_s3_server_frozen_for_30s_mid_training(stack: dict) -> None:
    """SIGSTOP on SeaweedFS: connections open but nothing answers — the store and the broker's
    storage both hang, as in a network partition — then SIGCONT after 30 s."""
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        job_id = post(api, "/v1/generators", generator_body(stack, 80))
        wait_for(api, job_id, ("running", *TERMINAL))
        weed = psutil.Process(pid_of(stack["env"], "seaweedfs"))
        weed.suspend()
        frozen = time.monotonic()
        try:
            time.sleep(30)
        finally:
            weed.resume()
        resumed = datetime.now(timezone.utc)
        final = wait_for(api, job_id, TERMINAL, timeout=400)
        recovery = time.monotonic() - frozen - 30
        ended_after(final, resumed)
    record_row(stack, "SeaweedFS unreachable for 30 s mid-training", [job_id], [final], recovery)


def test_the_api_killed_during_a_burst_of_submissions(stack: dict) -> None:
    """24 clients each submit a prepare-dataset job, retrying on connection errors until answered;
    the api is killed while they do. Every job record made ends succeeded once — including one
    whose POST was cut off after its record was written (the reconciler publishes it)."""
    answered: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
            for _ in range(120):
                try:
                    r = api.post("/v1/datasets/f/views", json={"size": 16, "seed": i})
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                assert r.status_code in (202, 503), r.text
                with lock:
                    answered.append(r.json()["job_id"] if r.status_code == 202 else r.json()["detail"].split()[1])
                return

    s3 = store(stack["env"])
    before = {k for k in s3.list("jobs/") if k.endswith("/record.json")}
    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads[:8]:
        t.start()
    time.sleep(0.5)
    os.kill(pid_of(stack["env"], "api"), signal.SIGKILL)
    killed = time.monotonic()
    for t in threads[8:]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(answered) == 24
    created = sorted(k.split("/")[1] for k in set(s3.list("jobs/")) - before if k.endswith("/record.json"))
    assert set(answered) <= set(created)
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        records = [wait_for(api, j, TERMINAL, timeout=300) for j in created]
    recovery = time.monotonic() - killed
    row_note = f"{len(created) - len(set(answered))} records whose POST got no answer"
    record_row(stack, f"kill -9 api during 24 submissions ({row_note})", created, records, recovery)


def test_a_study_survives_its_workers_and_the_api_killed(stack: dict) -> None:
    """A study (one generator, its cohort, real-only and synthetic segmenters, an evaluation) while the
    trainer is killed mid-generator, then the api (which drives studies) mid-study, then the segmenter
    mid-run, then the broker as the evaluation is submitted: the study ends succeeded, every job of it
    once, none duplicated."""
    spec = {"dataset": "f", "view_id": stack["view_id"], "seeds": [0], "cohort_size": 16, "max_eval_samples": 16,
            "families": [{"generator": TINY_GAN, "training": {"steps": 60, "batch_size": 8, "checkpoint_every": 20, "log_every": 5}}],
            "arms": {"synthetic": True, "ratios": [], "augmentation": [False]},
            "segmentation": {"models": ["unet"], "steps": 40, "batch_size": 4}}
    with httpx.Client(base_url=API, timeout=30, headers=auth(stack["env"])) as api:
        jobs_before = {j["job_id"] for j in api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
        r = api.post("/v1/studies", json=spec)
        assert r.status_code == 202, r.text
        study_id = r.json()["study_id"]
        node_job = lambda node: next(n["job_id"] for n in api.get(f"/v1/studies/{study_id}").json()["nodes"] if n["node"] == node)  # noqa: E731
        generator = node_job("generator/joint-gan/s0")
        started = time.monotonic()
        kill_when_running(api, stack["env"], generator, "trainer")
        wait_done(api, generator)
        os.kill(pid_of(stack["env"], "api"), signal.SIGKILL)  # the supervisor restarts it; its study loop picks the study up
        deadline = time.monotonic() + 120
        while True:
            try:
                nodes = {n["node"]: n for n in api.get(f"/v1/studies/{study_id}").json()["nodes"]}
                if nodes["segment/joint-gan/synthetic/unet/aug0/s0"]["job_id"]:
                    break
            except httpx.HTTPError:
                pass  # the api is restarting
            assert time.monotonic() < deadline, "the study did not go on after the api was killed"
            time.sleep(0.5)
        kill_when_running(api, stack["env"], nodes["segment/joint-gan/synthetic/unet/aug0/s0"]["job_id"], "segmenter")
        evaluation = lambda: next(n for n in api.get(f"/v1/studies/{study_id}").json()["nodes"] if n["node"] == "evaluate/joint-gan/s0")  # noqa: E731
        deadline = time.monotonic() + 300
        while not evaluation()["job_id"]:  # the evaluation is submitted once both runs are done: then the broker goes
            assert time.monotonic() < deadline, "the study did not reach its evaluation"
            time.sleep(0.3)
        os.kill(pid_of(stack["env"], "broker"), signal.SIGKILL)  # the supervisor restarts it; the queued command is kept
        deadline = time.monotonic() + 400
        while (study := api.get(f"/v1/studies/{study_id}").json())["state"] == "running":
            assert time.monotonic() < deadline, study
            time.sleep(1)
        assert study["state"] == "succeeded", study
        finals = [job(api, n["job_id"]) for n in study["nodes"]]
        assert all(f["state"] == "succeeded" for f in finals)
        new_jobs = {j["job_id"] for j in api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]} - jobs_before
        assert new_jobs == {f["job_id"] for f in finals} and len(new_jobs) == len(study["nodes"]) == 5  # each job once
        attempts = {f["kind"]: f["attempts"] for f in finals if f["job_id"] in (generator, nodes["segment/joint-gan/synthetic/unet/aug0/s0"]["job_id"])}
        assert attempts == {"train-generator": 2, "train-segmenter": 2}, attempts
        assert api.get(study["results"]["json"]).status_code == 200
    record_row(stack, "kill -9 trainer, api, segmenter, broker during a study", sorted(new_jobs), finals, time.monotonic() - started)
