"""A worker process for the redelivery test: the real worker service with a handler that, on its first
attempt, announces itself and then hangs until the test kills the process with SIGKILL.

Usage: python killable_worker.py OUT_DIR   (settings come from MEDSYNTH_* variables)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from medsynth.core.logging import configure_logging
from medsynth.core.settings import load_settings
from medsynth.bus.messages import JobKind
from medsynth.handlers.service import run_worker

OUT = Path(sys.argv[1])


def handler(spec, ctx):
    (OUT / f"attempt-{ctx.record.attempts}-pid-{os.getpid()}").touch()
    if ctx.record.attempts == 1:
        while True:  # the test kills us here, mid-handler, before any output is written
            time.sleep(0.1)
    key = f"jobs/{ctx.job_id}/outputs/result.txt"
    ctx.store.put_bytes(key, b"done")
    with open(OUT / "output-writes.log", "a") as log:
        log.write(f"{key} by {os.getpid()}\n")
    return {"result": key}


if __name__ == "__main__":
    configure_logging("killable")
    run_worker("killable", load_settings(http_port=0), {JobKind.prepare_dataset: handler})
