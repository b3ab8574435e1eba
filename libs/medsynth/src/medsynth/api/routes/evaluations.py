"""Evaluations: how faithful, useful and safe a cohort is; the report as HTML and JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import EvaluationCreate, JobPublic, job_with_result
from medsynth.api.submissions import evaluation_command
from medsynth.jobs.lookup import finished
from medsynth.bus.messages import JobKind

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_evaluation(body: EvaluationCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    return JobPublic.of(jobs.submit(JobKind.evaluate, evaluation_command(body, store, jobs.records)))


@router.get("/{evaluation_id}")
def get_evaluation(evaluation_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    return job_with_result(jobs.records.get(evaluation_id), "report", "report_json", store.get_json)


@router.get("/{evaluation_id}/report", response_class=HTMLResponse)
def get_report(evaluation_id: str, store: StoreDep, jobs: JobsDep) -> HTMLResponse:
    record = finished(jobs.records, evaluation_id, JobKind.evaluate)
    return HTMLResponse(store.get_bytes(record.result_keys["report_html"]).decode())
