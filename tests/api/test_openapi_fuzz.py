"""Schemathesis against both services' OpenAPI documents, on real sockets with a real store and
broker: generated requests (bounded: a few examples per operation) must never get a 5xx, and every
status a route answers must be one its OpenAPI entry documents."""

from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.core.settings import Settings

from platform_fixtures import bearer, live_server

EXAMPLES_PER_OPERATION = 8
UNLIMITED = {"rate_limit_per_s": 1e6, "rate_limit_burst": 10**6}  # the fuzzer's burst would meet 429s, not the routes


@pytest.fixture
def api_schema(platform_settings: Settings):
    small = platform_settings.model_copy(update={"max_upload_bytes": 1024**2, "publish_timeout_s": 2.0, **UNLIMITED})
    with live_server(create_api_app(small, reconcile=False)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), bearer(small, "researcher")


@pytest.fixture
def ingest_schema(platform_settings: Settings):
    small = platform_settings.model_copy(update={"max_upload_bytes": 1024**2, **UNLIMITED})
    with live_server(create_ingest_app(small)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), bearer(small, "uploader")


CHECKS = [not_a_server_error, status_code_conformance]


def fuzz(schema, headers: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Every operation of ``schema``, a bounded number of generated cases each (hypothesis,
    derandomized so a failure reproduces); returns the failures, one line each, and the statuses seen."""
    failures, statuses = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call_and_validate(checks=CHECKS, headers=headers)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {' '.join(str(exc).split())[:600]}")
    return failures, statuses


def test_api_never_answers_5xx_nor_an_undocumented_status(api_schema) -> None:
    schema, headers = api_schema
    assert len(list(schema.get_all_operations())) >= 20
    failures, statuses = fuzz(schema, headers)
    assert not failures, "\n".join(failures)
    assert sum(statuses.values()) >= 100 and {"404", "422"} <= set(statuses), statuses  # it did probe


def test_ingest_never_answers_5xx_nor_an_undocumented_status(ingest_schema) -> None:
    failures, statuses = fuzz(*ingest_schema)
    assert not failures, "\n".join(failures)
    assert "422" in statuses, statuses
