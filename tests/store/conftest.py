"""Fixtures for the object-store contract suite.

``store`` is parametrized over both backends. The S3 backend talks to a real S3 server: by default
the session's SeaweedFS process (tests/platform_fixtures.py: credential checks and conditional
writes, like MinIO); with ``--s3=minio`` a MinIO container (testcontainers; needs a Docker engine).
Each test gets a fresh bucket or directory.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from platform_fixtures import S3Server

from medsynth.store.local import LocalStore
from medsynth.store.s3 import S3Store

# Recent enough for conditional writes (If-None-Match on PutObject); testcontainers' default is older.
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    if request.config.getoption("--s3") == "minio":
        yield from _minio_server()
    else:
        yield request.getfixturevalue("seaweedfs")


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
    """Leave the server as the test found it; best effort."""
    with contextlib.suppress(Exception):
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> LocalStore | S3Store:
    """A fresh, empty store of each backend (the S3 server starts only if an S3 test runs)."""
    return request.getfixturevalue(f"{request.param}_store")
