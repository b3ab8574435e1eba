"""Suite-wide pytest configuration (rootdir-level hooks only; fixtures live next to their tests)."""

from __future__ import annotations

import pytest

# Broker, settings and store fixtures shared by the platform tests (tests/platform_fixtures.py).
pytest_plugins = ["platform_fixtures"]


# --- store: which S3-API server backs the S3 store tests (tests/store/conftest.py) -----------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--s3",
        choices=("moto", "minio"),
        default="moto",
        help="S3 server for the store tests: moto (a local moto_server process, default) "
        "or minio (a MinIO container via testcontainers; needs a Docker engine).",
    )
# --- end store ------------------------------------------------------------------------------------
