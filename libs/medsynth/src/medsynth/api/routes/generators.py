"""Generators: train one of any family on a prepared view (a train-generator job); a generator's id
is its job's. ``GET /v1/generator-families`` describes the families and their options."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import (
    ConditionOn,
    GeneratorCreate,
    GeneratorFamiliesPublic,
    GeneratorFamilyPublic,
    JobPublic,
    JobsPublic,
    job_with_result,
)
from medsynth.core.errors import InvalidInput
from medsynth.datasets.conditions import CONDITION_SOURCES
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import view_key
from medsynth.generators.base import DataSpec
from medsynth.generators.proto import to_proto
from medsynth.generators.registry import FAMILIES, GeneratorSpec
from medsynth.jobs.records import JobState
from medsynth.bus.messages import JobKind

router = APIRouter(prefix="/v1/generators", tags=["generators"])
families_router = APIRouter(prefix="/v1/generator-families", tags=["generators"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_generator(body: GeneratorCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    """422 for options the family does not have or cannot use with this view (image size, conditioning)."""
    view = store.get_json(view_key(body.dataset, body.view_id))
    if view["counts"]["train"] == 0:
        raise InvalidInput(f"view {body.view_id} has no training items to learn from")
    if view["spec"]["mode"] != "slices2d":
        raise InvalidInput(f"generators train on 2D slices; view {body.view_id} holds {view['spec']['mode']}")
    manifest = load_manifest(store, body.dataset, view["dataset_version"])
    labels = {v for s in manifest.scans for v in s.label_values}
    condition_on = "" if body.condition_on is ConditionOn.none else body.condition_on.value
    data = DataSpec(
        image_size=view["spec"]["size"],
        num_classes=max(2, max(labels, default=0) + 1),
        num_conditions=CONDITION_SOURCES.get(condition_on, 0),
    )
    spec = GeneratorSpec(options=body.generator, training=body.training, data=data)
    if condition_on and not spec.family.conditional(spec.options):
        raise InvalidInput(f"condition_on={condition_on!r} needs a class-conditioned generator; these {spec.options.family} options are not.")
    command = to_proto(spec, dataset=body.dataset, view_id=body.view_id, condition_on=condition_on)
    return JobPublic.of(jobs.submit(JobKind.train_generator, command))


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
    return job_with_result(jobs.records.get(generator_id), "generator", "generator", store.get_json)


@families_router.get("", response_model=GeneratorFamiliesPublic)
def list_families() -> GeneratorFamiliesPublic:
    """Every registered generator family: what it makes, its mask sources and its options (JSON schema)."""
    return GeneratorFamiliesPublic(families=[GeneratorFamilyPublic(**f.describe()) for f in FAMILIES.values()])
