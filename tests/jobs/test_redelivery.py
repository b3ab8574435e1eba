"""A worker process killed mid-handler: its command is redelivered to the next group member, which
finishes the job exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medsynth.bus.client import Bus
from medsynth.bus.topics import events_topic
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.bus.messages import Event, JobKind
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2

from platform_fixtures import consume, settings_env, wait_for_state

SCRIPT = Path(__file__).with_name("killable_worker.py")


def start_worker(settings: Settings, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, str(SCRIPT), str(out)], env=settings_env(settings), stdout=f, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_job_finishes_once_after_its_worker_is_killed(platform_settings: Settings, store: ObjectStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first = start_worker(platform_settings, out, tmp_path / "first.log")
    bus = Bus(platform_settings, client_id="api")
    jobs = JobService(JobRecords(store), bus)
    try:
        record = jobs.submit(JobKind.prepare_dataset, jobs_pb2.PrepareDataset(dataset="d", size=16))
        wait_for(lambda: any(out.glob("attempt-1-*")) or first.poll() is not None, 90, "the first attempt to start")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert jobs.records.get(record.job_id).state is JobState.running
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        second = start_worker(platform_settings, out, tmp_path / "second.log")
        try:
            done = wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        bus.close()
        if first.poll() is None:
            first.kill()

    assert done.attempts == 2
    assert sorted(p.name.split("-pid-")[0] for p in out.glob("attempt-*")) == ["attempt-1", "attempt-2"]
    writes = (out / "output-writes.log").read_text().splitlines()
    assert writes == [f"jobs/{record.job_id}/outputs/result.txt by {second.pid}"]
    assert store.get_bytes(done.result_keys["result"]) == b"done"
    events = consume(platform_settings, events_topic(platform_settings.topic_prefix),
                     until=lambda ms: any(Event.FromString(m.value).WhichOneof("body") == "succeeded" for m in ms))
    succeeded = [e for e in map(Event.FromString, (m.value for m in events)) if e.WhichOneof("body") == "succeeded"]
    assert [e.job_id for e in succeeded] == [record.job_id]
    assert os.environ.get("MEDSYNTH_KAFKA_BOOTSTRAP") is None  # the test did not leak settings into its own process
