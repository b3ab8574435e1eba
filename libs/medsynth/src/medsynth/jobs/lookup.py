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


def finished(records: JobRecords, job_id: str, kind: JobKind) -> JobRecord:
    """The succeeded job ``job_id`` of ``kind``.

    Raises:
        NotFound: no such job, or a job of another kind.
        Conflict: the job exists but has not succeeded (still queued/running, failed, cancelled).
    """
    noun = NOUNS[kind]
    try:
        record = records.get(job_id)
    except (NotFound, InvalidInput) as exc:  # a malformed id is as unknown as a missing one
        raise NotFound(f"unknown {noun} {job_id!r}") from exc
    if record.kind is not kind:
        raise NotFound(f"unknown {noun} {job_id!r} (that id is a {record.kind.value} job)")
    if record.state is not JobState.succeeded:
        detail = f": {record.error}" if record.error else ""
        raise Conflict(f"{noun} {job_id} is {record.state.value}, not ready{detail}")
    return record
