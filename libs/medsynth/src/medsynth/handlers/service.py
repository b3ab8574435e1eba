"""Run one worker service: the consumer loop in the main thread, health endpoints beside it."""

from __future__ import annotations

import signal
from collections.abc import Mapping

from fastapi import FastAPI

from medsynth import __version__
from medsynth.bus.client import Bus
from medsynth.core.devices import require_device
from medsynth.core.settings import Settings
from medsynth.handlers import handlers_for
from medsynth.jobs.worker import Handler, Worker
from medsynth.bus.messages import JobKind
from medsynth.store import open_service_store
from medsynth.runtime.http import health_router, serve_in_thread


def run_worker(name: str, settings: Settings, handlers: Mapping[JobKind, Handler] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; the job in hand stops at its next progress step and is redelivered.

    ``handlers`` defaults to the worker's own (:func:`medsynth.handlers.handlers_for`), those of
    ``MEDSYNTH_WORKER_KINDS`` if set.
    """
    handlers = handlers or handlers_for(name, settings.worker_kinds)  # a bad MEDSYNTH_WORKER_KINDS fails before anything starts
    require_device(settings.device)  # MEDSYNTH_DEVICE=cuda on a machine torch cannot use a GPU of: stop now, naming why
    worker = Worker(name, settings, open_service_store(settings), Bus(settings, client_id=name), handlers)

    def ready() -> Mapping[str, bool]:
        return {"consumer": worker.ready.is_set(), "kafka": worker.bus.reachable()}

    app = FastAPI(title=f"medsynth {name}", version=__version__)
    app.include_router(health_router(ready, settings.metrics_token_value))
    serve_in_thread(app, settings.http_host, settings.http_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    finally:
        worker.bus.close()


def main(name: str) -> None:
    """Entrypoint of ``services/<name>/main.py``."""
    from medsynth.core.logging import configure_logging
    from medsynth.core.settings import load_settings

    configure_logging(name)
    run_worker(name, load_settings())
