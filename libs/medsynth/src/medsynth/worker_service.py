"""Run one worker service: the consumer loop in the main thread, health endpoints beside it."""

from __future__ import annotations

import signal
from collections.abc import Mapping

from fastapi import FastAPI

from medsynth import __version__
from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.handlers import handlers_for
from medsynth.jobs.worker import Worker
from medsynth.store import ObjectStore, open_store
from medsynth.web import health_router, serve_in_thread


def build_store_and_bus(settings: Settings, name: str) -> tuple[ObjectStore, Bus]:
    return open_store(settings), Bus(settings, client_id=name)


def build_worker(name: str, settings: Settings) -> Worker:
    return Worker(name, settings, *build_store_and_bus(settings, name), handlers_for(name))


def run_worker(name: str, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; the job in hand stops at its next progress step and is redelivered."""
    worker = build_worker(name, settings)

    def ready() -> Mapping[str, bool]:
        return {"consumer": worker.ready.is_set(), "kafka": worker.bus.connected()}

    app = FastAPI(title=f"medsynth {name}", version=__version__)
    app.include_router(health_router(ready))
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
