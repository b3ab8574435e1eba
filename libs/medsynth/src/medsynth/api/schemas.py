"""Request and response schemas, per resource: ``XCreate`` (input), ``XPublic``, ``XsPublic``."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from medsynth.jobs.records import JobRecord


class ViewMode(str, Enum):
    slices2d = "slices2d"
    patches3d = "patches3d"


class PrepareDatasetCreate(BaseModel):
    version: int = Field(0, ge=0, description="Dataset version; 0 = the newest at submission time.")
    mode: ViewMode = ViewMode.slices2d
    size: int = Field(64, ge=8, le=1024, description="Edge length of each slice or patch, in voxels.")
    axis: int = Field(2, ge=0, le=2, description="Slicing axis in RAS orientation (2 = axial).")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    keep_empty: bool = Field(False, description="Keep slices/patches without any foreground label.")


class JobPublic(BaseModel):
    job_id: str
    kind: str
    state: str
    spec: dict[str, Any]
    attempts: int
    progress: float
    message: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_keys: dict[str, str]
    error: str | None
    dead_lettered: bool

    @classmethod
    def of(cls, record: JobRecord) -> JobPublic:
        return cls.model_validate(record.model_dump(mode="json"))


class JobsPublic(BaseModel):
    jobs: list[JobPublic]
    count: int


class ScanPublic(BaseModel):
    dataset: str
    dataset_version: int
    scan_id: str
    patient_id: str
    image_key: str
    label_key: str | None
    original_image_key: str
    shape: list[int]
    spacing: list[float]
    orientation: str
    label_values: list[int]


class DatasetPublic(BaseModel):
    dataset: str
    version: int
    created_at: datetime
    scans: int
    patients: int
    labelled_scans: int


class DatasetsPublic(BaseModel):
    datasets: list[DatasetPublic]
