"""HTTP plumbing shared by every service: /healthz, /readyz, /metrics, and error → status mapping."""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from medsynth.bus.client import BusError
from medsynth.core.errors import (
    Busy,
    Conflict,
    Forbidden,
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


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong: a sentence, or the list of validation errors (422).")


#: The statuses every route of the two apps may answer besides its own success (documented in OpenAPI).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No credentials, or a token or key that is expired, forged, revoked or for another audience."},
    403: {"model": ErrorBody, "description": "The caller's role, or the project its credentials are for, does not allow this."},
    404: {"model": ErrorBody, "description": "A named dataset, scan, job, generator, cohort or run does not exist."},
    409: {"model": ErrorBody, "description": "The request collides with existing state."},
    422: {"model": ErrorBody, "description": "The request is invalid; the detail names the field or the problem."},
    429: {"model": ErrorBody, "description": "Over the caller's request or upload rate; Retry-After says when to try again."},
    503: {"model": ErrorBody, "description": "The store or the broker cannot be reached now (where a job was recorded: Retry-After, and Location naming the job to follow instead of resubmitting)."},
}


def health_router(checks: ReadinessChecks, metrics_token: str | None = None) -> APIRouter:
    """``/healthz`` and ``/readyz`` (anonymous, for probes) and ``/metrics``, which asks for
    ``Authorization: Bearer <metrics_token>`` when a token is set (``MEDSYNTH_METRICS_TOKEN``)."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "Not ready: the checks say which part is down."}})
    def readyz() -> Response:
        results = _run_checks(checks)
        status = 200 if results and all(results.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": results}, status_code=status)

    @router.get("/metrics", responses={401: {"model": ErrorBody, "description": "The metrics token is missing or wrong."}})
    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        given = request.headers.get("authorization", "").encode()
        if metrics_token is not None and not hmac.compare_digest(given, f"Bearer {metrics_token}".encode()):
            return JSONResponse({"detail": "/metrics needs Authorization: Bearer <the metrics token>."}, status_code=401,
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
    """Answer medsynth errors with their status code and the error's message as ``detail``."""

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
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers or None)

    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if (audit := getattr(request.state, "audit", None)) is not None:
            audit.reason = "invalid request"
        return JSONResponse({"detail": _printable(exc.errors())}, status_code=422)

    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """A client that hangs up mid-upload: one line, not a traceback; the answer goes nowhere."""
        log.info("%s %s: the client disconnected before its request body was read", request.method, request.url.path)
        if (audit := getattr(request.state, "audit", None)) is not None:
            audit.reason = "client disconnected"
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(MedsynthError, handle)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ClientDisconnect, client_gone)


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
