"""Generators: train one of any family on a prepared view (a train-generator job); a generator's id
is its job's. ``GET /v1/generator-families`` describes the families and their options."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.commands.build import generator_command
from medsynth.commands.requests import GeneratorCreate
from medsynth.api.schemas import (
    GeneratorFamiliesPublic,
    GeneratorFamilyPublic,
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


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_generator(body: GeneratorCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    """422 for options the family does not have or cannot use with this view (image size, conditioning)."""
    return JobPublic.of(jobs.submit(JobKind.train_generator, generator_command(body, store)))


@router.get("", response_model=JobsPublic)
def list_generators(jobs: JobsDep, state: JobState | None = None) -> JobsPublic:
    records = sorted(
        (r for r in jobs.records.all() if r.kind is JobKind.train_generator and (state is None or r.state is state)),
        key=lambda r: r.created_at,
    )
    return JobsPublic(jobs=[JobPublic.of(r) for r in records], count=len(records))


@router.get("/{generator_id}")
def get_generator(generator_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    """The training job, and once it succeeded the registered generator (family, spec, metrics, archive)."""
    return job_with_result(of_kind(jobs.records, generator_id, JobKind.train_generator), "generator", "generator",
                           lambda key: load_entry(store, key).stored())


@families_router.get("", response_model=GeneratorFamiliesPublic)
def list_families() -> GeneratorFamiliesPublic:
    """Every registered generator family: what it makes, its mask sources and its options (JSON schema)."""
    return GeneratorFamiliesPublic(families=[GeneratorFamilyPublic(**f.describe()) for f in FAMILIES.values()])
