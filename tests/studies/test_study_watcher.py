"""The api's study event watcher outlives a broker that is not there yet: it logs the failed connection
and tries again, rather than ending its thread (a stopped watcher leaves studies to the loop's period)."""

from __future__ import annotations

import logging
import socket
import threading
import time

from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.studies.runner import watch_job_endings


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.failed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "study event watcher not connected" in record.getMessage():
            self.failed.set()


def test_the_watcher_retries_while_the_broker_is_unreachable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = Bus(Settings(kafka_bootstrap=f"127.0.0.1:{port}"), client_id="watcher-test")
    logger = logging.getLogger("medsynth.studies.runner")
    seen, level = _Seen(), logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=watch_job_endings, args=(bus, wake, stop), daemon=True)
    try:
        thread.start()
        assert seen.failed.wait(120), "the watcher never reported a failed connection"
        time.sleep(0.5)  # it went on to wait and retry
        assert thread.is_alive() and not wake.is_set()
    finally:
        stop.set()
        thread.join(60)
        logger.removeHandler(seen)
        logger.setLevel(level)
        bus.close()
    assert not thread.is_alive()
