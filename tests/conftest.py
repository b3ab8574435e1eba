"""Suite-wide pytest configuration (rootdir-level hooks only; fixtures live next to their tests)."""

from __future__ import annotations

import os

import pytest

# Broker, settings and store fixtures shared by the platform tests (tests/platform_fixtures.py).
pytest_plugins = ["platform_fixtures"]

# tests/containers runs the pipeline in containers (podman, the built images, ~6 minutes): `make test-containers`
# sets MEDSYNTH_CONTAINER_TESTS=1; `make test` leaves the folder out.
collect_ignore = [] if os.environ.get("MEDSYNTH_CONTAINER_TESTS") == "1" else ["containers"]


# --- which servers back the platform tests (tests/platform_fixtures.py) ----------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("tansu", "mock"),
        default="tansu",
        help="Kafka-protocol broker: tansu (a real broker process storing on SeaweedFS, default) or mock "
        "(librdkafka's in-memory mock cluster, for quick local runs).",
    )
    parser.addoption(
        "--s3",
        choices=("seaweedfs", "minio"),
        default="seaweedfs",
        help="S3 server for the store tests: seaweedfs (a local `weed mini` process, default) "
        "or minio (a MinIO container via testcontainers; needs a Docker engine).",
    )
    parser.addoption(
        "--server-base-port",
        type=int,
        default=int(os.environ.get("MEDSYNTH_TEST_BASE_PORT", "19700")),
        help="Fixed ports of the test servers: tansu on base+20, SeaweedFS on base+30..base+39 (MEDSYNTH_TEST_BASE_PORT).",
    )
# --- end ------------------------------------------------------------------------------------------
