"""Submitting, cancelling and republishing jobs: record first, then the command."""

from __future__ import annotations

import logging
import os
import socket

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message

from medsynth.bus.client import Bus, BusError
from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.bus.messages import JobKind, make_command, make_event, transition_id
from medsynth.jobs.announce import announce_terminal
from medsynth.v1 import events_pb2

log = logging.getLogger(__name__)


class JobDeferred(BusError):
    """The job is recorded (``queued``) but its command could not be published now; the reconciler
    publishes it within ``retry_after_s``. Answered 503 with ``Retry-After`` and ``Location:
    /v1/jobs/{job_id}``: resubmitting would make a second job — poll the job instead."""

    def __init__(self, job_id: str, retry_after_s: int, cause: str) -> None:
        super().__init__(
            f"job {job_id} is recorded and queued, but the broker cannot be reached ({cause}); it will be published "
            f"within {retry_after_s} s. Do not resubmit: follow GET /v1/jobs/{job_id}."
        )
        self.job_id, self.retry_after_s = job_id, retry_after_s
        self.http_headers = {"Location": f"/v1/jobs/{job_id}"}  # clients follow it there instead of resubmitting
        self.problem_fields = {"job_id": job_id}

    problem_type = "job-deferred"
    problem_title = "Job recorded, not yet published"


class JobService:
    def __init__(self, records: JobRecords, bus: Bus, *, retry_after_s: int = 75) -> None:
        self.records = records
        self.bus = bus
        self.retry_after_s = retry_after_s
        self._last_error = ""
        self.identity = f"api@{socket.gethostname()}:{os.getpid()}"  # as a lease holder

    def submit(self, kind: JobKind, spec: Message, *, job_id: str | None = None) -> JobRecord:
        """Create the job record (as ``job_id``, default a new id of ``kind``), then publish its command.

        If the broker is unreachable (within the bus's publish timeout) the job stays ``queued``, the
        reconciler publishes it later, and :class:`JobDeferred` says so: the job is never lost, only delayed.
        """
        record = JobRecord(
            job_id=job_id or new_job_id(kind),
            kind=kind,
            project=self.records.project,
            spec=MessageToDict(spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        )
        self.records.put(record)
        if not self.publish(record):
            raise JobDeferred(record.job_id, self.retry_after_s, self._last_error)
        return record

    def publish(self, record: JobRecord) -> bool:
        """(Re)publish a queued job's command; returns whether the broker acknowledged it."""
        spec = ParseDict(record.spec, record.kind.spec_type()(), ignore_unknown_fields=True)
        try:
            self.bus.send_command(record.kind, make_command(record.job_id, record.kind, spec, record.project))
            publication = self.records.mark_published(record.job_id)
            self.bus.emit(make_event(record.job_id, record.kind, project=record.project, queued=events_pb2.JobQueued(),
                                     event_id=transition_id(record.job_id, "queued", publication.count)))
        except BusError as exc:
            log.warning("job %s stays queued, publishing failed: %s", record.job_id, exc)
            self._last_error = str(exc)
            return False
        return True

    def cancel(self, job_id: str) -> JobRecord:
        """Request cancellation. A queued job is cancelled at once; a running one at its next step."""
        record = self.records.get(job_id)
        if record.state.terminal:
            raise Conflict(f"job {job_id} is already {record.state.value}")
        self.records.request_cancel(job_id)
        if record.state is JobState.queued:
            # the lease keeps a worker that receives the command meanwhile from announcing it as well
            self.records.renew_lease(job_id, self.identity, record.attempts, ttl_s=max(60.0, 4 * self.bus.settings.publish_timeout_s))
            try:
                record.state, record.finished_at = JobState.cancelled, utcnow()
                announce_terminal(self.bus, self.records, record)
            finally:
                self.records.release_lease(job_id)
        return record
