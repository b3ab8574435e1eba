"""The guard in front of every route of the api and ingest services.

One app-wide dependency (:func:`authorize`) finds the route's policy, authenticates the caller (an
API key or an OIDC token in ``Authorization: Bearer``), applies its request rate, resolves the
project the request acts on and checks the caller's roles there; one middleware then appends the
request's audit record with the status it got — refusals included. A read whose audit record cannot
be written is answered 503 rather than served unrecorded."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medsynth.auth.audit import AuditEntry, AuditLog
from medsynth.auth.keys import TOKEN_PREFIX, ApiKeys
from medsynth.auth.limits import RateLimiter
from medsynth.auth.oidc import OidcVerifier
from medsynth.auth.policy import Access, Policy, RateClass, policy_for
from medsynth.auth.principal import DEVELOPMENT, PROJECT_HEADER, Principal, Role
from medsynth.core.errors import Forbidden, NotFound, RateLimited, Unauthorized
from medsynth.core.settings import Settings
from medsynth.runtime.http import problem_response, problem_type
from medsynth.store.projects import Projects
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)


class Guard:
    """Everything :func:`authorize` needs, built in the app's lifespan from the settings and the root store."""

    def __init__(self, settings: Settings, root: ObjectStore) -> None:
        self.settings = settings
        self.keys = ApiKeys(root, cache_s=settings.key_cache_s)
        self.oidc = OidcVerifier(
            settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url, roles_claim=settings.oidc_roles_claim,
            algorithms=settings.oidc_algorithms, leeway_s=settings.oidc_leeway_s,
        ) if settings.oidc_enabled else None
        self.audit = AuditLog(root)
        self.projects = Projects(root)
        self.requests = {  # a bucket per caller and route class: a bulk upload leaves the caller's interactive calls alone
            RateClass.interactive: RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
            RateClass.upload: RateLimiter(settings.rate_limit_upload_per_s, settings.rate_limit_upload_burst),
        }
        self.uploads_by_key = RateLimiter(settings.uploads_per_minute_per_key / 60, settings.uploads_per_minute_per_key)
        self.uploads_by_project = RateLimiter(settings.uploads_per_minute_per_project / 60, settings.uploads_per_minute_per_project)
        self._known_projects: set[str] = set()

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.settings.auth_enabled:
            return DEVELOPMENT
        if not authorization:
            raise Unauthorized("this route needs credentials: Authorization: Bearer <API key or OIDC token>")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("credentials go in Authorization: Bearer <API key or OIDC token>")
        if token.startswith(f"{TOKEN_PREFIX}_"):
            return self.keys.authenticate(token).principal()
        if self.oidc is None:
            raise Unauthorized("not a medsynth API key, and this service accepts no OIDC tokens (no issuer configured)")
        return self.oidc.verify(token)

    def check_project(self, name: str) -> None:
        if name not in self._known_projects:
            if not self.projects.exists(name):
                raise NotFound(f"no project {name!r}")
            self._known_projects.add(name)

    def limit_upload(self, principal: Principal, project: str) -> None:
        for limiter, caller, what in ((self.uploads_by_key, principal.actor, "these credentials"),
                                      (self.uploads_by_project, f"project:{project}", f"project {project}")):
            if (wait := limiter.take(caller)) > 0:
                raise RateLimited(f"{what} uploaded too many scans in the last minute; try again in {_seconds(wait)} s", wait)


BEARER = HTTPBearer(auto_error=False, description="An API key (msk_…) or an OIDC access token.")


def authorize(request: Request, _: HTTPAuthorizationCredentials | None = Security(BEARER)) -> None:
    """The dependency every route runs first; it leaves ``request.state.principal`` and, for routes
    that act on a project, ``request.state.project``. (``BEARER`` only describes the scheme in the
    OpenAPI document, so that /docs can send a key; the header is read here.)"""
    route = request.scope.get("route")
    policy = policy_for(request.method, getattr(route, "path", ""))
    if policy is None:
        raise Forbidden(f"{request.method} {getattr(route, 'path', request.url.path)} has no access policy; it is refused")
    if policy.access is not Access.roles:
        return  # public, /metrics (which checks its own token), or a reader study's pages (the route checks the reader token)
    guard: Guard = request.app.state.guard
    client = request.client.host if request.client else ""
    entry = AuditEntry(action=policy.action, method=request.method, route=route.path,
                       resource={k: str(v)[:200] for k, v in request.path_params.items()}, client=client)
    request.state.audit = entry
    try:
        principal = guard.authenticate(request.headers.get("authorization"))
    except Unauthorized:
        if (wait := guard.requests[RateClass.interactive].take(f"client:{client}")) > 0:
            raise RateLimited(f"too many refused requests from {client}; try again in {_seconds(wait)} s", wait) from None
        raise
    entry.actor = principal.actor
    limiter = guard.requests[policy.rate]
    if (wait := limiter.take(principal.actor)) > 0:
        kind = "upload request" if policy.rate is RateClass.upload else "request"
        raise RateLimited(f"over the {kind} rate of these credentials ({limiter.rate:g}/s); try again in {_seconds(wait)} s", wait)
    request.state.principal = principal
    if policy.project:
        project = principal.project_for(request.headers.get(PROJECT_HEADER))
        entry.project = project
        held = principal.roles_in(project)
    else:
        held = principal.all_roles()
    entry.role = _role_named(held, policy)
    if not held & policy.roles:
        where = f" in project {entry.project}" if policy.project else ""
        mine = ", ".join(sorted(r.value for r in held)) or "none"
        raise Forbidden(f"{policy.action} needs the role {' or '.join(sorted(r.value for r in policy.roles))}{where}; "
                        f"these credentials hold {mine}")
    if policy.project:
        guard.check_project(entry.project)
        request.state.project = entry.project


def _seconds(wait: float) -> int:
    """A wait as the whole seconds ``Retry-After`` says (:class:`RateLimited`'s rounding; never "try again in 0 s")."""
    return max(1, int(wait + 0.999))


def _role_named(held: frozenset[Role], policy: Policy) -> str | None:
    """The role the audit record names: the one that grants the request, else the caller's first."""
    granting = sorted(r.value for r in held & policy.roles) or sorted(r.value for r in held)
    return granting[0] if granting else None


def document_public_routes(app: FastAPI) -> None:
    """The OpenAPI document marks every route as needing the bearer scheme except the public ones."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    policy = policy_for(method, path)
                    if policy is not None and policy.access is not Access.roles:
                        operation.pop("security", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


class AuditMiddleware:
    """ASGI middleware: append each guarded request's audit record when its status is known (at the
    response's start, before any of its body is sent), so that a read whose record cannot be written
    is answered 503 instead. Plain ASGI rather than an ``@app.middleware`` function: it sees the
    messages without re-streaming the request and response bodies."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = False
        state = scope.setdefault("state", {})  # shared with the route's request.state, where authorize leaves the entry

        async def recorded(message):
            nonlocal refused
            if refused:
                return  # the body of a response replaced by the 503
            entry: AuditEntry | None = state.get("audit")
            if message["type"] == "http.response.start" and entry is not None:
                status = message["status"]
                if status in (401, 403, 429):
                    from medsynth.runtime.telemetry import AUTH_REFUSED

                    AUTH_REFUSED.labels(str(status)).inc()
                try:
                    await asyncio.wrap_future(scope["app"].state.guard.audit.submit(entry, status))
                except Exception:  # noqa: BLE001 - the store is down or refuses; never serve a read unrecorded
                    from medsynth.runtime.telemetry import AUDIT_FAILURES

                    AUDIT_FAILURES.inc()
                    log.exception("audit record of %s %s not written", scope["method"], scope["path"])
                    if scope["method"] == "GET":
                        refused = True
                        response = problem_response(503, "the audit trail cannot be written now; the request was not served",
                                                    scope["path"], type=problem_type("audit-unavailable"),
                                                    title="Audit trail unavailable", headers={"Retry-After": "5"})
                        return await response(scope, receive, send)
            await send(message)

        await self.app(scope, receive, recorded)
