"""HTTP plumbing shared by every service: /healthz, /readyz, /metrics, and errors → RFC 9457 problem details."""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from medsynth.bus.client import BusError
from medsynth.core.errors import (
    Busy,
    Conflict,
    Forbidden,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidInput,
    MedsynthError,
    NotFound,
    PeerUnavailable,
    RateLimited,
    StoreError,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

ReadinessChecks = Callable[[], Mapping[str, bool]]

# Most specific first: TooLarge is an InvalidInput.
STATUS_BY_ERROR: list[tuple[type[MedsynthError], int]] = [
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (InvalidInput, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (NotFound, 404),
    (Conflict, 409),
    (PeerUnavailable, 502),
    (StoreError, 503),
    (BusError, 503),
    (Busy, 503),
    (MedsynthError, 500),
]

#: The status recorded (metrics, audit) for a request whose client disconnected before it was read (nginx's 499).
CLIENT_CLOSED_REQUEST = 499

# --- RFC 9457 problem details ---------------------------------------------------------------------

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Every problem type medsynth defines is ``urn:medsynth:problem:<slug>``; errors from HTTP itself
#: (an unknown path, a method the route does not take) are ``about:blank``.
PROBLEM_TYPE_PREFIX = "urn:medsynth:problem:"

#: (error class, slug, title) of each problem type, most specific first (as :data:`STATUS_BY_ERROR`).
#: An error may name its own with the class attributes ``problem_type`` and ``problem_title``.
PROBLEM_TYPES: list[tuple[type[MedsynthError], str, str]] = [
    (TooLarge, "too-large", "Request too large"),
    (UnsupportedMediaType, "unsupported-media-type", "Unsupported media type"),
    (IdempotencyKeyReused, "idempotency-key-reused", "Idempotency-Key reused for another request"),
    (IdempotencyKeyInUse, "idempotency-key-in-use", "Request with this Idempotency-Key in progress"),
    (InvalidInput, "invalid-input", "Invalid input"),
    (Unauthorized, "unauthorized", "Not authenticated"),
    (Forbidden, "forbidden", "Not allowed"),
    (RateLimited, "rate-limited", "Too many requests"),
    (NotFound, "not-found", "Not found"),
    (Conflict, "conflict", "Conflict with the current state"),
    (PeerUnavailable, "peer-unavailable", "Remote node unavailable"),
    (StoreError, "store-unavailable", "Object store unavailable"),
    (BusError, "broker-unavailable", "Message broker unavailable"),
    (Busy, "busy", "Service busy"),
    (MedsynthError, "internal", "Internal error"),
]
INVALID_REQUEST = ("invalid-request", "Request validation failed")


def problem_type(slug: str) -> str:
    return f"{PROBLEM_TYPE_PREFIX}{slug}"


class FieldError(BaseModel):
    """One field at fault in a request that failed validation (pydantic's error, JSON-safe)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the path of the field in it.")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="The kind of error (pydantic's error type, e.g. missing, extra_forbidden).")


class Problem(BaseModel):
    """An error as RFC 9457 problem details (``application/problem+json``). ``detail`` is the sentence
    medsynth has always answered with; extension members (``errors``, ``job_id``…) add to it."""

    model_config = ConfigDict(extra="allow")
    type: str = Field("about:blank", description="The problem type: urn:medsynth:problem:<slug>, or about:blank for a "
                                                 "plain HTTP error (its title is the status phrase).")
    title: str = Field(description="A short summary of the problem type; the same for every occurrence.")
    status: int = Field(description="The HTTP status code of this occurrence.")
    detail: str = Field(description="What went wrong this time, naming the value or field at fault.")
    instance: str = Field(description="The path of the request that met the problem.")
    errors: list[FieldError] | None = Field(None, description="Request validation (422, invalid-request): every field at fault.")


def problem_body(status: int, detail: str, instance: str, *, type: str = "about:blank", title: str | None = None,
                 **extensions: Any) -> dict[str, Any]:
    """The members of a problem document (RFC 9457); ``title`` defaults to the status phrase."""
    return {"type": type, "title": title or _phrase(status), "status": status, "detail": detail, "instance": instance,
            **extensions}


def problem_response(status: int, detail: str, instance: str, *, headers: Mapping[str, str] | None = None,
                     **members: Any) -> JSONResponse:
    """An ``application/problem+json`` answer (see :func:`problem_body` for the members)."""
    return JSONResponse(problem_body(status, detail, instance, **members), status_code=status, headers=dict(headers or {}) or None,
                        media_type=PROBLEM_MEDIA_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _problem_of(exc: MedsynthError) -> tuple[str, str]:
    """(type URI, title) of a medsynth error: its own ``problem_type`` / ``problem_title``, else its class's."""
    slug, title = next((s, t) for cls, s, t in PROBLEM_TYPES if isinstance(exc, cls))
    return problem_type(getattr(exc, "problem_type", None) or slug), getattr(exc, "problem_title", None) or title


#: The statuses every route of the two apps may answer besides its own success (documented in OpenAPI
#: as ``application/problem+json``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No credentials, or a token or key that is expired, forged, revoked or for another audience."},
    403: {"model": Problem, "description": "The caller's role, or the project its credentials are for, does not allow this."},
    404: {"model": Problem, "description": "A named dataset, scan, job, generator, cohort or run does not exist."},
    409: {"model": Problem, "description": "The request collides with existing state."},
    422: {"model": Problem, "description": "The request is invalid; the detail names the field or the problem (request "
                                           "validation: every field at fault in errors)."},
    429: {"model": Problem, "description": "Over the caller's request or upload rate; Retry-After says when to try again."},
    503: {"model": Problem, "description": "The store or the broker cannot be reached now (where a job was recorded: Retry-After, "
                                           "and Location naming the job to follow; sent again with its Idempotency-Key, the "
                                           "request gets that job)."},
}


def document_problems(app: FastAPI) -> None:
    """In the OpenAPI document, every error answer (4xx, 5xx) is ``application/problem+json``: a problem
    schema documented for one (FastAPI files it under the route's media type) moves there, and one
    documented without a schema gets :class:`Problem`'s."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in components:
            definitions = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definitions.pop("$defs", {}))
            components["Problem"] = definitions
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if str(code)[0] not in "45":
                        continue
                    content = response.setdefault("content", {})
                    for media in [m for m, c in content.items() if m != PROBLEM_MEDIA_TYPE and _is_problem(c.get("schema", {}), components)]:
                        content[PROBLEM_MEDIA_TYPE] = content.pop(media)  # the route's own media type (text/html…) is its success's
                    if not content:
                        content[PROBLEM_MEDIA_TYPE] = {"schema": {"$ref": "#/components/schemas/Problem"}}
        return schema

    app.openapi = openapi


PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})


def _is_problem(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether a response schema is a problem document (it has every RFC 9457 member)."""
    if ref := schema.get("$ref"):
        schema = components.get(ref.rsplit("/", 1)[-1], {})
    return PROBLEM_MEMBERS <= set(schema.get("properties", {}))


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(description="Each dependency (store, kafka) and whether it answers.")


def health_router(checks: ReadinessChecks, metrics_token: str | None = None) -> APIRouter:
    """``/healthz`` and ``/readyz`` (anonymous, for probes) and ``/metrics``, which asks for
    ``Authorization: Bearer <metrics_token>`` when a token is set (``MEDSYNTH_METRICS_TOKEN``)."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health()

    @router.get("/readyz", response_model=Readiness,
                responses={503: {"model": Readiness, "description": "Not ready: the checks say which part is down."}})
    def readyz() -> Response:
        results = _run_checks(checks)
        status = 200 if results and all(results.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": results}, status_code=status)

    @router.get("/metrics", response_class=PlainTextResponse,
                responses={401: {"model": Problem, "description": "The metrics token is missing or wrong."}})
    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        given = request.headers.get("authorization", "").encode()
        if metrics_token is not None and not hmac.compare_digest(given, f"Bearer {metrics_token}".encode()):
            return problem_response(401, "/metrics needs Authorization: Bearer <the metrics token>.", request.url.path,
                                    type=problem_type("unauthorized"), title="Not authenticated",
                                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'})

        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _run_checks(checks: ReadinessChecks) -> dict[str, bool]:
    try:
        return dict(checks())
    except Exception:  # noqa: BLE001 - a failing check means "not ready", with the reason in the log
        log.exception("readiness check raised")
        return {"checks": False}


def install_http_metrics(app: FastAPI) -> None:
    """Count and time every request by its route template (``/v1/jobs/{job_id}``, not the raw path,
    so that the series stay few); unmatched paths count as ``unmatched``."""
    import time

    from medsynth.runtime.telemetry import HTTP_REQUESTS, HTTP_SECONDS

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
            HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)


def install_error_handlers(app: FastAPI) -> None:
    """The one seam between errors and answers: medsynth errors, request validation and HTTP's own
    errors (unknown path, wrong method) become RFC 9457 problem details (``application/problem+json``:
    type, title, status, detail, instance), with their status code, and the OpenAPI document says so
    (:func:`document_problems`). ``detail`` is the error's message, as it always was."""

    async def handle(request: Request, exc: MedsynthError) -> Response:
        status = next(code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls))
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        headers = dict(getattr(exc, "http_headers", None) or {})  # e.g. Connection: close from a refused upload
        if (retry := getattr(exc, "retry_after_s", None)) is not None:
            headers["Retry-After"] = str(int(retry))
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="medsynth"'
        if (audit := getattr(request.state, "audit", None)) is not None:
            audit.reason = str(exc)
        kind, title = _problem_of(exc)
        return problem_response(status, str(exc), request.url.path, type=kind, title=title, headers=headers,
                                **dict(getattr(exc, "problem_fields", None) or {}))

    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if (audit := getattr(request.state, "audit", None)) is not None:
            audit.reason = "invalid request"
        errors = _printable(exc.errors())
        slug, title = INVALID_REQUEST
        return problem_response(422, describe_fields(errors), request.url.path, type=problem_type(slug), title=title, errors=errors)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code in (204, 304):  # no body allowed
            return Response(status_code=exc.status_code, headers=headers)
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        return problem_response(exc.status_code, detail, request.url.path, headers=headers)

    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """A client that hangs up mid-upload: one line, not a traceback; the answer goes nowhere."""
        log.info("%s %s: the client disconnected before its request body was read", request.method, request.url.path)
        if (audit := getattr(request.state, "audit", None)) is not None:
            audit.reason = "client disconnected"
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(MedsynthError, handle)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    document_problems(app)


def describe_fields(errors: list[dict[str, Any]]) -> str:
    """Validation errors as one sentence, ``body.count: Input should be ...; query.limit: ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', '')}" for e in errors) \
        or "the request is invalid"


ECHO_LIMIT = 200  # characters of a rejected value a 422 repeats


def _printable(value: Any) -> Any:
    """A validation error as JSON can carry it: non-finite numbers (``1e400`` parses to inf) as
    strings, long strings cut to :data:`ECHO_LIMIT` characters (a 50 MB id is not echoed back),
    anything else that is not JSON (exceptions in ``ctx``) as its text."""
    if isinstance(value, dict):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= ECHO_LIMIT else f"{value[:ECHO_LIMIT]}… ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _printable(str(value))


def serve_in_thread(app: FastAPI, host: str, port: int) -> threading.Thread:
    """Run a small FastAPI app (a worker's health endpoints) with uvicorn in a daemon thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    return thread
