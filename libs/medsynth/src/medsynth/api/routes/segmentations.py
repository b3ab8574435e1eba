"""Segmentation runs: train on real, synthetic or mixed data; test on held-out real patients."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import JobPublic, SegmentationCreate, job_with_result
from medsynth.core.errors import InvalidInput
from medsynth.datasets.views import view_key
from medsynth.jobs.lookup import finished
from medsynth.bus.messages import JobKind
from medsynth.v1 import jobs_pb2

router = APIRouter(prefix="/v1/segmentations", tags=["segmentation runs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_segmentation(body: SegmentationCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    view = store.get_json(view_key(body.dataset, body.view_id))
    for split in ("val", "test"):
        if view["counts"][split] == 0:
            raise InvalidInput(f"view {body.view_id} has no {split} items; prepare it with a non-zero {split} fraction")
    if body.source != "real":
        if not body.cohort_id:
            raise InvalidInput(f"{body.source.value} training needs a cohort_id")
        finished(jobs.records, body.cohort_id, JobKind.sample_cohort)
    config = body.model_dump(include={"source", "synthetic_ratio", "augment", "model", "steps", "batch_size", "seed"}, mode="json")
    spec = jobs_pb2.TrainSegmenter(
        dataset=body.dataset,
        view_id=body.view_id,
        cohort_id=body.cohort_id or "",
        synthetic_ratio=body.synthetic_ratio,
        augment=body.augment,
        config_json=json.dumps(config),
    )
    return JobPublic.of(jobs.submit(JobKind.train_segmenter, spec))


@router.get("/{run_id}")
def get_segmentation(run_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    return job_with_result(jobs.records.get(run_id), "metrics", "metrics", store.get_json)
