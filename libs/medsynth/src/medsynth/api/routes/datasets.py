"""Datasets: manifests and their versions, and preparing training views (a prepare-dataset job)."""

from __future__ import annotations

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.commands.requests import PrepareDatasetCreate
from medsynth.commands.build import prepare_dataset_command
from medsynth.api.pagination import PageDep
from medsynth.api.schemas import DatasetPublic, DatasetsPublic, JobPublic, VersionsPublic
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.datasets.manifest import DatasetManifest, list_datasets, list_versions, load_manifest
from medsynth.datasets.views import ViewSummary, load_view
from medsynth.bus.messages import JobKind
from medsynth.core.errors import NotFound

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _public(m: DatasetManifest) -> DatasetPublic:
    return DatasetPublic(
        dataset=m.dataset,
        version=m.version,
        created_at=m.created_at,
        scans=len(m.scans),
        patients=len(m.patients),
        labelled_scans=sum(s.label_key is not None for s in m.scans),
    )


@router.get("", response_model=DatasetsPublic)
def list_all(store: StoreDep, page: PageDep) -> DatasetsPublic:
    """The project's datasets by name, each at its latest version, a page at a time."""
    found, cursor = page.take((name, _public(load_manifest(store, name))) for name in list_datasets(store)
                              if page.after is None or name > page.after)
    return DatasetsPublic(datasets=found, next_cursor=cursor)


@router.get("/{dataset}", response_model=DatasetPublic)
def get_dataset(dataset: str, store: StoreDep, version: int | None = None) -> DatasetPublic:
    return _public(load_manifest(store, dataset, version))


@router.get("/{dataset}/versions", response_model=VersionsPublic)
def get_versions(dataset: str, store: StoreDep, page: PageDep) -> VersionsPublic:
    """404 for a dataset with no scans, as ``GET /v1/datasets/{dataset}`` answers: it does not exist yet."""
    versions = list_versions(store, dataset)
    if not versions:
        raise NotFound(f"dataset {dataset!r} has no scans yet")
    found, cursor = page.take((f"{v:012d}", v) for v in versions)
    return VersionsPublic(versions=found, next_cursor=cursor)


@router.get("/{dataset}/manifest", response_model=DatasetManifest)
def get_manifest(dataset: str, store: StoreDep, version: int | None = None) -> DatasetManifest:
    """The full manifest: every scan with its keys, shape, spacing and labels."""
    return load_manifest(store, dataset, version)


@router.post("/{dataset}/views", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=ACCEPTED)
def prepare_views(dataset: str, body: PrepareDatasetCreate, store: StoreDep, jobs: JobsDep, submit: SubmissionDep) -> JobPublic:
    """Start a prepare-dataset job (``Location``: the job); its result key ``view`` points at the view's
    ``view.json``. 404 for an unknown dataset or version."""
    return submit.job(jobs, JobKind.prepare_dataset, lambda: prepare_dataset_command(dataset, body, store), "/v1/jobs/")


@router.get("/{dataset}/views/{view_id}", response_model=ViewSummary, response_model_exclude_unset=True)
def get_view(dataset: str, view_id: str, store: StoreDep) -> ViewSummary:
    """A view's view.json: its spec, splits (patients, counts, shards) and what was left unlabeled or out."""
    return load_view(store, dataset, view_id)
