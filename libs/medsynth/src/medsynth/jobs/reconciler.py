"""The reconciler: republish the commands of jobs left ``queued`` too long (a lost message, a broker
restarted with an empty log, a publish that failed), and of ``running`` jobs whose lease expired
(their worker died, and no group member took the command over). Redelivery is harmless: workers
are idempotent, skip jobs whose record is already terminal, and wait while another worker's lease
on the job holds."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from medsynth.core.clock import utcnow
from medsynth.jobs.records import JobState
from medsynth.jobs.service import JobService
from medsynth.bus.messages import JobKind
from medsynth.runtime.telemetry import JOBS_BY_STATE, RECONCILER_ERRORS, RECONCILER_REPUBLISHED

log = logging.getLogger(__name__)


def reconcile_once(
    services: JobService | Iterable[JobService], older_than_s: float, now: datetime | None = None, *, lease_s: float = 60.0
) -> list[str]:
    """Over the jobs of every project (one :class:`JobService` each), republish every queued job
    whose last publication (or creation) is older than ``older_than_s``, and every running job whose
    lease expired and that was not republished since (a running job without a lease counts as
    expired ``lease_s`` after its record last changed).

    Returns the ids of the jobs republished.
    """
    now = now or utcnow()
    republished = []
    counts: Counter[tuple[str, str]] = Counter()
    for jobs in [services] if isinstance(services, JobService) else services:
        republished += _reconcile_project(jobs, older_than_s, now, lease_s, counts)
    _set_state_gauges(counts)
    return republished


def _reconcile_project(jobs: JobService, older_than_s: float, now: datetime, lease_s: float,
                       counts: Counter[tuple[str, str]]) -> list[str]:
    republished = []
    for record in jobs.records.all():
        counts[record.kind.value, record.state.value] += 1
        if record.state not in (JobState.queued, JobState.running) or jobs.records.cancel_requested(record.job_id):
            continue
        last = jobs.records.publication(record.job_id).last_at or record.created_at
        if record.state is JobState.queued:
            due, why = (now - last).total_seconds() >= older_than_s, f"queued, last published {last.isoformat()}"
        else:
            lease = jobs.records.lease(record.job_id)
            expired_at = lease.expires_at if lease else record.updated_at + timedelta(seconds=lease_s)
            due, why = expired_at <= now and last < expired_at, f"running, its lease expired at {expired_at.isoformat()}"
        if due and jobs.publish(record):
            log.info("republished job %s (%s)", record.job_id, why)
            RECONCILER_REPUBLISHED.inc()
            republished.append(record.job_id)
    return republished


def _set_state_gauges(counts: Counter[tuple[str, str]]) -> None:
    """Every kind × state, zeros included, so that a job that left a state takes its count with it."""
    for kind in JobKind:
        for state in JobState:
            JOBS_BY_STATE.labels(kind.value, state.value).set(counts.get((kind.value, state.value), 0))


def run_reconciler(services: Callable[[], Iterable[JobService]], older_than_s: float, every_s: float,
                   stop: threading.Event, *, lease_s: float = 60.0) -> None:
    """Loop :func:`reconcile_once` over ``services()`` (the projects of the moment) until ``stop`` is
    set; errors are logged and the loop goes on."""
    while not stop.wait(every_s):
        try:
            reconcile_once(list(services()), older_than_s, lease_s=lease_s)
        except Exception:  # noqa: BLE001 - a failed pass must not end the loop; the next one retries
            RECONCILER_ERRORS.inc()
            log.exception("reconciler pass failed")
