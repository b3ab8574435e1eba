"""Requests a client can send that once answered 500, echoed too much or were half-understood:
non-finite numbers, numbers past the protobuf fields, huge ids, 404s naming where the store lives, one
job kind's id on another kind's routes, unknown fields in a body, and clients that stall or hang up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.auth.policy import Access, policy_for
from medsynth.auth.principal import Role
from medsynth.bus.messages import JobKind
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.store.projects import project_store
from medsynth.store import open_store

from platform_fixtures import api_key, bearer


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
    errors = r.json()["errors"]
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
    assert r.status_code == 422 and any(field in map(str, e["loc"]) for e in r.json()["errors"]), r.text


SEG = {"dataset": "d", "view_id": "v"}
STUDY = {"dataset": "d", "view_id": "v", "families": [{"generator": {"family": "joint-gan"}}]}


@pytest.mark.parametrize(
    ("path", "body", "field", "says"),
    [
        ("/v1/segmentations", {**SEG, "early_stopping": True, "patience": 0}, "patience", "greater than or equal to 1"),
        ("/v1/segmentations", {**SEG, "patience": 3}, "patience", "early stopping only"),
        ("/v1/segmentations", {**SEG, "min_delta": 0.1}, "min_delta", "early stopping only"),
        ("/v1/segmentations", {**SEG, "steps": 100, "early_stopping": True, "min_steps": 101}, "min_steps", "must not exceed steps"),
        ("/v1/segmentations", {**SEG, "steps": 100, "val_every": 101}, "val_every", "must not exceed steps"),
        ("/v1/segmentations", {**SEG, "early_stopping": True, "min_delta": 1.0}, "min_delta", "less than 1"),
        ("/v1/studies", {**STUDY, "segmentation": {"steps": 100, "val_every": 101}}, "segmentation", "val_every"),
        ("/v1/studies", {**STUDY, "segmentation": {"patience": 0}}, "patience", "greater than or equal to 1"),
    ],
)
def test_bad_early_stopping_settings_are_a_422_naming_the_field(api: TestClient, path: str, body: dict, field: str, says: str) -> None:
    r = api.post(path, json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(field in map(str, e["loc"]) and says in e["msg"] for e in errors), r.text


@pytest.mark.parametrize(
    ("release", "field", "says"),
    [
        ({"threshold_ratio": 1.5}, "threshold_ratio", "less than 1"),
        ({"threshold_ratio": 1}, "threshold_ratio", "less than 1"),
        ({"threshold_ratio": 0}, "threshold_ratio", "greater than 0"),
        ({"threshold_quantile": 1}, "threshold_quantile", "less than 1"),
        ({"threshold_quantile": -0.01}, "threshold_quantile", "greater than 0"),
    ],
)
def test_a_gate_threshold_outside_0_1_is_a_422_naming_it(api: TestClient, release: dict, field: str, says: str) -> None:
    r = api.post("/v1/cohorts", json={"generator_id": "g", "count": 4, "release": release})
    assert r.status_code == 422, r.text
    assert any(field in map(str, e["loc"]) and says in e["msg"] for e in r.json()["errors"]), r.text


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


def test_an_unknown_dataset_has_no_versions(api: TestClient) -> None:
    r = api.get("/v1/datasets/no-such-dataset/versions")
    assert r.status_code == 404 and "no-such-dataset" in r.json()["detail"], r.text


# --- ids of one job kind on another kind's routes ---------------------------------------------------

#: Route prefix → the job kind whose ids it takes.
KIND_ROUTES = {"/v1/generators/": JobKind.train_generator, "/v1/cohorts/": JobKind.sample_cohort,
               "/v1/segmentations/": JobKind.train_segmenter, "/v1/evaluations/": JobKind.evaluate}
DESTINATION = {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 104}


def test_an_id_of_another_job_kind_is_a_404_on_every_kind_specific_route(platform_settings: Settings) -> None:
    """A succeeded job of every kind, its id sent to every route of every other kind: 404 naming what the id
    is, never a 500 from reading the job's results as another kind's."""
    from medsynth.core.settings import DicomNode

    settings = platform_settings.model_copy(update={"dicom_destinations": [DicomNode(**DESTINATION)]})
    records = JobRecords(project_store(open_store(settings), "default"))
    ids = {}
    for kind in JobKind:
        ids[kind] = new_job_id(kind)
        records.put(JobRecord(job_id=ids[kind], kind=kind, spec={}, state=JobState.succeeded, result_keys={"view": "datasets/d/views/v/view.json"}))
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False,
                    headers=bearer(settings, "researcher")) as client:
        paths = client.app.openapi()["paths"]
        routes = [(method.upper(), path, kind) for path, ops in paths.items() for method in ops
                  for prefix, kind in KIND_ROUTES.items() if path.startswith(prefix) and "{" in path]
        assert len(routes) >= 8, routes
        for method, path, kind in routes:
            for other, job_id in ids.items():
                if other is kind:
                    continue
                concrete = path.split("{")[0] + job_id + path.split("}")[1]
                r = client.request(method, concrete, json=DESTINATION if method == "POST" else None)
                assert r.status_code == 404 and f"that id is a {other.value} job" in r.json()["detail"], (method, concrete, r.status_code, r.text)


# --- unknown fields in request bodies ---------------------------------------------------------------


def _request_body_schemas(openapi: dict) -> Iterator[tuple[str, str, dict]]:
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
            if body is not None:
                yield method.upper(), path, body["schema"]


def _models_under(schema: dict, components: dict, seen: set[str]) -> None:
    """The names of every component schema ``schema`` refers to, at any depth, into ``seen``."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref and (name := ref.rsplit("/", 1)[1]) not in seen:
            seen.add(name)
            _models_under(components[name], components, seen)
        for value in schema.values():
            _models_under(value, components, seen)
    elif isinstance(schema, list):
        for value in schema:
            _models_under(value, components, seen)


def test_every_request_model_refuses_unknown_fields(platform_settings: Settings) -> None:
    """Every JSON body of both apps, at any depth (family options, training options, the release gate,
    a study's families and arms…), is a model that forbids fields it does not have; and each route answers
    a body with a misspelt field ({"sise": 64}) with a 422 naming it, whatever else is wrong with it."""
    from medsynth.studies.reader import TOKEN_PREFIX, _token_key

    settings = platform_settings.model_copy(update={"rate_limit_burst": 10**6})
    keys = {role: {"Authorization": f"Bearer {api_key(settings, role.value)}"} for role in Role}
    reader_token = f"{TOKEN_PREFIX}unknown-fields"  # a reader's token, as a reader study leaves it, for the reader routes
    open_store(settings).put_json(_token_key(reader_token), {"project": "default", "reader_study_id": "xreader_study_id", "reader": "r"})
    checked = 0
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False) as api, \
            TestClient(create_ingest_app(settings), raise_server_exceptions=False) as ingest:
        for client in (api, ingest):
            openapi = client.app.openapi()
            components = openapi["components"]["schemas"]
            for method, path, schema in _request_body_schemas(openapi):
                models: set[str] = set()
                _models_under(schema, components, models)
                lax = [m for m in models if "properties" in components[m] and components[m].get("additionalProperties") is not False]
                assert models and not lax, (method, path, "models that take unknown fields", lax)
                policy = policy_for(method, path)
                headers = keys[sorted(policy.roles)[0]] if policy.access is Access.roles else {"X-Reader-Token": reader_token}
                r = client.request(method, path.replace("{", "x").replace("}", ""), json={"sise": 64}, headers=headers)
                assert r.status_code == 422, (method, path, r.status_code, r.text)
                assert any(e["type"] == "extra_forbidden" and e["loc"][-1] == "sise" for e in r.json()["errors"]), (method, path, r.text)
                checked += 1
    assert checked >= 11


# --- slow and vanishing clients, on a real socket ------------------------------------------------------

# keep-alive far above the wait of _exchange: only the header and body timeouts can end a connection in time
SLOW = {"http_header_timeout_s": 0.5, "http_body_timeout_s": 0.5, "http_keep_alive_s": 120}


def _exchange(address: tuple[str, int], data: bytes, wait_s: float = 30.0) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes the connection; what came back and how long it took.
    A server that still holds the connection after ``wait_s`` fails the test (with SLOW's keep-alive, only
    the timeouts under test close it sooner)."""
    import socket
    import time

    started = time.monotonic()
    with socket.create_connection(address, timeout=wait_s) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise AssertionError(f"the server still held the connection after {wait_s:.0f} s: {b''.join(chunks)!r}") from None
    return b"".join(chunks), time.monotonic() - started


def test_a_client_that_stalls_in_its_headers_or_body_gets_408(platform_settings: Settings) -> None:
    """uvicorn waits for headers as long as a client likes; the services give each request's headers, and each
    part of its body, MEDSYNTH_HTTP_HEADER_TIMEOUT_S and MEDSYNTH_HTTP_BODY_TIMEOUT_S."""
    from platform_fixtures import served

    settings = platform_settings.model_copy(update=SLOW)
    key = bearer(settings, "researcher")["Authorization"]
    with served(create_api_app(settings, reconcile=False), settings) as address:
        answer, took = _exchange(address, b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Half: a")  # headers never finished
        assert answer.startswith(b"HTTP/1.1 408 "), (answer, took)
        answer, took = _exchange(address, b"")  # a connection that never says anything is closed
        assert answer == b""
        head = f"POST /v1/cohorts HTTP/1.1\r\nHost: api\r\nAuthorization: {key}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        answer, took = _exchange(address, head.encode() + b'{"generator_id": "g", ')  # the body stops coming
        assert answer.startswith(b"HTTP/1.1 408 ") and b"the request body stopped coming" in answer, (answer, took)
        answer, _ = _exchange(address, b"GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")  # prompt clients are served
        assert answer.startswith(b"HTTP/1.1 200 ")


def _upload_start(settings: Settings) -> bytes:
    """The first 2 kB of a 1 MB scan upload: headers, the patient id and the start of a valid NIfTI image."""
    import nibabel as nib
    import numpy as np

    key = bearer(settings, "uploader")["Authorization"]
    image = nib.Nifti1Image(np.zeros((64, 64, 64), np.int16), np.eye(4)).to_bytes()
    return (f"POST /v1/datasets/knee/scans HTTP/1.1\r\nHost: ingest\r\nAuthorization: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {10**6}\r\n\r\n"
            '--b0undary\r\nContent-Disposition: form-data; name="patient_id"\r\n\r\np1\r\n'
            '--b0undary\r\nContent-Disposition: form-data; name="image"; filename="i.nii"\r\n\r\n').encode() + image[:2000]


def test_an_upload_that_stalls_gets_408_and_one_that_is_dropped_leaves_one_log_line(platform_settings: Settings) -> None:
    import socket
    import time

    from platform_fixtures import served, service_log

    settings = platform_settings.model_copy(update=SLOW)
    with service_log("ingest") as log, served(create_ingest_app(settings, assemble_quiet_series=False), settings) as address:
        answer, took = _exchange(address, _upload_start(settings))
        assert answer.startswith(b"HTTP/1.1 408 "), (answer, took)

        with socket.create_connection(address, timeout=5) as s:  # the client goes away mid-upload
            s.sendall(_upload_start(settings))
            time.sleep(0.2)
        deadline = time.monotonic() + 30  # the line comes when the server notices; a busy machine may take a while
        while "disconnected" not in log.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    text = log.getvalue()
    assert text.count("the client disconnected before its request body was read") == 1, text
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
