"""Fixtures for tests that run against the real platform pieces: a Kafka-protocol broker process
(tansu storing on SeaweedFS by default, the same servers `medsynth stack up` starts; ``--broker=mock``
for librdkafka's in-memory mock), the local-directory store, and settings that isolate each test
(own topic prefix, own store, own consumer groups)."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from medsynth.bus.client import Bus
from medsynth.bus.topics import all_topics
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.local.servers import TANSU_BUCKET, S3Credentials, start_seaweedfs, start_tansu
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    security: Path | None = None  # SeaweedFS: the folder of its own keys (local.servers.SeaweedSecurity)

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, region="us-east-1")

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.access_key, self.secret_key)


@dataclass
class TestBroker:
    """The session's broker: where it listens, the protocol version to pin (None: negotiate), and how
    to create topics on it."""

    __test__ = False
    bootstrap: str
    api_version: str | None
    process: object  # a local.servers.Server (tansu) or a local_broker.LocalBroker (mock; tests/local_broker.py)

    def create_topics(self, topics: list[tuple[str, int]]) -> None:
        from medsynth.bus.admin import ensure_topics

        if self.api_version is None:
            bus = Bus(Settings(kafka_bootstrap=self.bootstrap, kafka_api_version=None), client_id="test-admin")
            ensure_topics(bus, topics)
        else:
            self.process.create_topics(topics)


def server_base_port(config: pytest.Config) -> int:
    return config.getoption("--server-base-port")


@pytest.fixture(scope="session")
def seaweedfs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS process for the session, on base+30..base+39, with fresh random credentials."""
    home = tmp_path_factory.mktemp("seaweedfs")
    credentials = S3Credentials.for_home(home)
    port = server_base_port(request.config) + 30
    with start_seaweedfs(home / "data", port, credentials, home / "seaweedfs.log", buckets=[TANSU_BUCKET], die_with_parent=True):
        yield S3Server(f"127.0.0.1:{port}", credentials.access_key, credentials.secret_key, home / "data" / "security")


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    if request.config.getoption("--broker") == "mock":
        from local_broker import LocalBroker  # tests/local_broker.py: confluent-kafka's mock cluster

        with LocalBroker.start(log_path=log, exit_with_parent=True) as handle:
            yield TestBroker(handle.bootstrap, "2.3", handle)
        return
    s3: S3Server = request.getfixturevalue("seaweedfs")
    port = server_base_port(request.config) + 20
    with start_tansu(port, s3.endpoint, s3.credentials, log, die_with_parent=True) as server:
        yield TestBroker(f"127.0.0.1:{port}", None, server)


@pytest.fixture
def platform_settings(broker: TestBroker, tmp_path: Path) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        home=tmp_path / "home",
        kafka_bootstrap=broker.bootstrap,
        kafka_api_version=broker.api_version,
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
    import json

    from pydantic import SecretStr

    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, (list, dict)):
            env[f"MEDSYNTH_{name.upper()}"] = json.dumps(value)
        elif value is not None:
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


@contextmanager
def worker_threads(settings: Settings, store: ObjectStore, kind) -> Iterator[Callable]:
    """``start(handler, name)`` runs a Worker for ``kind`` in a thread; all are stopped on exit."""
    from medsynth.jobs.worker import Worker

    started: list = []

    def start(handler, name: str = "w"):
        worker = Worker(name, settings, store, Bus(settings, client_id=name), {kind: handler})
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    try:
        yield start
    finally:
        for worker, thread in started:
            worker.stop()
            thread.join(timeout=30)
            worker.bus.close()


@contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port (a real socket, unlike the test client); its URL."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def served(app, settings: Settings) -> Iterator[tuple[str, int]]:
    """``app`` served as ``medsynth.api.app.main`` serves a service (:func:`medsynth.runtime.server.uvicorn_config`:
    its timeouts, medsynth's logging) on a free loopback port; its (host, port)."""
    import socket

    import uvicorn

    from medsynth.runtime.server import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings.model_copy(update={"http_host": "127.0.0.1", "http_port": port})))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def service_log(service: str) -> Iterator[io.StringIO]:
    """Logging configured as a service process configures it (:func:`medsynth.core.logging.configure_logging`),
    into the buffer yielded; the previous configuration is put back after."""
    import logging

    from medsynth.core.logging import configure_logging

    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    saved = root.handlers[:], root.level, access.filters[:]
    buffer = io.StringIO()
    configure_logging(service, stream=buffer)
    try:
        yield buffer
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        access.filters[:] = saved[2]


def api_key(settings: Settings, role: str, project: str = "default") -> str:
    """A fresh API key with ``role`` in ``project``, written to the settings' store (as ``medsynth keys create`` does)."""
    from medsynth.auth.keys import ApiKeys
    from medsynth.store import open_store

    return ApiKeys(open_store(settings)).create(project, role, name=f"test {role}")[1]


def bearer(settings: Settings, role: str, project: str = "default") -> dict[str, str]:
    """``Authorization`` headers carrying a fresh key (:func:`api_key`)."""
    return {"Authorization": f"Bearer {api_key(settings, role, project)}"}
