"""The REST conventions every route of both services keeps, each checked by walking the apps' routes (or
their OpenAPI documents), so that a new route that breaks one fails here:

- errors are RFC 9457 problem details (``application/problem+json``: type, title, status, detail, instance;
  request validation adds ``errors``);
- a POST that creates a job or a study answers 202 with ``Location`` (the URL to poll) and takes an
  ``Idempotency-Key``: the same key and request again → the same job and no second submission; the same key
  with another request → a 422 problem;
- every list answers a page at a time: ``limit`` and an opaque ``cursor`` in, ``next_cursor`` and
  ``Link: <…>; rel="next"`` out;
- the OpenAPI document types every answer: a named schema for JSON, the media type (and a binary
  schema) for files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.auth.policy import Access, policy_for
from medsynth.auth.principal import Role
from medsynth.core.settings import Settings
from medsynth.runtime.http import PROBLEM_MEDIA_TYPE

from platform_fixtures import api_key

UNLIMITED = {"rate_limit_burst": 10**6, "rate_limit_per_s": 10**6}


@pytest.fixture
def settings(platform_settings: Settings) -> Settings:
    return platform_settings.model_copy(update=UNLIMITED)


@pytest.fixture
def apps(settings: Settings) -> Iterator[dict[str, TestClient]]:
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False) as api, \
            TestClient(create_ingest_app(settings, assemble_quiet_series=False), raise_server_exceptions=False) as ingest:
        yield {"api": api, "ingest": ingest}


def researcher(settings: Settings) -> dict[str, str]:
    return as_role(settings, Role.researcher)


def as_role(settings: Settings, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key(settings, role.value)}"}


def allowed(settings: Settings, method: str, path: str) -> dict[str, str]:
    """Credentials of a role the route's policy lets in."""
    return as_role(settings, sorted(policy_for(method, path).roles)[0])


def concrete(path: str) -> str:
    """A route template with every parameter filled in (``{dataset}`` → ``xdataset``)."""
    return path.replace("{", "x").replace("}", "")


def operations(client: TestClient) -> Iterator[tuple[str, str, dict]]:
    """(METHOD, path template, operation) of every route in the app's OpenAPI document."""
    for path, ops in client.app.openapi()["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


# --- problem details --------------------------------------------------------------------------------


def assert_problem(r: httpx.Response, status: int, path: str, *, type_: str | None = None) -> dict:
    """``r`` is a problem document of ``status`` about ``path`` (RFC 9457 members, problem media type)."""
    assert r.status_code == status, (path, r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), (path, r.headers["content-type"], r.text)
    body = r.json()
    assert body["status"] == status and body["instance"] == path, (path, body)
    assert isinstance(body["title"], str) and body["title"] and isinstance(body["detail"], str) and body["detail"], body
    assert body["type"] == "about:blank" or body["type"].startswith("urn:medsynth:problem:"), body
    if type_ is not None:
        assert body["type"] == f"urn:medsynth:problem:{type_}", body
    return body


def test_every_guarded_route_refuses_a_missing_key_with_a_problem(apps: dict[str, TestClient]) -> None:
    """Every route behind the guard, of both apps: no credentials is a 401 problem (type unauthorized)."""
    checked = 0
    for client in apps.values():
        for method, path, _ in operations(client):
            policy = policy_for(method, path)
            if policy is None or policy.access is not Access.roles:
                continue
            r = client.request(method, concrete(path))
            body = assert_problem(r, 401, concrete(path), type_="unauthorized")
            assert "credentials" in body["detail"] and r.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 40, checked


def test_every_json_body_route_answers_an_invalid_body_with_field_errors(apps: dict[str, TestClient], settings: Settings) -> None:
    """Every route taking a JSON body: a body that is not an object is a 422 problem whose ``errors`` name
    where (``loc``) and what (``msg``), and whose ``detail`` says the same in a sentence."""
    checked = 0
    for client in apps.values():
        for method, path, op in operations(client):
            if "application/json" not in (op.get("requestBody") or {}).get("content", {}):
                continue
            if policy_for(method, path).access is not Access.roles:
                continue  # a reader's routes want a reader token first (test_bad_requests sends one)
            headers = {**allowed(settings, method, path), "content-type": "application/json"}
            r = client.request(method, concrete(path), content=b"[1, 2]", headers=headers)
            body = assert_problem(r, 422, concrete(path), type_="invalid-request")
            assert body["errors"] and all({"loc", "msg", "type"} <= set(e) for e in body["errors"]), body
            assert body["errors"][0]["loc"][0] == "body" and body["errors"][0]["msg"] in body["detail"], body
            checked += 1
    assert checked >= 9, checked


def test_medsynth_errors_and_http_errors_are_problems(apps: dict[str, TestClient], settings: Settings) -> None:
    api, headers = apps["api"], researcher(settings)
    body = assert_problem(api.get("/v1/jobs/no-such-job", headers=headers), 404, "/v1/jobs/no-such-job", type_="not-found")
    assert body["title"] == "Not found" and "no-such-job" in body["detail"]
    assert_problem(api.get("/v1/cohorts/sample-cohort-0/download", headers=headers), 404, "/v1/cohorts/sample-cohort-0/download",
                   type_="not-found")
    assert_problem(api.get("/v1/keys", headers=headers), 403, "/v1/keys", type_="forbidden")
    # HTTP's own: an unknown path, a method the route does not take
    body = assert_problem(api.get("/v1/nowhere", headers=headers), 404, "/v1/nowhere")
    assert body["type"] == "about:blank" and body["title"] == "Not Found"
    body = assert_problem(api.put("/v1/jobs", headers=headers), 405, "/v1/jobs")
    assert body["type"] == "about:blank" and body["title"] == "Method Not Allowed"
    # the query never reaches the problem (a reader's link carries its token there)
    assert_problem(api.get("/v1/reader-studies/x/next?token=msr_secret"), 401, "/v1/reader-studies/x/next")
    r = apps["ingest"].get("/metrics", headers={"Authorization": "Bearer wrong"})
    if settings.metrics_token_value is not None:
        assert_problem(r, 401, "/metrics", type_="unauthorized")


def test_the_openapi_documents_every_error_as_a_problem(apps: dict[str, TestClient]) -> None:
    """Every 4xx/5xx answer of every route is documented as application/problem+json with a schema
    holding the RFC 9457 members (or, for STOW-RS, DICOM's own JSON; for /readyz, its checks)."""
    for client in apps.values():
        openapi = client.app.openapi()
        components = openapi["components"]["schemas"]
        assert {"type", "title", "status", "detail", "instance", "errors"} <= set(components["Problem"]["properties"])
        for method, path, op in operations(client):
            for code, response in op["responses"].items():
                if code[0] not in "45":
                    continue
                content = response.get("content", {})
                if (method, path) == ("GET", "/readyz") or "application/dicom+json" in content:
                    continue  # a probe's checks; STOW-RS answers DICOM's own JSON (PS3.18)
                assert list(content) == [PROBLEM_MEDIA_TYPE], (method, path, code, content)
                schema = content[PROBLEM_MEDIA_TYPE]["schema"]
                name = schema["$ref"].rsplit("/", 1)[-1]
                assert {"type", "title", "status", "detail", "instance"} <= set(components[name]["properties"]), (method, path, code)


# --- 202 + Location, Idempotency-Key --------------------------------------------------------------


@pytest.fixture
def view_id(settings: Settings, tmp_path) -> str:
    from medsynth.store.local import LocalStore
    from pipeline_fixtures import phantom_view

    return phantom_view(LocalStore(settings.local_store_root), tmp_path, dataset="ph", n=4, size=32)


def examples(view_id: str) -> dict[tuple[str, str], tuple[str, dict, dict]]:
    """Route → (a concrete path, a body it accepts, another body it accepts). A new route that creates a
    job needs its example here (the walk below fails without one)."""
    seg = {"dataset": "ph", "view_id": view_id, "steps": 10}
    gen = {"dataset": "ph", "view_id": view_id, "generator": {"family": "joint-gan"}, "training": {"steps": 10}}
    cohort = {"generator_id": "train-generator-0", "count": 4}
    study = {"dataset": "ph", "view_id": view_id, "families": [{"generator": {"family": "joint-gan"}, "training": {"steps": 10}}],
             "seeds": [0], "cohort_size": 40, "segmentation": {"steps": 10}}
    return {
        ("POST", "/v1/datasets/{dataset}/views"): ("/v1/datasets/ph/views", {"size": 16, "seed": 1}, {"size": 16, "seed": 2}),
        ("POST", "/v1/generators"): ("/v1/generators", gen, {**gen, "training": {"steps": 11}}),
        ("POST", "/v1/cohorts"): ("/v1/cohorts", cohort, {**cohort, "count": 5}),
        ("POST", "/v1/segmentations"): ("/v1/segmentations", seg, {**seg, "steps": 11}),
        ("POST", "/v1/evaluations"): ("/v1/evaluations", {"cohort_id": "sample-cohort-0"}, {"cohort_id": "sample-cohort-1"}),
        ("POST", "/v1/studies"): ("/v1/studies", study, {**study, "cohort_size": 41}),
    }


@pytest.fixture
def without_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cohorts and evaluations are checked against finished generators, cohorts and runs; what is under test
    here is their submission, so their commands are built without those (an empty command of their kind)."""
    from medsynth.api.routes import cohorts, evaluations
    from medsynth.v1 import jobs_pb2

    monkeypatch.setattr(cohorts, "cohort_command", lambda body, store, records: jobs_pb2.SampleCohort(generator_id=body.generator_id))
    monkeypatch.setattr(evaluations, "evaluation_command", lambda body, store, records: jobs_pb2.Evaluate(cohort_id=body.cohort_id))


def creating_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every route that creates a job or study: a POST whose one success is 202 Accepted (STOW-RS answers
    200, or 202 for a partial store: it makes no job)."""
    return [(method, path) for method, path, op in operations(client)
            if method == "POST" and [c for c in op["responses"] if c.startswith("2")] == ["202"]]


def counts(settings: Settings) -> tuple[int, int]:
    """(job records, studies) in the default project."""
    from medsynth.store.local import LocalStore

    store = LocalStore(settings.local_store_root)
    return (sum(k.endswith("/record.json") for k in store.list("jobs/")), sum(k.endswith("/study.json") for k in store.list("studies/")))


def test_every_job_creating_post_answers_202_with_location_and_honours_idempotency_keys(
        apps: dict[str, TestClient], settings: Settings, view_id: str, without_artifacts: None) -> None:
    api, headers = apps["api"], researcher(settings)
    routes = creating_routes(api)
    assert len(routes) >= 6 and not creating_routes(apps["ingest"]), routes
    known = examples(view_id)
    for route in routes:
        assert route in known, f"{route}: no example body in examples(); add one"
        params = {p["name"] for p in api.app.openapi()["paths"][route[1]]["post"].get("parameters", [])}
        assert "Idempotency-Key" in params, route
        assert "Location" in api.app.openapi()["paths"][route[1]]["post"]["responses"]["202"]["headers"], route
        path, body, other = known[route]

        first = api.post(path, json=body, headers={**headers, "Idempotency-Key": f"k-{path}"})
        assert first.status_code == 202, (route, first.text)
        made = first.json().get("job_id") or first.json()["study_id"]
        assert first.headers["location"].endswith(f"/{made}") and "idempotent-replayed" not in first.headers, (route, first.headers)
        assert api.get(first.headers["location"], headers=headers).status_code == 200, route
        before = counts(settings)

        # the same key and request (its members in another order): the same resource, nothing submitted
        again = api.post(path, content=json.dumps(dict(reversed(body.items()))).encode(),
                         headers={**headers, "Idempotency-Key": f"k-{path}", "content-type": "application/json"})
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true", (route, again.text)
        assert (again.json().get("job_id") or again.json()["study_id"]) == made and again.headers["location"] == first.headers["location"]
        assert counts(settings) == before, route

        # the same key with another request: a problem, nothing submitted
        reused = api.post(path, json=other, headers={**headers, "Idempotency-Key": f"k-{path}"})
        assert_problem(reused, 422, path, type_="idempotency-key-reused")
        assert made in reused.json()["detail"] and counts(settings) == before

        # no key: every request is a new job
        fresh = api.post(path, json=body, headers=headers)
        assert fresh.status_code == 202 and (fresh.json().get("job_id") or fresh.json()["study_id"]) != made, route
        assert fresh.headers["location"] != first.headers["location"]


def test_idempotency_keys_are_the_callers_and_a_refused_request_frees_its_key(
        apps: dict[str, TestClient], settings: Settings, view_id: str) -> None:
    api = apps["api"]
    seg = {"dataset": "ph", "view_id": view_id, "steps": 10}
    one, two = researcher(settings), researcher(settings)  # two keys of one project
    refused = api.post("/v1/segmentations", json={**seg, "view_id": "no-such-view"}, headers={**one, "Idempotency-Key": "k"})
    assert refused.status_code == 404, refused.text
    mine = api.post("/v1/segmentations", json=seg, headers={**one, "Idempotency-Key": "k"})
    theirs = api.post("/v1/segmentations", json=seg, headers={**two, "Idempotency-Key": "k"})
    assert mine.status_code == theirs.status_code == 202 and mine.json()["job_id"] != theirs.json()["job_id"]
    for bad in ("", "x" * 256, "with space"):
        r = api.post("/v1/segmentations", json=seg, headers={**one, "Idempotency-Key": bad})
        assert_problem(r, 422, "/v1/segmentations", type_="invalid-request")
        assert r.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"], r.json()


def test_a_key_whose_first_request_is_still_running_is_a_409_then_freed(tmp_path) -> None:
    from datetime import timedelta

    from medsynth.core.clock import utcnow
    from medsynth.core.errors import IdempotencyKeyInUse, NotFound
    from medsynth.jobs.idempotency import ABANDONED_AFTER_S, IdempotencyKeys, KeyRecord
    from medsynth.store.local import LocalStore

    store = LocalStore(tmp_path)
    keys = IdempotencyKeys(store)
    made: dict[str, str] = {}

    def existing(i: str) -> str:
        if i not in made:
            raise NotFound(i)
        return made[i]

    def create(i: str) -> str:
        made[i] = f"made {i}"
        return made[i]

    where = keys.object_key("key:1", "k")
    store.put_json(where, KeyRecord(request_sha256="r", resource_id="a", created_at=utcnow()).model_dump(mode="json"))
    with pytest.raises(IdempotencyKeyInUse):  # claimed, its resource not made yet
        keys.once("key:1", "k", "r", lambda: "b", create, existing)
    old = utcnow() - timedelta(seconds=ABANDONED_AFTER_S + 1)
    store.put_json(where, KeyRecord(request_sha256="r", resource_id="a", created_at=old).model_dump(mode="json"))
    assert keys.once("key:1", "k", "r", lambda: "b", create, existing) == ("made b", False)  # its request died: freed
    assert keys.once("key:1", "k", "r", lambda: "c", create, existing) == ("made b", True)


# --- cursor pagination ------------------------------------------------------------------------------

#: GET routes whose answer holds a list but is one document, not a collection to page through.
DOCUMENTS = {
    "/v1/studies/{study_id}",  # a study: its arms and jobs
    "/v1/studies/{study_id}/results",  # a study's results: per arm, per family
    "/v1/datasets/{dataset}/manifest",  # one version of a dataset: its scans
    "/v1/datasets/{dataset}/views/{view_id}",  # a view: its patients and counts
}


def _schema(ref_or_schema: dict, components: dict) -> dict:
    ref = ref_or_schema.get("$ref")
    return components[ref.rsplit("/", 1)[-1]] if ref else ref_or_schema


def list_routes(client: TestClient) -> list[str]:
    """Every GET route answering a page (its JSON has ``next_cursor``); fails on a GET route whose answer
    has a list at its top but is not paged (unless it is one of the :data:`DOCUMENTS`)."""
    openapi = client.app.openapi()
    components = openapi["components"]["schemas"]
    paged = []
    for method, path, op in operations(client):
        json_200 = op["responses"].get("200", {}).get("content", {}).get("application/json")
        if method != "GET" or json_200 is None:
            continue
        schema = _schema(json_200["schema"], components)
        properties = {name: _schema(p, components) for name, p in schema.get("properties", {}).items()}
        if "next_cursor" in properties:
            params = {p["name"] for p in op.get("parameters", [])}
            assert {"limit", "cursor"} <= params, (path, params)
            paged.append(path)
        elif any(p.get("type") == "array" or any(o.get("type") == "array" for o in p.get("anyOf", [])) for p in properties.values()):
            assert path in DOCUMENTS, f"GET {path} answers a list without paging it (limit, cursor, next_cursor)"
    return paged


@pytest.fixture
def listed(settings: Settings, view_id: str, apps: dict[str, TestClient], tmp_path) -> dict[str, str]:
    """At least two of everything a list route lists; returns the concrete path of each list route."""
    from medsynth.auth.keys import ApiKeys
    from medsynth.auth.principal import Role
    from medsynth.bus.messages import JobKind
    from medsynth.datasets.dicom_staging import RECORDS, SeriesRecord
    from medsynth.datasets.ingest import Upload, ingest_scan
    from medsynth.jobs.records import JobRecord, JobRecords, new_job_id
    from medsynth.store.local import LocalStore

    store = LocalStore(settings.local_store_root)
    records = JobRecords(store)
    for kind in (JobKind.train_generator, JobKind.train_generator, JobKind.evaluate):
        records.put(JobRecord(job_id=new_job_id(kind), kind=kind, spec={}))
    image = sorted((tmp_path / "msd" / "imagesTr").iterdir())[0]  # the phantoms of view_id
    for name in ("ph2", "ph3"):
        ingest_scan(store, name, "p0", Upload(image.name, image.read_bytes()), None, max_voxels=10**6)
    for uid in ("1.2.3", "1.2.4", "1.2.5"):
        store.put_json(f"{RECORDS}ph/{uid}.json", SeriesRecord(series_instance_uid=uid, state="rejected").model_dump(mode="json"))
    for _ in range(3):
        ApiKeys(store).create("default", Role.admin, name="lister")
    study = examples(view_id)[("POST", "/v1/studies")][1]
    for size in (40, 41, 42):
        assert apps["api"].post("/v1/studies", json={**study, "cohort_size": size}, headers=researcher(settings)).status_code == 202
    return {"/v1/datasets/{dataset}/versions": "/v1/datasets/ph/versions",
            "/v1/datasets/{dataset}/dicom/series": "/v1/datasets/ph/dicom/series"}


def walk(client: TestClient, path: str, headers: dict[str, str], key: str, limit: int) -> list:
    """Every item of a list, following next_cursor (and checking Link says the same) from ``limit``-item pages."""
    items, cursor = [], None
    for _ in range(1000):
        r = client.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert r.status_code == 200, (path, r.text)
        page = r.json()
        assert len(page[key]) <= limit, (path, page)
        items += page[key]
        cursor = page["next_cursor"]
        if cursor is None:
            assert "link" not in r.headers and len(page[key]) <= limit, (path, r.headers)
            return items
        assert len(page[key]) == limit and r.headers["link"].endswith('rel="next"') and f"cursor={cursor}" in r.headers["link"], r.headers
    raise AssertionError(f"{path}: no last page")


ITEMS = {"jobs", "datasets", "versions", "families", "projects", "keys", "records", "studies", "series"}


def test_every_list_route_pages_with_limit_and_cursor(apps: dict[str, TestClient], settings: Settings, listed: dict[str, str]) -> None:
    walked = 0
    for client in apps.values():
        for path in list_routes(client):
            headers = allowed(settings, "GET", path)
            concrete_path = listed.get(path, path)
            whole = client.get(concrete_path, params={"limit": 1000}, headers=headers)
            assert whole.status_code == 200 and whole.json()["next_cursor"] is None, (path, whole.text)
            (key,) = set(whole.json()) & ITEMS
            everything = whole.json()[key]
            if path not in ("/v1/projects", "/v1/audit"):  # one project per key; the audit trail grows as it is read
                assert len(everything) >= 2, (path, everything)
                assert walk(client, concrete_path, headers, key, 1) == everything, path
                assert walk(client, concrete_path, headers, key, 2) == everything, path
            # a cursor is opaque and checked: garbage, or one of another list, is a 422 problem
            assert_problem(client.get(concrete_path, params={"cursor": "not-a-cursor"}, headers=headers), 422, concrete_path,
                           type_="invalid-input")
            walked += 1
            assert_problem(client.get(concrete_path, params={"limit": 0}, headers=headers), 422, concrete_path, type_="invalid-request")
    assert walked >= 10, walked
    api, headers = apps["api"], researcher(settings)
    other = api.get("/v1/jobs", params={"limit": 1}, headers=headers).json()["next_cursor"]
    r = api.get("/v1/studies", params={"cursor": other}, headers=headers)
    assert_problem(r, 422, "/v1/studies", type_="invalid-input")
    assert "another list" in r.json()["detail"]


def test_a_list_reads_one_page_of_records(apps: dict[str, TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/jobs?limit=2 of 30 jobs reads 3 records (the page, and one more to know there is a next
    page), in the order the jobs were made, and the next page starts after the last one given."""
    from medsynth.bus.messages import JobKind
    from medsynth.jobs.records import JobRecord, JobRecords, new_job_id
    from medsynth.store.local import LocalStore

    records = JobRecords(LocalStore(settings.local_store_root))
    made = []
    for i in range(30):
        made.append(records.put(JobRecord(job_id=new_job_id(JobKind.evaluate), kind=JobKind.evaluate, spec={"i": i})).job_id)
    reads = []
    real_get = JobRecords.get
    monkeypatch.setattr(JobRecords, "get", lambda self, job_id: reads.append(job_id) or real_get(self, job_id))
    api, headers = apps["api"], researcher(settings)
    first = api.get("/v1/jobs", params={"limit": 2, "kind": "evaluate"}, headers=headers).json()
    assert [j["job_id"] for j in first["jobs"]] == made[:2] and len(reads) == 3, reads
    second = api.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers).json()
    assert [j["job_id"] for j in second["jobs"]] == made[2:4]


# --- a response schema for every route ------------------------------------------------------------

#: Media types answered as files (a binary schema) or text (a string schema).
BINARY = {"image/png", "application/zip"}
TEXT = {"text/html", "text/csv", "text/plain"}


def test_the_openapi_document_types_every_answer(apps: dict[str, TestClient]) -> None:
    """Every route's success answers have a schema: JSON a named model with properties (no bare object), a file
    its media type with a binary schema, text a string schema — so a client generated from the document types
    every response."""
    checked = 0
    for client in apps.values():
        components = client.app.openapi()["components"]["schemas"]
        for method, path, op in operations(client):
            successes = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            assert successes, (method, path, "no success documented")
            for code, response in successes.items():
                content = response.get("content")
                assert content, (method, path, code, "no content documented")
                for media, entry in content.items():
                    schema = entry.get("schema") or {}
                    where = (method, path, code, media, schema)
                    if media in BINARY:
                        assert schema == {"type": "string", "format": "binary"}, where
                    elif media in TEXT:
                        assert schema.get("type") == "string", where
                    else:
                        assert media == "application/json" or media.endswith("+json"), where
                        resolved = _schema(schema, components)
                        assert resolved.get("properties"), where  # a model, not {} or a bare object
                checked += 1
    assert checked >= 55, checked


def test_typed_answers_keep_the_shape_they_had(apps: dict[str, TestClient], settings: Settings, view_id: str) -> None:
    """The models that now type the answers change none of them: a manifest, a view, and a finished job's
    document beside its job (absent while it runs)."""
    from medsynth.bus.messages import JobKind
    from medsynth.datasets.manifest import load_manifest
    from medsynth.datasets.views import load_view
    from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
    from medsynth.store.local import LocalStore

    api, headers = apps["api"], researcher(settings)
    store = LocalStore(settings.local_store_root)
    assert api.get("/v1/datasets/ph/manifest", headers=headers).json() == load_manifest(store, "ph").model_dump(mode="json")
    assert api.get(f"/v1/datasets/ph/views/{view_id}", headers=headers).json() == load_view(store, "ph", view_id).model_dump(mode="json")
    records = JobRecords(store)
    for route, kind, field, result_key, document in (
            ("/v1/cohorts/", JobKind.sample_cohort, "manifest", "manifest", {"count": 1, "samples": [{"index": 0}]}),
            ("/v1/segmentations/", JobKind.train_segmenter, "metrics", "metrics", {"dice": {"mean": 0.5}}),
            ("/v1/evaluations/", JobKind.evaluate, "report", "report_json", {"fidelity": {"fid": 1.0}, "generator_id": "g"})):
        job_id = new_job_id(kind)
        key = f"{route.split('/')[2]}/{job_id}/{result_key}.json"
        store.put_json(key, document)
        done = records.put(JobRecord(job_id=job_id, kind=kind, spec={}, state=JobState.succeeded, result_keys={result_key: key}))
        running = records.put(JobRecord(job_id=new_job_id(kind), kind=kind, spec={}, state=JobState.running))
        body = api.get(f"{route}{done.job_id}", headers=headers).json()
        assert body[field] == document and body["job"]["job_id"] == done.job_id and set(body) == {"job", field}, body
        body = api.get(f"{route}{running.job_id}", headers=headers).json()
        assert set(body) == {"job"} and body["job"]["started_at"] is None, body  # a null of the job stays
