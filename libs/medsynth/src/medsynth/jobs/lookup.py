"""Finished jobs as the registry of what they produced: a generator, a cohort or a segmentation run
is identified by the id of the job that made it, and its artifacts by that job's result keys."""

from __future__ import annotations

from medsynth.core.errors import Conflict, InvalidInput, NotFound
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.bus.messages import JobKind

NOUNS = {
    JobKind.train_generator: "generator",
    JobKind.sample_cohort: "cohort",
    JobKind.train_segmenter: "segmentation run",
    JobKind.evaluate: "evaluation",
    JobKind.prepare_dataset: "dataset view",
}


def of_kind(records: JobRecords, job_id: str, kind: JobKind) -> JobRecord:
    """The job ``job_id`` of ``kind``, in whatever state: what a kind's own routes
    (``/v1/generators/{id}``, ``/v1/cohorts/{id}``…) look ids up with, so that another kind's id is
    unknown there rather than read as if it were of this kind.

    Raises:
        NotFound: no such job, a malformed id, or a job of another kind.
    """
    noun = NOUNS[kind]
    try:
        record = records.get(job_id)
    except (NotFound, InvalidInput) as exc:  # a malformed id is as unknown as a missing one
        raise NotFound(f"unknown {noun} {job_id!r}") from exc
    if record.kind is not kind:
        raise NotFound(f"unknown {noun} {job_id!r} (that id is a {record.kind.value} job)")
    return record


def finished(records: JobRecords, job_id: str, kind: JobKind) -> JobRecord:
    """The succeeded job ``job_id`` of ``kind``.

    Raises:
        NotFound: no such job, or a job of another kind.
        Conflict: the job exists but has not succeeded (still queued/running, failed, cancelled).
    """
    noun = NOUNS[kind]
    record = of_kind(records, job_id, kind)
    if record.state is not JobState.succeeded:
        detail = f": {record.error}" if record.error else ""
        raise Conflict(f"{noun} {job_id} is {record.state.value}, not ready{detail}")
    return record
