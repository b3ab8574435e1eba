"""Leases on running jobs: a worker renews its job's lease while the handler runs (polling on with
its partitions paused, so a long handler keeps its group membership); a command whose job another
worker holds waits for that lease; the reconciler republishes running jobs whose lease expired."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from google.protobuf.json_format import MessageToDict
from medsynth.bus.client import Bus
from medsynth.bus.messages import JobKind
from medsynth.core.clock import utcnow
from medsynth.core.settings import Settings
from medsynth.jobs.reconciler import reconcile_once
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import JobContext
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2
from platform_fixtures import wait_for_state, worker_threads

KIND = JobKind.prepare_dataset
SPEC = jobs_pb2.PrepareDataset(dataset="d", size=16)


@pytest.fixture
def settings(platform_settings: Settings) -> Settings:
    return platform_settings.model_copy(update={"lease_s": 3.0, "max_poll_interval_ms": 10_000, "session_timeout_ms": 6000})


@pytest.fixture
def jobs(settings: Settings, store: ObjectStore) -> Iterator[JobService]:
    bus = Bus(settings, client_id="api")
    yield JobService(JobRecords(store), bus)
    bus.close()


@pytest.fixture
def start_worker(settings: Settings, store: ObjectStore) -> Iterator:
    with worker_threads(settings, store, KIND) as start:
        yield lambda handler: start(handler, "lw")


def test_a_handler_longer_than_the_poll_interval_runs_once_and_its_lease_is_renewed(jobs: JobService, start_worker, settings: Settings) -> None:
    """12 s without a progress call, past max_poll_interval_ms (10 s): the worker keeps polling, so it
    stays in its group, the offset commit succeeds and the job runs exactly once."""
    calls: list[str] = []
    expiries: list = []

    def slow(spec, ctx: JobContext) -> dict[str, str]:
        calls.append(ctx.job_id)
        for _ in range(12):
            time.sleep(1.0)
            expiries.append(jobs.records.lease(ctx.job_id).expires_at)
        return {}

    worker = start_worker(slow)
    record = jobs.submit(KIND, SPEC)
    wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=60)
    deadline = time.monotonic() + 5  # released right after the record says succeeded (never before)
    while jobs.records.lease(record.job_id) is not None:
        assert time.monotonic() < deadline, "the lease was not released"
        time.sleep(0.05)
    assert len(set(expiries)) >= 3 and expiries[-1] > expiries[0] + timedelta(seconds=5)  # renewed every lease_s/3
    second = jobs.submit(KIND, SPEC)  # the same group member is still consuming
    wait_for_state(jobs.records, second.job_id, JobState.succeeded, timeout=60)
    time.sleep(3)  # a redelivery of the first command, had its commit failed, would be processed by now
    assert calls == [record.job_id, second.job_id]
    assert worker.ready.is_set()


def running_job(jobs: JobService, holder: str, ttl_s: float) -> JobRecord:
    """A job another worker runs (attempt 1, its lease held by ``holder``), then its command published."""
    record = JobRecord(job_id=new_job_id(KIND), kind=KIND, state=JobState.running, attempts=1,
                       spec=MessageToDict(SPEC, preserving_proto_field_name=True))
    jobs.records.put(record)
    jobs.records.renew_lease(record.job_id, holder, 1, ttl_s=ttl_s)
    assert jobs.publish(record)
    return record


def test_a_command_waits_while_another_worker_holds_the_lease(jobs: JobService, start_worker, settings: Settings) -> None:
    started_at: list = []
    start_worker(lambda spec, ctx: started_at.append(utcnow()) or {})
    record = running_job(jobs, "other@host:1", ttl_s=4.0)
    lease = jobs.records.lease(record.job_id)
    final = wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=60)
    assert started_at and started_at[0] >= lease.expires_at  # not one moment before the lease ran out
    assert final.attempts == 2


def test_the_reconciler_republishes_a_running_job_whose_lease_expired(jobs: JobService, settings: Settings) -> None:
    record = jobs.submit(KIND, SPEC)
    record.state, record.attempts = JobState.running, 1
    jobs.records.put(record)
    jobs.records.renew_lease(record.job_id, "dead@host:1", 1, ttl_s=1.5)
    assert reconcile_once(jobs, older_than_s=3600, lease_s=settings.lease_s) == []  # the lease still holds
    time.sleep(1.6)
    assert reconcile_once(jobs, older_than_s=3600, lease_s=settings.lease_s) == [record.job_id]
    assert jobs.records.publication(record.job_id).count == 2
    assert reconcile_once(jobs, older_than_s=3600, lease_s=settings.lease_s) == []  # once per expiry


def test_a_running_job_without_a_lease_counts_as_expired_after_lease_s(jobs: JobService, settings: Settings) -> None:
    record = jobs.submit(KIND, SPEC)
    record.state = JobState.running
    jobs.records.put(record)
    assert reconcile_once(jobs, older_than_s=3600, lease_s=settings.lease_s) == []
    assert reconcile_once(jobs, older_than_s=3600, now=utcnow() + timedelta(seconds=4), lease_s=settings.lease_s) == [record.job_id]


def test_a_lease_of_a_dead_process_on_this_host_is_not_waited_out(jobs: JobService, start_worker) -> None:
    """A worker killed and restarted on the same machine takes its job back at once, not after lease_s."""
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    start_worker(lambda spec, ctx: {})
    record = running_job(jobs, f"lw@{socket.gethostname()}:{dead.pid}", ttl_s=600)
    started = time.monotonic()
    final = wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=60)
    assert time.monotonic() - started < 30 and final.attempts == 2
