"""App factories for the two HTTP services. Nothing is built at import time: clients are created in
the lifespan, from the settings handed to the factory."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from medsynth import __version__
from medsynth.auth.guard import AuditMiddleware, Guard, authorize, document_public_routes
from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.studies.runner import run_study_loop, watch_job_endings
from medsynth.jobs.reconciler import run_reconciler
from medsynth.jobs.records import JobRecords
from medsynth.jobs.service import JobService
from medsynth.store.projects import Projects, project_store
from medsynth.store import open_service_store
from medsynth.runtime.telemetry import declare_ingest_series
from medsynth.runtime.http import ERROR_RESPONSES, health_router, install_error_handlers, install_http_metrics
from medsynth.runtime.server import BodyTimeout


def _ready(app: FastAPI) -> Mapping[str, bool]:
    state = app.state
    if not hasattr(state, "store"):
        return {"started": False}
    return {"store": _store_ok(state.store), "kafka": state.bus.reachable()}


def _store_ok(store) -> bool:
    """One cheap round trip (a stat of a key that need not exist), not a listing: probes are frequent."""
    try:
        store.exists("health/readyz")
    except Exception:  # noqa: BLE001 - unreachable store means not ready
        return False
    return True


def _base_app(title: str, settings: Settings, lifespan) -> FastAPI:
    """Every route runs :func:`~medsynth.auth.guard.authorize` first (default deny: a route without a
    policy is refused) and each guarded request leaves an audit record; a body that stops coming is a 408."""
    app = FastAPI(title=title, version=__version__, lifespan=lifespan, dependencies=[Depends(authorize)],
                  max_body_size=settings.max_json_bytes)  # JSON bodies; the upload route has its own limits
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyTimeout, seconds=settings.http_body_timeout_s)
    install_http_metrics(app)
    app.add_middleware(AuditMiddleware)
    app.include_router(health_router(lambda: _ready(app), settings.metrics_token_value))
    document_public_routes(app)
    return app


def create_ingest_app(settings: Settings, *, assemble_quiet_series: bool = True) -> FastAPI:
    from medsynth.api.routes import dicom, scans
    from medsynth.api.dicom_listener import StoreSCP, run_quiet_committer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = open_service_store(settings)
        app.state.guard = Guard(settings, app.state.store)
        app.state.bus = Bus(settings, client_id="ingest")
        stop = threading.Event()
        if assemble_quiet_series:
            threading.Thread(target=run_quiet_committer, args=(settings, app.state.store, app.state.bus, stop),
                             name="dicom-committer", daemon=True).start()
        # no peers, no listener: an empty allowlist would let any AE title associate
        scp = StoreSCP(settings, app.state.store) if settings.dicom_port and settings.dicom_peers else None
        if scp is not None:
            scp.start()
        yield
        stop.set()
        if scp is not None:
            scp.stop()
        app.state.bus.close()

    app = _base_app("medsynth ingest", settings, lifespan)
    declare_ingest_series()
    app.include_router(scans.router, responses=ERROR_RESPONSES)
    app.include_router(dicom.router, responses=ERROR_RESPONSES)
    return app


def create_api_app(settings: Settings, *, reconcile: bool = True) -> FastAPI:
    from medsynth.api.routes import admin, cohorts, datasets, evaluations, generators, jobs, reader_studies, segmentations, studies

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = open_service_store(settings)
        app.state.guard = Guard(settings, app.state.store)
        app.state.bus = Bus(settings, client_id="api")
        retry_after = int(settings.reconcile_after_s + settings.reconcile_every_s)

        def jobs_of(project: str) -> JobService:
            return JobService(JobRecords(project_store(app.state.store, project), project), app.state.bus, retry_after_s=retry_after)

        def every_project() -> list[JobService]:
            return [jobs_of(name) for name in Projects(app.state.store).names()]

        app.state.jobs_of = jobs_of
        stop = threading.Event()
        if reconcile:
            args = (every_project, settings.reconcile_after_s, settings.reconcile_every_s, stop)
            threading.Thread(target=run_reconciler, args=args, kwargs={"lease_s": settings.lease_s}, name="reconciler", daemon=True).start()

            def studies_of_every_project():
                return [(project_store(app.state.store, name), jobs_of(name)) for name in Projects(app.state.store).names()]

            wake = threading.Event()  # a job ended: move studies on now
            threading.Thread(target=watch_job_endings, args=(app.state.bus, wake, stop), name="study-events", daemon=True).start()
            threading.Thread(target=run_study_loop, args=(studies_of_every_project, settings.study_every_s, stop, wake),
                             name="studies", daemon=True).start()
        yield
        stop.set()
        app.state.bus.close()

    app = _base_app("medsynth api", settings, lifespan)
    for module in (datasets, jobs, generators, cohorts, segmentations, evaluations, studies, reader_studies, admin):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(generators.families_router, responses=ERROR_RESPONSES)
    return app


def main(name: str) -> None:
    """Entrypoint of ``services/api/main.py`` and ``services/ingest/main.py``."""
    import uvicorn

    from medsynth.core.logging import configure_logging
    from medsynth.core.settings import load_settings
    from medsynth.runtime.server import uvicorn_config

    factories = {"api": create_api_app, "ingest": create_ingest_app}
    configure_logging(name)
    settings = load_settings()
    uvicorn.Server(uvicorn_config(factories[name](settings), settings)).run()
