"""Evaluations: how faithful, useful and safe a cohort is; the report as HTML and JSON.

A caller who may not see training images (:func:`medsynth.auth.policy.sees_training_data`) gets both
without them: no real samples, closest pairs or training patient ids."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse

from medsynth.api.deps import JobsDep, SeesTrainingDataDep, StoreDep
from medsynth.commands.requests import EvaluationCreate
from medsynth.api.schemas import EvaluationPublic, JobPublic, job_with_result
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.commands.build import evaluation_command
from medsynth.jobs.lookup import finished, of_kind
from medsynth.jobs.records import JobRecords
from medsynth.bus.messages import JobKind
from medsynth.metrics.report import curve_series, render_html, without_training_data
from medsynth.store import ObjectStore

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=ACCEPTED)
def create_evaluation(body: EvaluationCreate, store: StoreDep, jobs: JobsDep, submit: SubmissionDep) -> JobPublic:
    return submit.job(jobs, JobKind.evaluate, lambda: evaluation_command(body, store, jobs.records), "/v1/evaluations/")


@router.get("/{evaluation_id}", response_model=EvaluationPublic, response_model_exclude_unset=True)
def get_evaluation(evaluation_id: str, store: StoreDep, jobs: JobsDep, training_data: SeesTrainingDataDep) -> dict[str, Any]:
    out = job_with_result(of_kind(jobs.records, evaluation_id, JobKind.evaluate), "report", "report_json", store.get_json)
    if not training_data and "report" in out:
        out["report"] = without_training_data(out["report"])
    return out


@router.get("/{evaluation_id}/report", response_class=HTMLResponse)
def get_report(evaluation_id: str, store: StoreDep, jobs: JobsDep, training_data: SeesTrainingDataDep) -> HTMLResponse:
    record = finished(jobs.records, evaluation_id, JobKind.evaluate)
    if training_data:
        return HTMLResponse(store.get_bytes(record.result_keys["report_html"]).decode())
    return HTMLResponse(_page_without_training_data(store.get_json(record.result_keys["report_json"]), store, jobs.records))


def _page_without_training_data(results: dict[str, Any], store: ObjectStore, records: JobRecords) -> str:
    """The report page rendered anew from its JSON, its synthetic samples' figure and its generator's curves."""
    results = without_training_data(results)
    figures = {name: store.get_bytes(key) for name, key in (results.get("figures") or {}).items()}
    generator = finished(records, results["generator_id"], JobKind.train_generator)
    curves = curve_series(store.get_json(generator.result_keys["curves"])) if "curves" in generator.result_keys else {}
    return render_html(results, figures, curves)
