"""Segmentation runs: train on real, synthetic or mixed data; test on held-out real patients."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.commands.requests import SegmentationCreate
from medsynth.api.schemas import JobPublic, SegmentationPublic, job_with_result
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.commands.build import segmentation_command
from medsynth.bus.messages import JobKind
from medsynth.jobs.lookup import of_kind

router = APIRouter(prefix="/v1/segmentations", tags=["segmentation runs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=ACCEPTED)
def create_segmentation(body: SegmentationCreate, store: StoreDep, jobs: JobsDep, submit: SubmissionDep) -> JobPublic:
    return submit.job(jobs, JobKind.train_segmenter, lambda: segmentation_command(body, store, jobs.records), "/v1/segmentations/")


@router.get("/{run_id}", response_model=SegmentationPublic, response_model_exclude_unset=True)
def get_segmentation(run_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    return job_with_result(of_kind(jobs.records, run_id, JobKind.train_segmenter), "metrics", "metrics", store.get_json)
