"""Request and response schemas, per resource: ``XCreate`` (input), ``XPublic``, ``XsPublic``."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from collections.abc import Callable
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


def job_with_result(record: JobRecord, field: str, result_key: str, load: Callable[[str], Any]) -> dict[str, Any]:
    """``{"job": ...}``, plus ``field``: the job's result ``result_key``, loaded, once it succeeded."""
    out: dict[str, Any] = {"job": JobPublic.of(record).model_dump(mode="json")}
    if record.state.value == "succeeded":
        out[field] = load(record.result_keys[result_key])
    return out


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


class GanLossName(str, Enum):
    bce = "bce"
    lsgan = "lsgan"
    hinge = "hinge"


class GeneratorCreate(BaseModel):
    """Train a joint image + mask GAN on a prepared view's training split."""

    dataset: str
    view_id: str
    loss: GanLossName = GanLossName.hinge
    steps: int = Field(1500, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=2, le=1024)
    base_channels: int = Field(32, ge=4, le=512)
    latent_dim: int = Field(128, ge=8, le=1024)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    diff_augment: bool = False
    checkpoint_every: int = Field(250, ge=1)
    seed: int = Field(0, ge=0)


class OutputFormat(str, Enum):
    nifti = "nifti"
    png = "png"


class CohortCreate(BaseModel):
    generator_id: str
    count: int = Field(ge=1, le=100_000, description="Number of image + mask pairs.")
    seed: int = Field(0, ge=0)
    formats: list[OutputFormat] = Field(default_factory=lambda: [OutputFormat.nifti, OutputFormat.png])
    batch_size: int = Field(64, ge=1, le=4096)


class SegmentationSource(str, Enum):
    real = "real"
    synthetic = "synthetic"
    mixed = "mixed"


class SegmentationCreate(BaseModel):
    """Train a 2D segmenter and test it on the view's held-out real patients."""

    dataset: str
    view_id: str
    source: SegmentationSource = SegmentationSource.real
    cohort_id: str | None = Field(None, description="Required for synthetic and mixed training.")
    synthetic_ratio: float = Field(0.5, ge=0, le=1, description="Mixed: share of each batch drawn from the cohort.")
    augment: bool = False
    model: str = Field("unet", pattern="^(unet|swin-unetr)$")
    steps: int = Field(600, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    seed: int = Field(0, ge=0)


class EvaluationCreate(BaseModel):
    """Score a cohort against the real data its generator learned from."""

    cohort_id: str
    segmentation_run_ids: list[str] = Field(default_factory=list, description="Runs to put in the utility table.")
    max_samples: int = Field(2000, ge=2, le=50_000)
