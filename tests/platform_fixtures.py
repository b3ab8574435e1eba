"""Fixtures for tests that run against the real platform pieces: a local Kafka-protocol broker
process (the same launcher `medsynth stack up` uses), the local-directory store, and settings that
isolate each test (own topic prefix, own store, own consumer groups)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medsynth.bus.local_broker import LocalBroker
from medsynth.bus.topics import all_topics
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with LocalBroker.start(log_path=log, exit_with_parent=True) as handle:
        yield handle


@pytest.fixture
def platform_settings(broker: LocalBroker, tmp_path: Path) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        home=tmp_path / "home",
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        max_attempts=3,
        retry_backoff_s=0.1,
        session_timeout_ms=6000,
        reconcile_after_s=3600,
    )
    broker.create_topics(all_topics(prefix))
    return settings


@pytest.fixture
def store(platform_settings: Settings) -> ObjectStore:
    return LocalStore(platform_settings.local_store_root)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"MEDSYNTH_{name.upper()}"] = str(value.value if hasattr(value, "value") else value)
    return env


def wait_for_state(records: JobRecords, job_id: str, state: JobState, timeout: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = records.get(job_id)
        if record.state is state:
            return record
        if record.state.terminal or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {record.state.value}, expected {state.value}: {record.error}")
        time.sleep(0.1)


def consume(settings: Settings, topic: str, until: Callable[[list], bool], timeout: float = 30) -> list:
    """Read ``topic`` from the beginning (own consumer group) until ``until(messages)`` holds."""
    from medsynth.bus.client import Bus

    bus = Bus(settings, client_id="test-reader")
    consumer = bus.consumer([topic], group=f"reader-{uuid.uuid4().hex[:8]}")
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while not until(messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: got {len(messages)} messages")
            for batch in consumer.poll(timeout_ms=500).values():
                messages.extend(batch)
    finally:
        consumer.close(autocommit=False)
    return messages
