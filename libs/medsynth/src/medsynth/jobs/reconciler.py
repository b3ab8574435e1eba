"""The reconciler: republish the commands of jobs left ``queued`` too long (a lost message, a broker
restarted with an empty log, a publish that failed). Redelivery is harmless because workers are
idempotent and skip jobs whose record is already terminal."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime

from medsynth.core.clock import utcnow
from medsynth.jobs.records import JobState
from medsynth.jobs.service import JobService
from medsynth.bus.messages import JobKind
from medsynth.runtime.telemetry import JOBS_BY_STATE, RECONCILER_ERRORS, RECONCILER_REPUBLISHED

log = logging.getLogger(__name__)


def reconcile_once(jobs: JobService, older_than_s: float, now: datetime | None = None) -> list[str]:
    """Republish every queued job whose last publication (or creation) is older than ``older_than_s``.

    Returns the ids of the jobs republished.
    """
    now = now or utcnow()
    republished = []
    counts: Counter[tuple[str, str]] = Counter()
    for record in jobs.records.all():
        counts[record.kind.value, record.state.value] += 1
        if record.state is not JobState.queued or jobs.records.cancel_requested(record.job_id):
            continue
        last = jobs.records.publication(record.job_id).last_at or record.created_at
        if (now - last).total_seconds() >= older_than_s and jobs.publish(record):
            log.info("republished queued job %s (last published %s)", record.job_id, last.isoformat())
            RECONCILER_REPUBLISHED.inc()
            republished.append(record.job_id)
    _set_state_gauges(counts)
    return republished


def _set_state_gauges(counts: Counter[tuple[str, str]]) -> None:
    """Every kind × state, zeros included, so that a job that left a state takes its count with it."""
    for kind in JobKind:
        for state in JobState:
            JOBS_BY_STATE.labels(kind.value, state.value).set(counts.get((kind.value, state.value), 0))


def run_reconciler(jobs: JobService, older_than_s: float, every_s: float, stop: threading.Event) -> None:
    """Loop :func:`reconcile_once` until ``stop`` is set; errors are logged and the loop goes on."""
    while not stop.wait(every_s):
        try:
            reconcile_once(jobs, older_than_s)
        except Exception:  # noqa: BLE001 - a failed pass must not end the loop; the next one retries
            RECONCILER_ERRORS.inc()
            log.exception("reconciler pass failed")
