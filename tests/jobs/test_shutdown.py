"""SIGTERM ends a worker process within a few seconds, whatever it is doing and whatever the broker's
state: idle with the broker unreachable, or with a handler that never reaches a progress step (its
job is then taken up at once by the next worker)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from medsynth.bus.client import Bus
from medsynth.bus.messages import JobKind
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2

from platform_fixtures import wait_for_state
from test_redelivery import start_worker, wait_for

SIGTERM_LIMIT_S = 10.0  # 5 s for a busy handler to reach a progress step, then the consumer closes within 3 s


def stop_and_time(proc) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return time.monotonic() - started


def test_sigterm_with_the_broker_unreachable(platform_settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = platform_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
    (tmp_path / "out").mkdir()
    proc = start_worker(down, tmp_path / "out", tmp_path / "w.log")
    time.sleep(8)  # imported, trying to reach the broker
    assert proc.poll() is None, (tmp_path / "w.log").read_text()[-2000:]
    assert stop_and_time(proc) < SIGTERM_LIMIT_S
    assert "cannot reach the broker" in (tmp_path / "w.log").read_text()


def test_sigterm_with_a_handler_stuck_between_progress_steps(platform_settings: Settings, store: ObjectStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first = start_worker(platform_settings, out, tmp_path / "first.log")
    bus = Bus(platform_settings, client_id="api")
    try:
        jobs = JobService(JobRecords(store), bus)
        record = jobs.submit(JobKind.prepare_dataset, jobs_pb2.PrepareDataset(dataset="d", size=16))
        wait_for(lambda: any(out.glob("attempt-1-*")), 90, "the first attempt to start")
        assert stop_and_time(first) < SIGTERM_LIMIT_S
        assert jobs.records.lease(record.job_id) is None  # given up, so the next delivery need not wait
        second = start_worker(platform_settings, out, tmp_path / "second.log")
        try:
            done = wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=120)
        finally:
            stop_and_time(second)
        assert done.attempts == 2
    finally:
        bus.close()
        if first.poll() is None:
            first.kill()
