"""Reader studies (visual Turing test): researchers make one from a cohort and read its results;
readers, with the token of their link, see one image at a time and answer real or synthetic."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import HTMLResponse, Response

from pydantic import BaseModel, Field

from medsynth.api.deps import JobsDep, ProjectDep, StoreDep
from medsynth.api.schemas import binary
from medsynth.api.reader_page import reader_page
from medsynth.studies.reader import (
    Reader,
    ReaderAnswer,
    ReaderStudyCreate,
    answer,
    create_reader_study,
    item_png,
    next_item,
    reader_of,
    reader_results,
)
from medsynth.store.projects import project_store

router = APIRouter(prefix="/v1/reader-studies", tags=["reader studies"])


class ReaderLink(BaseModel):
    reader: str
    token: str = Field(description="The reader's token, shown this once.")
    page: str = Field(description="The reader's page: the link to hand them.")


class ReaderStudyCreated(BaseModel):
    reader_study_id: str
    cohort_id: str
    generator_id: str
    study_id: str | None
    real_source: str = Field(description="Where the real images come from (the view and split).")
    n_real: int
    n_synthetic: int
    rate_quality: bool
    created_at: str
    readers: list[ReaderLink]
    note: str


class ReaderStudyResults(BaseModel):
    reader_study_id: str
    cohort_id: str
    study_id: str | None
    real_source: str
    n_real: int
    n_synthetic: int
    readers: dict[str, dict[str, Any]] = Field(description="Per reader: answered, total, accuracy, sensitivity and specificity "
                                                           "with exact binomial 95% intervals.")
    pooled: dict[str, Any] = Field(description="The same over every reader's answers.")
    mean_quality: dict[str, float | None] = Field(description="Mean quality rating by truth (real, synthetic).")


class ReaderItem(BaseModel):
    """Where the reader stands, and the next image to read (none once done)."""

    reader: str
    answered: int
    total: int
    rate_quality: bool
    done: bool
    item: str | None = None
    image: str | None = Field(None, description="The item's image (with the reader's token).")


def _reader(request: Request, reader_study_id: str) -> tuple[Reader, Any]:
    """The reader of the token (``X-Reader-Token``, or ``?token=`` for the page and its images) and their
    project's store; a dependency, so that a bad token is refused before the body is read."""
    token = request.headers.get("x-reader-token") or request.query_params.get("token")
    root = request.app.state.store
    reader = reader_of(root, token, reader_study_id)
    return reader, project_store(root, reader.project)


ReaderDep = Annotated[tuple[Reader, Any], Depends(_reader)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ReaderStudyCreated)
def create(body: ReaderStudyCreate, request: Request, project: ProjectDep, jobs: JobsDep) -> dict[str, Any]:
    """Pick the images, write them under random names, and make a token per reader (shown once)."""
    return create_reader_study(body, request.app.state.store, project, jobs.records)


@router.get("/{reader_study_id}", response_model=ReaderStudyResults)
def results(reader_study_id: str, store: StoreDep) -> dict[str, Any]:
    """Per reader and pooled: accuracy, sensitivity, specificity with exact 95% intervals; progress."""
    return reader_results(store, reader_study_id)


@router.get("/{reader_study_id}/read", response_class=HTMLResponse)
def read(reader_study_id: str, who: ReaderDep) -> HTMLResponse:
    """The reader's page (the link with ``?token=``): one image at a time, real or synthetic."""
    reader, store = who
    return HTMLResponse(reader_page(reader_study_id, next_item(store, reader)), headers={"Cache-Control": "no-store",
                                                                                        "Referrer-Policy": "no-referrer"})


@router.get("/{reader_study_id}/next", response_model=ReaderItem, response_model_exclude_unset=True)
def next_for_reader(reader_study_id: str, who: ReaderDep) -> dict[str, Any]:
    reader, store = who
    return next_item(store, reader)


@router.get("/{reader_study_id}/items/{item}.png", response_class=Response, responses=binary("image/png", "The item's image."))
def item(reader_study_id: str, item: str, who: ReaderDep) -> Response:
    reader, store = who
    return Response(item_png(store, reader, item), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{reader_study_id}/answers", status_code=status.HTTP_201_CREATED, response_model=ReaderItem,
             response_model_exclude_unset=True)
def give_answer(reader_study_id: str, body: ReaderAnswer, who: ReaderDep) -> dict[str, Any]:
    """409 for an item already answered; the answer: the reader's next item."""
    reader, store = who
    return answer(store, reader, body)
