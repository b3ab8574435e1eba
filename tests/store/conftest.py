"""Fixtures for the object-store contract suite.

``store`` is parametrized over both backends. The S3 backend talks to a real S3-API server: by
default a ``moto_server`` subprocess started once per session on a free port; with ``--s3=minio`` a
MinIO container (testcontainers; needs a Docker engine). Each test gets a fresh bucket or directory.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from medsynth.store.local import LocalStore
from medsynth.store.s3 import S3Store

# Recent enough for conditional writes (If-None-Match on PutObject); testcontainers' default is older.
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port
    access_key: str
    secret_key: str

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, region="us-east-1")


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if request.config.getoption("--s3") == "minio":
        yield from _minio_server()
    else:
        yield from _moto_server(tmp_path_factory.mktemp("moto") / "moto.log")


def _moto_server(log_path: Path) -> Iterator[S3Server]:
    port = _free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_answers(f"http://127.0.0.1:{port}/", proc, log_path)
        yield S3Server(f"127.0.0.1:{port}", "testing", "testing-secret")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _minio_server() -> Iterator[S3Server]:
    from testcontainers.community.minio import MinioContainer

    try:
        container = MinioContainer(image=MINIO_IMAGE).start()
    except Exception as exc:  # docker.errors.DockerException and friends
        pytest.fail(f"--s3=minio needs a running Docker engine to start {MINIO_IMAGE}: {exc}")
    try:
        config = container.get_config()
        yield S3Server(config["endpoint"], config["access_key"], config["secret_key"])
    finally:
        container.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_answers(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto_server did not answer at {url} within {STARTUP_TIMEOUT_S}s: {log_path.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def s3_store(s3_server: S3Server) -> Iterator[S3Store]:
    bucket = f"medsynth-test-{uuid.uuid4().hex[:16]}"
    store = S3Store(s3_server.endpoint, bucket, s3_server.access_key, s3_server.secret_key).ensure_bucket()
    yield store
    _drop_bucket(s3_server.client(), bucket)


def _drop_bucket(client: Minio, bucket: str) -> None:
    """Free the server's memory (moto keeps objects in RAM); best effort."""
    with contextlib.suppress(Exception):
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> LocalStore | S3Store:
    """A fresh, empty store of each backend (the S3 server starts only if an S3 test runs)."""
    return request.getfixturevalue(f"{request.param}_store")
