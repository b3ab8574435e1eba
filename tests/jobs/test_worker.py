"""The worker loop against a real Kafka-protocol broker and a real store: round trip, retries,
dead letters, cancellation, and the reconciler recovering a command that never reached the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

import pytest

from medsynth.bus.client import Bus
from medsynth.bus.topics import dead_letter_topic, events_topic
from medsynth.core.settings import Settings
from medsynth.jobs.reconciler import reconcile_once
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import JobContext, Worker
from medsynth.bus.messages import DeadLetter, Event, JobKind, decode_command
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2

from platform_fixtures import consume, wait_for_state, worker_threads

KIND = JobKind.prepare_dataset


def spec(name: str = "d") -> jobs_pb2.PrepareDataset:
    return jobs_pb2.PrepareDataset(dataset=name, size=16)


@pytest.fixture
def run_worker(platform_settings: Settings, store: ObjectStore) -> Iterator:
    with worker_threads(platform_settings, store, KIND) as start:
        yield start


@pytest.fixture
def jobs(platform_settings: Settings, store: ObjectStore) -> Iterator[JobService]:
    bus = Bus(platform_settings, client_id="api")
    yield JobService(JobRecords(store), bus)
    bus.close()


def test_command_round_trip_writes_outputs_and_events(jobs: JobService, run_worker, store: ObjectStore, platform_settings: Settings) -> None:
    def handler(s: jobs_pb2.PrepareDataset, ctx: JobContext) -> Mapping[str, str]:
        ctx.progress(0.5, "half")
        key = f"jobs/{ctx.job_id}/outputs/result.txt"
        store.put_bytes(key, f"dataset={s.dataset} size={s.size}".encode())
        return {"result": key}

    run_worker(handler)
    record = jobs.submit(KIND, spec("knee"))
    done = wait_for_state(jobs.records, record.job_id, JobState.succeeded)
    assert done.attempts == 1 and done.progress == 1.0
    assert store.get_bytes(done.result_keys["result"]) == b"dataset=knee size=16"
    events = [Event.FromString(m.value) for m in consume(platform_settings, events_topic(platform_settings.topic_prefix), until=lambda ms: any(Event.FromString(m.value).WhichOneof("body") == "succeeded" for m in ms))]
    bodies = [e.WhichOneof("body") for e in events if e.job_id == record.job_id]
    assert bodies[0] == "queued" and "started" in bodies and bodies[-1] == "succeeded"


def test_failures_are_retried_then_dead_lettered(jobs: JobService, run_worker, platform_settings: Settings) -> None:
    calls = []

    def always_fails(s, ctx):
        calls.append(ctx.record.attempts)
        raise RuntimeError(f"disk on fire (attempt {ctx.record.attempts})")

    run_worker(always_fails)
    record = jobs.submit(KIND, spec())
    failed = wait_for_state(jobs.records, record.job_id, JobState.failed)
    assert calls == [1, 2, 3] == list(range(1, platform_settings.max_attempts + 1))
    assert failed.dead_lettered and "disk on fire (attempt 3)" in failed.error
    letters = consume(platform_settings, dead_letter_topic(platform_settings.topic_prefix, KIND), until=lambda ms: len(ms) >= 1)
    letter = DeadLetter.FromString(letters[0].value)
    assert letter.attempts == 3 and "disk on fire" in letter.error
    assert decode_command(letter.command)[0].job_id == record.job_id
    assert letter.topic.endswith(KIND.value) and letter.offset >= 0


def test_transient_failure_recovers(jobs: JobService, run_worker) -> None:
    def flaky(s, ctx):
        if ctx.record.attempts == 1:
            raise ConnectionError("store hiccup")
        return {}

    run_worker(flaky)
    record = jobs.submit(KIND, spec())
    done = wait_for_state(jobs.records, record.job_id, JobState.succeeded)
    assert done.attempts == 2 and done.error is None


def test_invalid_spec_fails_at_once_without_retry(jobs: JobService, run_worker) -> None:
    from medsynth.core.errors import InvalidInput

    calls = []

    def rejects(s, ctx):
        calls.append(1)
        raise InvalidInput("size must be between 8 and 1024 voxels, got 4.")

    run_worker(rejects)
    record = jobs.submit(KIND, spec())
    failed = wait_for_state(jobs.records, record.job_id, JobState.failed)
    assert calls == [1] and "got 4" in failed.error and failed.dead_lettered


def test_cancel_queued_and_running_jobs(jobs: JobService, run_worker) -> None:
    started = threading.Event()
    steps = []

    def long_job(s, ctx):
        started.set()
        for i in range(600):
            ctx.progress(i / 600)
            steps.append(i)
            time.sleep(0.05)
        return {}

    queued = jobs.submit(KIND, spec())  # no worker yet: still queued
    assert jobs.cancel(queued.job_id).state is JobState.cancelled

    run_worker(long_job)
    running = jobs.submit(KIND, spec())
    assert started.wait(60)
    jobs.cancel(running.job_id)
    record = wait_for_state(jobs.records, running.job_id, JobState.cancelled)
    assert record.finished_at is not None and len(steps) < 600
    # the cancelled queued job's command was delivered too, and was skipped, not run
    assert jobs.records.get(queued.job_id).attempts == 0


def test_reconciler_republishes_a_lost_command(jobs: JobService, run_worker, store: ObjectStore) -> None:
    ran = []
    run_worker(lambda s, ctx: ran.append(ctx.job_id) or {})
    lost = JobRecord(job_id="prepare-dataset-lost0000000001", kind=KIND, spec={"dataset": "d", "size": 16})
    jobs.records.put(lost)  # a record whose command never reached the broker

    assert reconcile_once(jobs, older_than_s=3600) == []  # too recent to touch
    assert reconcile_once(jobs, older_than_s=0) == [lost.job_id]
    done = wait_for_state(jobs.records, lost.job_id, JobState.succeeded)
    assert ran == [lost.job_id] and done.attempts == 1
    assert reconcile_once(jobs, older_than_s=0) == []  # finished jobs are left alone
    assert _sample("medsynth_job_records", kind=KIND.value, state="succeeded") >= 1
    assert _sample("medsynth_job_records", kind=KIND.value, state="running") == 0  # every state, zeros too


def test_a_worker_shows_zero_series_before_its_first_job(platform_settings: Settings, store: ObjectStore) -> None:
    worker = Worker("fresh", platform_settings, store, Bus(platform_settings, client_id="fresh"), {JobKind.evaluate: lambda s, c: {}})
    worker.bus.close()
    assert _sample("medsynth_dead_letters_total", kind="evaluate") is not None  # 0 until a first dead letter
    assert _sample("medsynth_jobs_total", kind="evaluate", outcome="failed") is not None


def _sample(name: str, **labels: str) -> float | None:
    """The current value of one series of this process's Prometheus registry, or None if absent."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_unreadable_message_goes_to_dead_letters(run_worker, platform_settings: Settings) -> None:
    from medsynth.bus.topics import command_topic

    run_worker(lambda s, ctx: {})
    bus = Bus(platform_settings, client_id="vandal")
    bus.publish(command_topic(platform_settings.topic_prefix, KIND), "junk", b"\xff\x00 not a protobuf")
    bus.close()
    letters = consume(platform_settings, dead_letter_topic(platform_settings.topic_prefix, None), until=lambda ms: len(ms) >= 1)
    assert DeadLetter.FromString(letters[0].value).command == b"\xff\x00 not a protobuf"


def test_a_worker_reports_its_consumer_lag(jobs: JobService, run_worker, platform_settings: Settings, monkeypatch) -> None:
    """Commands queued behind one the handler holds show as lag, and the lag is 0 once they are done.
    (On tansu 0.6.0, whose ListOffsets under-reports the end of a partition, the lag can read lower
    than the three commands queued; on Kafka it is exact.)"""
    from prometheus_client import REGISTRY

    from medsynth.jobs import worker as worker_module

    monkeypatch.setattr(worker_module, "LAG_EVERY_S", 0.3)
    release = threading.Event()
    run_worker(lambda spec_, ctx: release.wait(60) and {}, name="lagging")
    submitted = [jobs.submit(KIND, spec(f"d{i}")) for i in range(4)]
    group = f"{platform_settings.topic_prefix}.lagging"

    def lag() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "medsynth_consumer_lag"
                   for s in m.samples if s.labels.get("group") == group)

    try:
        deadline = time.monotonic() + 30
        while lag() < 1:
            assert time.monotonic() < deadline, [(s.labels["partition"], s.value) for m in REGISTRY.collect() if m.name == "medsynth_consumer_lag" for s in m.samples if s.labels.get("group") == group]
            time.sleep(0.2)
    finally:
        release.set()
    for record in submitted:
        wait_for_state(jobs.records, record.job_id, JobState.succeeded)
    deadline = time.monotonic() + 30
    while lag() > 0:
        assert time.monotonic() < deadline, lag()
        time.sleep(0.2)
