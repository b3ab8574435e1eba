"""Requests a client can send that once answered 500 or echoed too much: non-finite numbers, numbers
past the protobuf fields, huge ids, and 404s naming where the store lives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app
from medsynth.core.settings import Settings

from platform_fixtures import bearer


@pytest.fixture
def api(platform_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_api_app(platform_settings, reconcile=False), raise_server_exceptions=False,
                    headers=bearer(platform_settings, "researcher")) as c:
        yield c


def post_raw(api: TestClient, path: str, body: str):
    return api.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/cohorts", '{"generator_id": "g", "count": 1e400}', "count"),
        ("/v1/cohorts", '{"generator_id": "g", "count": 4, "eta": 1e400}', "eta"),
        ("/v1/cohorts", '{"generator_id": "g", "count": 4, "release": {"threshold_ratio": -1e400}}', "threshold_ratio"),
        ("/v1/generators", '{"dataset": "d", "view_id": "v", "training": {"lr_g": 1e400}}', "lr_g"),
        ("/v1/segmentations", '{"dataset": "d", "view_id": "v", "synthetic_ratio": 1e400}', "synthetic_ratio"),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(api: TestClient, path: str, body: str, field: str) -> None:
    r = post_raw(api, path, body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(field in map(str, e["loc"]) for e in errors) and "inf" in r.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/cohorts", {"generator_id": "g", "count": 4, "seed": 2**64}, "seed"),
        ("/v1/cohorts", {"generator_id": "g", "count": 4, "condition": 2**40}, "condition"),
        ("/v1/generators", {"dataset": "d", "view_id": "v", "training": {"checkpoint_every": 2**40}}, "checkpoint_every"),
        ("/v1/datasets/d/views", {"seed": 2**63}, "seed"),
        ("/v1/segmentations", {"dataset": "d", "view_id": "v", "seed": -1}, "seed"),
    ],
)
def test_numbers_past_their_fields_are_a_422(api: TestClient, path: str, body: dict, field: str) -> None:
    r = api.post(path, json=body)
    assert r.status_code == 422 and any(field in map(str, e["loc"]) for e in r.json()["detail"]), r.text


def test_a_huge_id_is_refused_without_being_echoed_back(api: TestClient) -> None:
    huge = "x" * 500_000
    r = api.post("/v1/cohorts", json={"generator_id": huge, "count": 4})
    assert r.status_code == 422 and len(r.content) < 2_000 and "500000 characters" in r.text


def test_a_json_body_over_the_cap_is_a_413_declared_or_streamed(api: TestClient, platform_settings: Settings) -> None:
    body = b'{"generator_id": "' + b"x" * (platform_settings.max_json_bytes + 10) + b'", "count": 4}'
    r = api.post("/v1/cohorts", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200, r.text[:300]

    def chunks():  # no content-length: the cap holds as the body streams in
        yield body[:1000]
        yield body[1000:]

    r = api.post("/v1/cohorts", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]


def test_not_found_does_not_say_where_the_store_is(api: TestClient, platform_settings: Settings) -> None:
    for path in ("/v1/evaluations/evaluate-0000/report", "/v1/datasets/knee/views/0000000000000000"):
        r = api.get(path)
        assert r.status_code == 404 and r.json()["detail"]
        assert str(platform_settings.home) not in r.text and "Store(" not in r.text, r.text


def test_requests_are_counted_by_route_template_and_status(api: TestClient) -> None:
    for job_id in ("no-such-job-1", "no-such-job-2"):
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
    metrics = api.get("/metrics").text
    line = next(l for l in metrics.splitlines() if l.startswith("medsynth_http_requests_total{") and 'route="/v1/jobs/{job_id}"' in l and 'status="404"' in l)
    assert float(line.rsplit(" ", 1)[1]) >= 2
    assert "no-such-job" not in metrics  # raw paths never become series
    assert 'medsynth_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"}' in metrics
