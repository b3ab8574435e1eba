"""Studies: a grid of generator families × seeds × segmenters × arms as one request; progress per
arm while it runs; results (JSON, CSV) and the report once it ends."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from medsynth.api.deps import JobsDep, SeesTrainingDataDep, SettingsDep, StoreDep
from medsynth.api.pagination import Page, PageDep
from medsynth.studies.record import StudyRecord
from medsynth.studies.report import render_study_report
from medsynth.studies.results import load_figures
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.studies.runner import create_study, load_study, new_study_id, study_ids
from medsynth.studies.spec import StudyCreate
from medsynth.studies.summary import ended_study, progress, results_with_readers

router = APIRouter(prefix="/v1/studies", tags=["studies"])


class StudyPublic(BaseModel):
    study_id: str
    name: str | None
    state: str
    progress: float
    jobs: dict[str, int]
    arms: list[dict[str, Any]]
    stages: dict[str, dict[str, int]]
    nodes: list[dict[str, Any]]
    created_at: str
    updated_at: str
    finished_at: str | None
    error: str | None
    results: dict[str, str]
    spec: dict[str, Any]

    @classmethod
    def of(cls, record: StudyRecord) -> StudyPublic:
        shown = progress(record)
        base = f"/v1/studies/{record.study_id}"
        results = {"json": f"{base}/results", "csv": f"{base}/results.csv", "html": f"{base}/report"} if record.results_keys else {}
        return cls(study_id=record.study_id, name=record.name, state=record.state, progress=shown.progress, jobs=shown.jobs,
                   arms=shown.arms, stages=shown.stages,
                   nodes=[{"node": node_id, "kind": n.kind, "state": n.state, "job_id": n.job_id, "reused": n.reused,
                           "progress": n.progress, "error": n.error} for node_id, n in record.nodes.items()],
                   created_at=record.created_at.isoformat(), updated_at=record.updated_at.isoformat(),
                   finished_at=record.finished_at.isoformat() if record.finished_at else None, error=record.error,
                   results=results, spec=record.spec)


class StudyResultsPublic(BaseModel):
    """results.json of an ended study, with its reader studies as they stand."""

    model_config = ConfigDict(extra="allow")
    study_id: str
    name: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="The study's request.")
    computed_at: str | None = None
    test_patients: list[str] = Field(default_factory=list)
    arms: list[dict[str, Any]] = Field(default_factory=list, description="Per arm: Dice and HD95 with two-level bootstrap "
                                                                          "intervals, relative Dice, per seed and per patient.")
    failed_arms: list[dict[str, Any]] = Field(default_factory=list)
    comparisons: Any = Field(None, description="Each arm against real data only: Wilcoxon per seed, the pooled DBM test, Holm.")
    friedman: dict[str, Any] | None = Field(None, description="Across families: Friedman and the Nemenyi critical difference.")
    generators: list[dict[str, Any]] = Field(default_factory=list, description="Per family and seed: FID/KID, diversity, memorization.")
    fid_vs_dice: dict[str, Any] | None = Field(None, description="Spearman's rank correlation of FID and synthetic-only Dice.")
    fid_extractor: dict[str, Any] | None = Field(None, description="Which encoder(s) measured the FIDs, and whether they compare.")
    reader_studies: list[dict[str, Any]] = Field(default_factory=list, description="The visual Turing tests of its cohorts.")


class StudiesPublic(Page):
    studies: list[StudyPublic]
    count: int = Field(description="Studies on this page.")


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=StudyPublic, responses=ACCEPTED)
def start_study(body: StudyCreate, store: StoreDep, jobs: JobsDep, settings: SettingsDep, submit: SubmissionDep) -> StudyPublic:
    """422 for a grid past MEDSYNTH_STUDY_MAX_JOBS jobs, fewer than two arms, or a family the view cannot train."""
    record = submit.once(new_study_id, lambda study_id: create_study(body, store, jobs, max_jobs=settings.study_max_jobs, study_id=study_id),
                         lambda study_id: load_study(store, study_id), lambda study: f"/v1/studies/{study.study_id}")
    return StudyPublic.of(record)


@router.get("", response_model=StudiesPublic)
def get_studies(store: StoreDep, page: PageDep) -> StudiesPublic:
    """Studies in the order they were made (those of before, by id), a page at a time."""
    found, cursor = page.take((study_id, load_study(store, study_id)) for study_id in study_ids(store)
                              if page.after is None or study_id > page.after)
    studies = [StudyPublic.of(r) for r in found]
    return StudiesPublic(studies=studies, count=len(studies), next_cursor=cursor)


@router.get("/{study_id}", response_model=StudyPublic)
def get_study(study_id: str, store: StoreDep) -> StudyPublic:
    """State, progress per arm and per stage (generators, cohorts, segmentations, evaluations)."""
    return StudyPublic.of(load_study(store, study_id))


@router.get("/{study_id}/results", response_model=StudyResultsPublic, response_model_exclude_unset=True)
def get_study_results(study_id: str, store: StoreDep, training_data: SeesTrainingDataDep) -> dict[str, Any]:
    """Every number: per arm Dice/HD95 with intervals and relative Dice, paired tests, Friedman/Nemenyi, FID vs Dice,
    and the visual Turing tests (reader studies) of its cohorts."""
    return results_with_readers(store, ended_study(store, study_id), training_data)


@router.get("/{study_id}/results.csv", response_class=Response,
            responses={200: {"description": "One row per arm and seed.", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_study_csv(study_id: str, store: StoreDep) -> Response:
    return Response(store.get_bytes(ended_study(store, study_id).results_keys["csv"]), media_type="text/csv")


@router.get("/{study_id}/report", response_class=HTMLResponse)
def get_study_report(study_id: str, store: StoreDep, training_data: SeesTrainingDataDep) -> HTMLResponse:
    """The report; with reader studies it is rendered anew, so their answers so far are in it, and so it is
    for a caller who may not see training data (without the closest pairs and training patient ids)."""
    record = ended_study(store, study_id)
    results = results_with_readers(store, record, training_data)
    if training_data and not results["reader_studies"]:
        return HTMLResponse(store.get_bytes(record.results_keys["html"]).decode())
    return HTMLResponse(render_study_report(results, load_figures(results, store)))
