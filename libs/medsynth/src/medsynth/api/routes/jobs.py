"""Jobs of every kind: list, inspect, cancel."""

from __future__ import annotations

from fastapi import APIRouter

from medsynth.api.deps import JobsDep
from medsynth.api.schemas import JobPublic, JobsPublic
from medsynth.jobs.records import JobState
from medsynth.bus.messages import JobKind

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobsPublic)
def list_jobs(jobs: JobsDep, kind: JobKind | None = None, state: JobState | None = None) -> JobsPublic:
    records = [
        r for r in jobs.records.all() if (kind is None or r.kind is kind) and (state is None or r.state is state)
    ]
    records.sort(key=lambda r: r.created_at)
    return JobsPublic(jobs=[JobPublic.of(r) for r in records], count=len(records))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, jobs: JobsDep) -> JobPublic:
    return JobPublic.of(jobs.records.get(job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Cancel a queued job at once, or a running one at its next progress step (409 if finished)."""
    return JobPublic.of(jobs.cancel(job_id))
