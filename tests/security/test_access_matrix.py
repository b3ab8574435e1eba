"""The access matrix: every route of both apps, from their OpenAPI documents, × no credentials, forged,
expired and revoked keys, a token of an issuer the service does not trust, another project's key and
every role, against the one policy table.

The table is the specification: a role it lists gets past the guard (whatever the route then says
about the made-up ids: 404, 409, 422…), any other role gets 403, no or bad credentials get 401, and a
key used on another project gets 403. A route with no line in the table fails this test; no call may
answer 5xx."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app, create_ingest_app
from medsynth.auth.policy import POLICIES, PUBLIC_PATHS, Access, policy_for
from medsynth.auth.keys import ApiKeys
from medsynth.auth.principal import Role
from medsynth.core.settings import Settings
from medsynth.store.projects import Projects
from medsynth.store import open_store

from platform_fixtures import api_key

METRICS_TOKEN = "matrix-metrics-token"


@pytest.fixture
def apps(platform_settings: Settings) -> Iterator[dict[str, TestClient]]:
    settings = platform_settings.model_copy(update={"metrics_token": METRICS_TOKEN, "rate_limit_burst": 10**6})
    Projects(open_store(settings)).create("alpha")
    Projects(open_store(settings)).create("beta")
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False) as api, \
            TestClient(create_ingest_app(settings), raise_server_exceptions=False) as ingest:
        yield {"api": api, "ingest": ingest, "settings": settings}


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its OpenAPI description (no medsynth route is
    left out of it); FastAPI's own pages are the only routes outside it."""
    paths = client.app.openapi()["paths"]
    found = [(method.upper(), path) for path, ops in paths.items() for method in ops]
    top = [r for r in client.app.routes if isinstance(r, APIRoute)]
    assert all(r.path in PUBLIC_PATHS for r in top if not r.include_in_schema)
    return sorted(found)


def call(client: TestClient, method: str, path: str, headers: dict[str, str]):
    concrete = path.replace("{", "").replace("}", "-x1")  # /v1/jobs/{job_id} → /v1/jobs/job_id-x1
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    response = client.request(method, concrete, headers=headers, **body)
    assert response.status_code < 500, (method, path, response.status_code, response.text)
    return response


def bad_credentials(settings: Settings) -> dict[str, tuple[dict[str, str], str]]:
    """Each kind of credentials that must not open any route: headers, and the reason the 401 gives."""
    keys = ApiKeys(open_store(settings))
    _, good = keys.create("alpha", "admin", name="matrix")
    revoked_key, revoked = keys.create("alpha", "admin", name="revoked")
    keys.revoke("alpha", revoked_key.key_id, by="matrix")
    _, expired = keys.create("alpha", "admin", name="expired", expires_in_days=1 / 86400)
    time.sleep(1.1)
    # a well-formed JWT signed with a key of no trusted issuer (the service trusts none here)
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4Iiwicm9sZXMiOlsiYWxwaGE6YWRtaW4iXX0.c2lnbmF0dXJl"
    return {
        "forged secret": ({"Authorization": f"Bearer {good[:-4]}xxxx"}, "unknown API key"),
        "made-up key": ({"Authorization": "Bearer msk_0000000000000000_secret"}, "unknown API key"),
        "malformed key": ({"Authorization": "Bearer msk_bad"}, "not a medsynth API key"),
        "revoked key": ({"Authorization": f"Bearer {revoked}"}, "is revoked"),
        "expired key": ({"Authorization": f"Bearer {expired}"}, "is expired"),
        "untrusted token": ({"Authorization": f"Bearer {jwt}"}, "accepts no OIDC tokens"),
        "not bearer": ({"Authorization": f"Basic {good}"}, "Authorization: Bearer"),
    }


def test_every_route_has_a_policy_and_every_policy_a_route(apps) -> None:
    served = set(routes(apps["api"])) | set(routes(apps["ingest"]))
    assert not [r for r in served if policy_for(*r) is None], "routes without a policy line"
    assert not set(POLICIES) - served, "policy lines for routes that no longer exist"


def test_every_route_for_every_role_in_its_own_and_another_project(apps) -> None:
    settings = apps["settings"]
    keys = {role: api_key(settings, role.value, "alpha") for role in Role}
    bad = bad_credentials(settings)
    checked = 0
    for app in ("api", "ingest"):
        client = apps[app]
        for method, path in routes(client):
            policy = policy_for(method, path)
            if policy.access is Access.public:
                assert call(client, method, path, {}).status_code in (200, 503), path
                continue
            if policy.access is Access.metrics:
                assert call(client, method, path, {}).status_code == 401
                assert call(client, method, path, {"Authorization": f"Bearer {keys[Role.admin]}"}).status_code == 401
                assert call(client, method, path, {"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
                continue
            if policy.access is Access.reader:  # a reader study's token only: no token, or an API key instead, is refused
                assert call(client, method, path, {}).status_code == 401
                admin = call(client, method, path, {"Authorization": f"Bearer {keys[Role.admin]}"})
                assert admin.status_code == 401 and "reader token" in admin.json()["detail"], (method, path, admin.text)
                assert call(client, method, path, {"X-Reader-Token": "msr_forged"}).status_code == 401
                continue
            anonymous = call(client, method, path, {})
            assert anonymous.status_code == 401 and "credentials" in anonymous.json()["detail"], (method, path, anonymous.text)
            for name, (headers, reason) in bad.items():
                refused = call(client, method, path, headers)
                assert refused.status_code == 401 and reason in refused.json()["detail"], (method, path, name, refused.text)
            for role, key in keys.items():
                own = call(client, method, path, {"Authorization": f"Bearer {key}"})
                if role in policy.roles:
                    assert own.status_code not in (401, 403), (method, path, role, own.status_code, own.text)
                else:
                    assert own.status_code == 403 and policy.action in own.json()["detail"], (method, path, role, own.text)
                if policy.project:
                    other = call(client, method, path, {"Authorization": f"Bearer {key}", "X-Medsynth-Project": "beta"})
                    assert other.status_code == 403 and "no role in project 'beta'" in other.json()["detail"], (method, path, role)
                checked += 1
    assert checked >= len(Role) * 30


def test_the_readme_says_what_an_uploader_may_call_as_the_policy_does() -> None:
    """The README's role table lists the uploader's routes one by one (``{d}`` for ``{dataset}``): exactly the
    routes the policy grants uploaders, less those of every role (the projects and the generator families,
    which the README names once for all)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `uploader` |"))
    listed = set(re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE) [^`]+)`", row))
    granted = {f"{method} {path.replace('{dataset}', '{d}')}" for (method, path), policy in POLICIES.items()
               if Role.uploader in policy.roles and policy.roles != frozenset(Role)}
    assert listed == granted, {"granted, not in the README": granted - listed, "in the README, not granted": listed - granted}
