"""Jobs of every kind: list, inspect, cancel."""

from __future__ import annotations

from fastapi import APIRouter

from medsynth.api.deps import JobsDep
from medsynth.api.pagination import PageDep, PageRequest
from medsynth.api.schemas import JobPublic, JobsPublic
from medsynth.jobs.records import JobState
from medsynth.bus.messages import JobKind
from medsynth.jobs.service import JobService

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobsPublic)
def list_jobs(jobs: JobsDep, page: PageDep, kind: JobKind | None = None, state: JobState | None = None) -> JobsPublic:
    """Jobs in the order they were made, a page at a time (jobs of the project's stores of before, by id)."""
    return jobs_page(jobs, page, kind, state)


def jobs_page(jobs: JobService, page: PageRequest, kind: JobKind | None, state: JobState | None) -> JobsPublic:
    found = ((job_id, r) for job_id, r in jobs.records.listing(kind, after=page.after) if state is None or r.state is state)
    records, cursor = page.take(found)
    return JobsPublic(jobs=[JobPublic.of(r) for r in records], count=len(records), next_cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, jobs: JobsDep) -> JobPublic:
    return JobPublic.of(jobs.records.get(job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Cancel a queued job at once, or a running one at its next progress step (409 if finished)."""
    return JobPublic.of(jobs.cancel(job_id))
