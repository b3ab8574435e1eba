"""Generators: train one of any family on a prepared view (a train-generator job); a generator's id
is its job's. ``GET /v1/generator-families`` describes the families and their options."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.pagination import PageDep
from medsynth.api.routes.jobs import jobs_page
from medsynth.commands.build import generator_command
from medsynth.commands.requests import GeneratorCreate
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.api.schemas import (
    GeneratorFamiliesPublic,
    GeneratorFamilyPublic,
    GeneratorPublic,
    JobPublic,
    JobsPublic,
    job_with_result,
)
from medsynth.generators.entry import load_entry
from medsynth.generators.registry import FAMILIES
from medsynth.jobs.lookup import of_kind
from medsynth.jobs.records import JobState
from medsynth.bus.messages import JobKind

router = APIRouter(prefix="/v1/generators", tags=["generators"])
families_router = APIRouter(prefix="/v1/generator-families", tags=["generators"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=ACCEPTED)
def create_generator(body: GeneratorCreate, store: StoreDep, jobs: JobsDep, submit: SubmissionDep) -> JobPublic:
    """422 for options the family does not have or cannot use with this view (image size, conditioning)."""
    return submit.job(jobs, JobKind.train_generator, lambda: generator_command(body, store), "/v1/generators/")


@router.get("", response_model=JobsPublic)
def list_generators(jobs: JobsDep, page: PageDep, state: JobState | None = None) -> JobsPublic:
    """Generators' training jobs in the order they were made, a page at a time."""
    return jobs_page(jobs, page, JobKind.train_generator, state)


@router.get("/{generator_id}", response_model=GeneratorPublic, response_model_exclude_unset=True)
def get_generator(generator_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    """The training job, and once it succeeded the registered generator (family, spec, metrics, archive)."""
    return job_with_result(of_kind(jobs.records, generator_id, JobKind.train_generator), "generator", "generator",
                           lambda key: load_entry(store, key).stored())


@families_router.get("", response_model=GeneratorFamiliesPublic)
def list_families(page: PageDep) -> GeneratorFamiliesPublic:
    """Every registered generator family, by name: what it makes, its mask sources and its options (JSON schema)."""
    families, cursor = page.take((name, FAMILIES[name]) for name in sorted(FAMILIES))
    return GeneratorFamiliesPublic(families=[GeneratorFamilyPublic(**f.describe()) for f in families], next_cursor=cursor)
