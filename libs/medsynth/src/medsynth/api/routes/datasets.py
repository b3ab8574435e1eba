"""Datasets: manifests and their versions, and preparing training views (a prepare-dataset job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from medsynth.api.deps import JobsDep, StoreDep
from medsynth.api.schemas import DatasetPublic, DatasetsPublic, JobPublic, PrepareDatasetCreate
from medsynth.datasets.manifest import DatasetManifest, list_datasets, list_versions, load_manifest
from medsynth.datasets.views import view_key
from medsynth.bus.messages import JobKind
from medsynth.core.errors import NotFound
from medsynth.v1 import jobs_pb2

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
    """Start a prepare-dataset job; its result key ``view`` points at the view's ``view.json``."""
    manifest = load_manifest(store, dataset, body.version or None)  # 404 now rather than a failed job later
    spec = jobs_pb2.PrepareDataset(
        dataset=dataset,
        version=manifest.version,
        mode=jobs_pb2.PATCHES_3D if body.mode == "patches3d" else jobs_pb2.SLICES_2D,
        size=body.size,
        axis=body.axis,
        val_fraction=body.val_fraction,
        test_fraction=body.test_fraction,
        seed=body.seed,
        keep_empty=body.keep_empty,
    )
    return JobPublic.of(jobs.submit(JobKind.prepare_dataset, spec))


@router.get("/{dataset}/views/{view_id}")
def get_view(dataset: str, view_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_json(view_key(dataset, view_id))
