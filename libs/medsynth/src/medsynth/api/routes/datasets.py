"""Datasets: manifests and their versions, and preparing training views (a prepare-dataset job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.commands.requests import PrepareDatasetCreate
from medsynth.commands.build import prepare_dataset_command
from medsynth.api.schemas import DatasetPublic, DatasetsPublic, JobPublic
from medsynth.datasets.manifest import DatasetManifest, list_datasets, list_versions, load_manifest
from medsynth.datasets.views import load_view
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
def list_all(store: StoreDep) -> DatasetsPublic:
    return DatasetsPublic(datasets=[_public(load_manifest(store, name)) for name in list_datasets(store)])


@router.get("/{dataset}", response_model=DatasetPublic)
def get_dataset(dataset: str, store: StoreDep, version: int | None = None) -> DatasetPublic:
    return _public(load_manifest(store, dataset, version))


@router.get("/{dataset}/versions")
def get_versions(dataset: str, store: StoreDep) -> dict[str, list[int]]:
    """404 for a dataset with no scans, as ``GET /v1/datasets/{dataset}`` answers: it does not exist yet."""
    versions = list_versions(store, dataset)
    if not versions:
        raise NotFound(f"dataset {dataset!r} has no scans yet")
    return {"versions": versions}


@router.get("/{dataset}/manifest")
def get_manifest(dataset: str, store: StoreDep, version: int | None = None) -> dict[str, Any]:
    """The full manifest: every scan with its keys, shape, spacing and labels."""
    return load_manifest(store, dataset, version).model_dump(mode="json")


@router.post("/{dataset}/views", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def prepare_views(dataset: str, body: PrepareDatasetCreate, store: StoreDep, jobs: JobsDep) -> JobPublic:
    """Start a prepare-dataset job; its result key ``view`` points at the view's ``view.json``. 404 for an
    unknown dataset or version."""
    return JobPublic.of(jobs.submit(JobKind.prepare_dataset, prepare_dataset_command(dataset, body, store)))


@router.get("/{dataset}/views/{view_id}")
def get_view(dataset: str, view_id: str, store: StoreDep) -> dict[str, Any]:
    return load_view(store, dataset, view_id).model_dump(mode="json")
