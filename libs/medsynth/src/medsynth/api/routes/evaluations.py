"""Evaluations: how faithful, useful and safe a cohort is; the report as HTML and JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import EvaluationCreate, JobPublic, job_with_result
from medsynth.core.errors import InvalidInput
from medsynth.datasets.views import view_key
from medsynth.jobs.lookup import finished
from medsynth.bus.messages import JobKind
from medsynth.v1 import jobs_pb2

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_evaluation(body: EvaluationCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    cohort = finished(jobs.records, body.cohort_id, JobKind.sample_cohort)
    generator = finished(jobs.records, cohort.spec["generator_id"], JobKind.train_generator)
    dataset, view_id = generator.spec["dataset"], generator.spec["view_id"]
    if store.get_json(view_key(dataset, view_id))["counts"]["train"] == 0:
        raise InvalidInput(f"reference view {view_id} of dataset {dataset!r} is empty")
    for run in body.segmentation_run_ids:
        finished(jobs.records, run, JobKind.train_segmenter)
    spec = jobs_pb2.Evaluate(
        cohort_id=body.cohort_id,
        view_id=view_id,
        dataset=dataset,
        segmentation_run_ids=body.segmentation_run_ids,
        config_json=body.model_dump_json(include={"max_samples"}),
    )
    return JobPublic.of(jobs.submit(JobKind.evaluate, spec))


@router.get("/{evaluation_id}")
def get_evaluation(evaluation_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    return job_with_result(jobs.records.get(evaluation_id), "report", "report_json", store.get_json)


@router.get("/{evaluation_id}/report", response_class=HTMLResponse)
def get_report(evaluation_id: str, store: StoreDep, jobs: JobsDep) -> HTMLResponse:
    record = finished(jobs.records, evaluation_id, JobKind.evaluate)
    return HTMLResponse(store.get_bytes(record.result_keys["report_html"]).decode())
