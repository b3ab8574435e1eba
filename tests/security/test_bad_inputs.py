"""The bad-input sweep: every route of both apps, from their OpenAPI documents, called by a role its
policy admits with ids that are not ids (traversal, NUL, over-long, non-ASCII) and bodies that are
not what the route takes (not JSON, the wrong JSON type, unknown fields, numbers past any field,
multipart without a boundary). Each call must answer 4xx — never 5xx, never a job — and no call may
leave anything in the store but its line in the audit trail.

The defects of issue 20 each have their own test beside the code they concern: the upload race,
malformed DICOM numbers, all-or-nothing DICOM uploads, empty images and zero spacing
(``tests/api/test_ingest.py``, ``tests/dicom/test_dicom_ingest.py``, ``tests/io/``), ids of another
job kind, unknown fields, reports without training images, tokens kept out of logs, timeouts
(``tests/api/test_bad_requests.py``, ``tests/evaluation/``, ``tests/studies/``), memory and zip caps
(``tests/api/test_upload_limits.py``), secrets' modes and SeaweedFS's ports (``tests/test_local_secrets.py``,
``tests/test_seaweedfs_security.py``); the access matrix is ``test_access_matrix.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.auth.policy import Access, policy_for
from medsynth.core.settings import Settings
from medsynth.store.projects import Projects
from medsynth.store import open_store

from platform_fixtures import api_key

BAD_IDS = {
    "dot-dot": "..",
    "encoded traversal": "%2E%2E%2Fsecrets",
    "encoded slash": "a%2Fb",
    "NUL": "a%00b",
    "over-long": "x" * 3000,
    "non-ASCII": "p\u00e4tient-\u2603",
    "space": "a%20b",
}

JSON = {"content-type": "application/json"}
BAD_BODIES = {
    "not JSON": (b"{this is not json", JSON),
    "truncated JSON": (b'{"a": ', JSON),
    "a JSON array": (b"[1, 2, 3]", JSON),
    "JSON null": (b"null", JSON),
    "a JSON string": (b'"hello"', JSON),
    "unknown field only": (b'{"sise": 64}', JSON),
    "a number past every field": (b'{"count": 1e400, "size": 1e400, "steps": 1e400, "seed": 1e400}', JSON),
    "deeply nested": (b'{"a": ' * 5000 + b"1" + b"}" * 5000, JSON),
    "multipart without a boundary": (b"--x\r\n\r\n--x--", {"content-type": "multipart/form-data"}),
    "multipart with nothing in it": (b"--b--\r\n", {"content-type": "multipart/form-data; boundary=b"}),
    "wrong media type": (b"\x00\x01\x02", {"content-type": "application/octet-stream"}),
}


@pytest.fixture
def apps(platform_settings: Settings) -> Iterator[dict]:
    settings = platform_settings.model_copy(update={"rate_limit_burst": 10**6, "rate_limit_upload_burst": 10**6})
    Projects(open_store(settings)).create("alpha")
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False) as api, \
            TestClient(create_ingest_app(settings), raise_server_exceptions=False) as ingest:
        yield {"api": api, "ingest": ingest, "settings": settings}


def routes(client: TestClient) -> list[tuple[str, str, dict]]:
    return sorted((method.upper(), path, op) for path, ops in client.app.openapi()["paths"].items() for method, op in ops.items())


def keys_in(settings: Settings) -> set[str]:
    """Everything in the store but the audit trail and the credentials the test made."""
    return {k for k in open_store(settings).list("") if not k.startswith(("audit/", "auth/"))}


def concrete(path: str, value: str) -> str:
    """The route template with every path parameter set to ``value``."""
    return re.sub(r"\{[^}]+\}", lambda _: value, path)


def test_every_route_answers_bad_ids_and_bad_bodies_with_a_4xx_and_stores_nothing(apps) -> None:
    settings = apps["settings"]
    role_keys: dict = {}
    before = keys_in(settings)
    answers: dict[int, int] = {}
    checked = 0
    for app in ("api", "ingest"):
        client = apps[app]
        for method, path, op in routes(client):
            policy = policy_for(method, path)
            if policy.access is not Access.roles:
                continue  # public probes, metrics and reader pages: the access matrix covers their credentials
            role = sorted(policy.roles, key=lambda r: r.value)[0]
            key = role_keys.setdefault(role, api_key(settings, role.value, "alpha"))
            headers = {"Authorization": f"Bearer {key}", "X-Medsynth-Project": "alpha"}
            calls = []
            if "{" in path:
                calls += [(f"id {name}", concrete(path, value), None) for name, value in BAD_IDS.items()]
            if "requestBody" in op:
                target = concrete(path, "x1") if "{" in path else path
                calls += [(f"body {name}", target, body) for name, body in BAD_BODIES.items()]
            for what, url, body in calls:
                extra = {} if body is None else {"content": body[0], "headers": {**headers, **body[1]}}
                r = client.request(method, url, **({"headers": headers} | extra))
                answers[r.status_code] = answers.get(r.status_code, 0) + 1
                assert 400 <= r.status_code < 500, (method, path, what, r.status_code, r.text[:500])
                assert "Traceback" not in r.text and len(r.content) < 20_000, (method, path, what)
                checked += 1
    assert checked > 300, checked
    assert keys_in(settings) == before, sorted(keys_in(settings) - before)[:20]
    print(f"{checked} bad calls: answers {sorted(answers.items())}")
