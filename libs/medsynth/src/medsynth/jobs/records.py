"""Job records: one JSON object per job in the store, the source of truth about its state.

Layout under ``jobs/<job_id>/``:

- ``record.json``     spec, state, attempts, progress, timestamps, result keys, error. Written by the
                      api when the job is created and by the worker that runs it — nobody else.
- ``cancel``          present when cancellation was requested (any writer; workers poll it).
- ``published.json``  when and how often the command was published (api and reconciler).
- ``lease.json``      which worker runs the job and until when its claim holds (that worker only:
                      written when an attempt starts, renewed while it runs, removed when it ends; the
                      api holds it while it announces the cancellation of a queued job).
                      A running job whose lease has expired lost its worker; the reconciler
                      republishes its command.

Keeping the cancel flag and publish bookkeeping out of the record means no two processes ever
rewrite the same object concurrently, so no update is lost without needing compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import NotFound
from medsynth.core.names import check_name, sortable_suffix
from medsynth.bus.messages import JobKind
from medsynth.store.projects import DEFAULT_PROJECT
from medsynth.store import ObjectStore

PREFIX = "jobs/"


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


def new_job_id(kind: JobKind) -> str:
    """``<kind>-<time-ordered hex>``: a kind's jobs list in the store in the order they were made."""
    return f"{kind.value}-{sortable_suffix()}"


class JobRecord(BaseModel):
    job_id: str
    kind: JobKind
    project: str = DEFAULT_PROJECT
    spec: dict[str, Any]
    state: JobState = JobState.queued
    attempts: int = 0
    progress: float = 0.0
    message: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_keys: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    dead_lettered: bool = False
    #: Whether the terminal state's event is on the events topic. Written False with the terminal state,
    #: True once the event is acknowledged: a worker that finds a terminal record not announced (its
    #: worker died in between) announces it, after looking for it in the log. Records of before: True.
    announced: bool = True
    #: An offset of the job's events partition before any of its terminal event's sends (the offset of
    #: its last ``started`` event): where the search for an unacknowledged terminal event starts.
    events_offset: int | None = None


class Lease(BaseModel):
    worker: str
    attempt: int
    expires_at: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())


class Publication(BaseModel):
    count: int = 0
    last_at: datetime | None = None


def record_key(job_id: str) -> str:
    return f"{PREFIX}{check_name(job_id, 'job id')}/record.json"


class JobRecords:
    """Reads and writes the job records of one project, in that project's store
    (:func:`medsynth.store.projects.project_store`)."""

    def __init__(self, store: ObjectStore, project: str = DEFAULT_PROJECT) -> None:
        self.store = store
        self.project = project

    def get(self, job_id: str) -> JobRecord:
        try:
            return JobRecord.model_validate(self.store.get_json(record_key(job_id)))
        except NotFound:
            raise NotFound(f"no job with id {job_id!r}") from None

    def put(self, record: JobRecord) -> JobRecord:
        record.updated_at = utcnow()
        self.store.put_json(record_key(record.job_id), record.model_dump(mode="json"))
        return record

    def all(self) -> Iterator[JobRecord]:
        for key in self.store.list(PREFIX):
            if key.endswith("/record.json"):
                yield JobRecord.model_validate(self.store.get_json(key))

    def ids(self, kind: JobKind | None = None, *, after: str | None = None) -> list[str]:
        """Ids of the jobs (of ``kind``), in order (for ids made by :func:`new_job_id`, the order they were
        made), from the first after ``after``: one listing of keys, no record read."""
        prefix = f"{PREFIX}{kind.value}-" if kind is not None else PREFIX
        found = (key.split("/") for key in self.store.list(prefix))
        return sorted(parts[1] for parts in found if len(parts) == 3 and parts[2] == "record.json" and (after is None or parts[1] > after))

    def listing(self, kind: JobKind | None = None, *, after: str | None = None) -> Iterator[tuple[str, JobRecord]]:
        """(id, record) of the jobs (of ``kind``) in :meth:`ids` order, each record read when reached."""
        for job_id in self.ids(kind, after=after):
            try:
                yield job_id, self.get(job_id)
            except NotFound:  # removed meanwhile
                continue

    def request_cancel(self, job_id: str) -> None:
        self.store.put_bytes(f"{PREFIX}{job_id}/cancel", b"")

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.exists(f"{PREFIX}{job_id}/cancel")

    def publication(self, job_id: str) -> Publication:
        try:
            return Publication.model_validate(self.store.get_json(f"{PREFIX}{job_id}/published.json"))
        except NotFound:
            return Publication()

    def mark_published(self, job_id: str) -> Publication:
        pub = self.publication(job_id)
        pub = Publication(count=pub.count + 1, last_at=utcnow())
        self.store.put_json(f"{PREFIX}{job_id}/published.json", pub.model_dump(mode="json"))
        return pub

    def lease(self, job_id: str) -> Lease | None:
        try:
            return Lease.model_validate(self.store.get_json(f"{PREFIX}{job_id}/lease.json"))
        except NotFound:
            return None

    def renew_lease(self, job_id: str, worker: str, attempt: int, ttl_s: float) -> Lease:
        lease = Lease(worker=worker, attempt=attempt, expires_at=utcnow() + timedelta(seconds=ttl_s))
        self.store.put_json(f"{PREFIX}{job_id}/lease.json", lease.model_dump(mode="json"))
        return lease

    def release_lease(self, job_id: str) -> None:
        self.store.delete(f"{PREFIX}{job_id}/lease.json")
