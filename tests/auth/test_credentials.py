"""Credentials, each bad case with its status and reason, and each attempt in the audit trail.

OIDC tokens are signed by keys this test makes and checked against a JWKS it serves over HTTP (the
verifier fetches it as it would from Keycloak or Entra ID); API keys are created in the store."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from medsynth.api.app import create_api_app
from medsynth.auth.audit import AuditLog
from medsynth.auth.keys import ApiKeys
from medsynth.core.settings import Settings
from medsynth.store.projects import Projects
from medsynth.store import open_store

from platform_fixtures import live_server

ISSUER, AUDIENCE = "https://idp.hospital.test/realms/radiology", "medsynth"


class Issuer:
    """A signing key (and a spare for rotation) and the JWKS it publishes."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})]
        self.served = 0

    def jwks(self) -> dict:
        self.served += 1
        return KeySet(self.keys).as_dict(private=False)

    def token(self, *, key: RSAKey | None = None, kid: str = "k1", alg: str = "RS256", **claims) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "preferred_username": "dr.who", "iat": now,
                "exp": now + 300, "roles": ["alpha:researcher"], **claims}
        return jwt.encode({"alg": alg, "kid": kid}, {k: v for k, v in body.items() if v is not None}, key or self.keys[0])


@pytest.fixture
def issuer() -> Iterator[tuple[Issuer, str]]:
    idp, app = Issuer(), FastAPI()
    app.get("/certs")(idp.jwks)
    with live_server(app) as url:
        yield idp, f"{url}/certs"


@pytest.fixture
def api(request: pytest.FixtureRequest, platform_settings: Settings, issuer) -> Iterator[tuple[TestClient, Settings]]:
    limits = getattr(request, "param", {"rate_limit_burst": 1000})
    settings = platform_settings.model_copy(update={
        "oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks_url": issuer[1], "key_cache_s": 0.0, **limits})
    for name in ("alpha", "beta"):
        Projects(open_store(settings)).create(name)
    with TestClient(create_api_app(settings, reconcile=False), raise_server_exceptions=False) as client:
        yield client, settings


def get(client: TestClient, token: str | None, path: str = "/v1/jobs", **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.get(path, headers=headers)


def refused(response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert reason in detail, detail
    assert "Traceback" not in response.text and "jobs" not in detail.split("/")  # a reason, no contents


def test_oidc_tokens(api, issuer) -> None:
    client, settings = api
    idp, _ = issuer
    ok = get(client, idp.token())
    assert ok.status_code == 200 and ok.json()["count"] == 0
    refused(get(client, None), 401, "needs credentials")
    assert get(client, None).headers["www-authenticate"].startswith("Bearer")
    refused(get(client, idp.token(exp=int(time.time()) - 120)), 401, "expired")
    refused(get(client, idp.token(aud="another-app")), 401, "aud claim is not accepted")
    refused(get(client, idp.token(iss="https://evil.test")), 401, "iss claim is not accepted")
    refused(get(client, idp.token(sub=None)), 401, "lacks the sub claim")
    forged = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # the issuer's key id, someone else's key
    refused(get(client, idp.token(key=forged)), 401, "signature does not verify")
    refused(get(client, idp.token(key=OctKey.import_key("s" * 32), alg="HS256")), 401, "algorithm is not one of")
    refused(get(client, "not.a.jwt"), 401, "cannot be read")
    refused(get(client, idp.token(key=forged, kid="k9")), 401, "key the issuer does not publish")
    refused(get(client, idp.token(roles=["alpha:viewer"]), "/v1/datasets/d/manifest"), 403, "needs the role researcher")
    refused(get(client, idp.token(), **{"X-Medsynth-Project": "beta"}), 403, "no role in project 'beta'")
    refused(get(client, idp.token(roles=["alpha:viewer", "beta:viewer"])), 422, "name one in the X-Medsynth-Project header")
    assert get(client, idp.token(roles=["alpha:viewer", "beta:viewer"]), **{"X-Medsynth-Project": "beta"}).status_code == 200


def test_the_verifier_follows_a_key_rotation(api, issuer) -> None:
    client, _ = api
    idp, _ = issuer
    assert get(client, idp.token()).status_code == 200
    idp.keys.append(RSAKey.generate_key(2048, parameters={"kid": "k2", "alg": "RS256", "use": "sig"}))
    from medsynth.auth import oidc

    client.app.state.guard.oidc._fetched_at -= oidc.REFRESH_MIN_S  # as if a minute had passed since the last fetch
    assert get(client, idp.token(key=idp.keys[1], kid="k2")).status_code == 200
    served = idp.served
    for _ in range(5):  # unknown key ids do not make the service fetch the JWKS again and again
        get(client, idp.token(key=idp.keys[1], kid="k-unknown"))
    assert idp.served == served


def test_api_keys(api) -> None:
    client, settings = api
    keys = ApiKeys(open_store(settings))
    key, token = keys.create("alpha", "researcher", name="pipeline")
    assert token.startswith(f"msk_{key.key_id}_") and key.secret_sha256 not in token
    stored = open_store(settings).get_bytes(f"auth/keys/{key.key_id}.json").decode()
    assert token.split("_", 2)[2] not in stored  # only the hash is kept
    assert get(client, token).status_code == 200
    refused(get(client, token[:-2] + "xx"), 401, "unknown API key")
    refused(get(client, "msk_0000000000000000_secret"), 401, "unknown API key")
    refused(get(client, "msk_bad"), 401, "not a medsynth API key")
    refused(get(client, token, **{"X-Medsynth-Project": "beta"}), 403, "no role in project 'beta'")
    refused(get(client, token, "/v1/keys"), 403, "key.list needs the role admin")
    keys.revoke("alpha", key.key_id, by="test")
    refused(get(client, token), 401, f"API key {key.key_id} is revoked")
    _, old = keys.create("alpha", "viewer", expires_in_days=1 / 86400)
    time.sleep(1.1)
    refused(get(client, old), 401, "is expired")


@pytest.mark.parametrize("api", [{"rate_limit_per_s": 1.0, "rate_limit_burst": 8}], indirect=True)
def test_a_burst_past_the_rate_limit_is_a_429_with_retry_after(api) -> None:
    client, settings = api
    _, token = ApiKeys(open_store(settings)).create("alpha", "viewer")
    statuses = [get(client, token).status_code for _ in range(12)]
    assert statuses[:8] == [200] * 8 and 429 in statuses[8:], statuses
    limited = get(client, token)
    refused(limited, 429, "over the request rate")
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    _, other = ApiKeys(open_store(settings)).create("alpha", "viewer")
    assert get(client, other).status_code == 200  # per key: another caller is not held back
    for _ in range(12):  # refused credentials are limited per client address
        last = get(client, "msk_0000000000000000_guess")
    assert last.status_code == 429 and "refused requests" in last.json()["detail"]


def test_every_attempt_is_audited(api, issuer) -> None:
    client, settings = api
    idp, _ = issuer
    keys = ApiKeys(open_store(settings))
    _, researcher = keys.create("alpha", "researcher")
    get(client, None, "/v1/jobs/some-job")
    get(client, idp.token(aud="x"), "/v1/jobs/some-job")
    get(client, researcher, "/v1/jobs/some-job")
    get(client, researcher, "/v1/keys")
    get(client, researcher, "/v1/jobs", **{"X-Medsynth-Project": "beta"})
    records = AuditLog(open_store(settings)).records()
    seen = [(r.actor, r.project, r.action, r.outcome) for r in records]
    key_actor = f"key:{researcher.split('_')[1]}"
    assert seen == [
        ("anonymous", None, "job.read", 401),
        ("anonymous", None, "job.read", 401),
        (key_actor, "alpha", "job.read", 404),
        (key_actor, "alpha", "key.list", 403),
        (key_actor, None, "job.list", 403),
    ], seen
    assert records[1].reason.startswith("the bearer token's aud claim") and records[0].client
    assert records[2].resource == {"job_id": "some-job"} and records[2].role == "researcher"
    assert AuditLog(open_store(settings)).verify().ok


def test_settings_refuse_an_open_service_outside_development() -> None:
    with pytest.raises(ValueError, match="AUTH_ENABLED=false is allowed only"):
        Settings(environment="production", auth_enabled=False, metrics_token="t")
    with pytest.raises(ValueError, match="METRICS_TOKEN must be set"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="MEDSYNTH_OIDC_JWKS_URL"):
        Settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE)
    assert Settings(environment="production", metrics_token="t").auth_enabled


def test_development_mode_without_auth_still_audits(platform_settings: Settings) -> None:
    settings = platform_settings.model_copy(update={"auth_enabled": False})
    with TestClient(create_api_app(settings, reconcile=False)) as client:
        assert client.get("/v1/jobs").status_code == 200
    (record,) = AuditLog(open_store(settings)).records()
    assert (record.actor, record.project, record.outcome) == ("development", "default", 200)


def test_tokens_in_links_and_headers_never_reach_the_service_log(platform_settings: Settings) -> None:
    """The api served as its process serves it, logging as it logs (uvicorn's access log included): a reader's
    link (``…/read?token=msr_…``) and other credentials in a query leave no secret in the log."""
    import httpx

    from medsynth.core.logging import REDACTED

    from platform_fixtures import served, service_log

    reader_token, api_token = "msr_SECRETreaderTOKEN123", ApiKeys(open_store(platform_settings)).create("default", "viewer")[1]
    with service_log("api") as log, served(create_api_app(platform_settings, reconcile=False), platform_settings) as (host, port):
        base = f"http://{host}:{port}"
        assert httpx.get(f"{base}/v1/reader-studies/reader-0123/read?token={reader_token}").status_code == 401
        assert httpx.get(f"{base}/v1/jobs?access_token=SECRETaccess&state=queued", headers={"Authorization": f"Bearer {api_token}"}).status_code == 200
        assert httpx.get(f"{base}/v1/jobs?note={api_token}").status_code == 401
        deadline = time.monotonic() + 30
        while log.getvalue().count('"GET /v1/') < 3 and time.monotonic() < deadline:  # the access log line follows the response
            time.sleep(0.05)
    text = log.getvalue()
    assert f"/v1/reader-studies/reader-0123/read?token={REDACTED}" in text and f"access_token={REDACTED}&state=queued" in text, text
    assert "SECRET" not in text and api_token.split("_", 2)[2] not in text, text
