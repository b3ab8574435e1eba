"""Generators: train one on a prepared view (a train-generator job); a generator's id is its job's."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import GeneratorCreate, JobPublic, JobsPublic, job_with_result
from medsynth.core.errors import InvalidInput
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import view_key
from medsynth.jobs.records import JobState
from medsynth.messages import JobKind
from medsynth.v1 import jobs_pb2

router = APIRouter(prefix="/v1/generators", tags=["generators"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_generator(body: GeneratorCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    view = store.get_json(view_key(body.dataset, body.view_id))
    if view["counts"]["train"] == 0:
        raise InvalidInput(f"view {body.view_id} has no training items to learn from")
    if view["spec"]["mode"] != "slices2d":
        raise InvalidInput(f"the joint GAN trains on 2D slices; view {body.view_id} holds {view['spec']['mode']}")
    manifest = load_manifest(store, body.dataset, view["dataset_version"])
    labels = {v for s in manifest.scans for v in s.label_values}
    config = {
        "generator": {
            "image_size": view["spec"]["size"],
            "num_classes": max(2, max(labels, default=0) + 1),
            "latent_dim": body.latent_dim,
            "base_channels": body.base_channels,
        },
        **body.model_dump(include={"loss", "steps", "batch_size", "ema_decay", "diff_augment", "checkpoint_every", "seed"}, mode="json"),
    }
    spec = jobs_pb2.TrainGenerator(dataset=body.dataset, view_id=body.view_id, config_json=json.dumps(config))
    return JobPublic.of(jobs.submit(JobKind.train_generator, spec))


@router.get("", response_model=JobsPublic)
def list_generators(jobs: JobsDep, state: JobState | None = None) -> JobsPublic:
    records = sorted(
        (r for r in jobs.records.all() if r.kind is JobKind.train_generator and (state is None or r.state is state)),
        key=lambda r: r.created_at,
    )
    return JobsPublic(jobs=[JobPublic.of(r) for r in records], count=len(records))


@router.get("/{generator_id}")
def get_generator(generator_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    """The training job, and once it succeeded the registered generator (config, metrics, archive)."""
    return job_with_result(jobs.records.get(generator_id), "generator", "generator", store.get_json)
