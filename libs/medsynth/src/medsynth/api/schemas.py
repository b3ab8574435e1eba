"""Response schemas (``XPublic``, ``XsPublic``) and the administration's request bodies; the job
kinds' request bodies (``XCreate``) are :mod:`medsynth.commands.requests`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medsynth.auth.audit import AuditRecord
from medsynth.auth.keys import ApiKey
from medsynth.auth.principal import Role
from medsynth.commands.requests import Name
from medsynth.datasets.manifest import DicomSource
from medsynth.jobs.records import JobRecord
from medsynth.store.projects import DicomOptions


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
    label_names: dict[int, str] = {}
    source_format: str = "nifti"
    dicom: DicomSource | None = None


class DatasetPublic(BaseModel):
    dataset: str
    version: int
    created_at: datetime
    scans: int
    patients: int
    labelled_scans: int


class DatasetsPublic(BaseModel):
    datasets: list[DatasetPublic]


class GeneratorFamilyPublic(BaseModel):
    family: str
    title: str
    description: str
    image_sizes: list[int]
    mask_sources: list[str]
    losses: list[str]
    options: dict[str, Any]


class GeneratorFamiliesPublic(BaseModel):
    families: list[GeneratorFamilyPublic]


# --- administration: projects, keys, audit -----------------------------------------------------

class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str = Field("", max_length=500)
    dicom: DicomOptions = Field(default_factory=DicomOptions, description="How the project's DICOM is de-identified.")


class ProjectPublic(BaseModel):
    name: str
    description: str
    created_at: datetime
    dicom: DicomOptions
    roles: list[Role] = Field(description="The caller's roles in the project.")


class ProjectsPublic(BaseModel):
    projects: list[ProjectPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str = Field("", max_length=200, description="What holds the key, e.g. 'PACS gateway, radiology'.")
    expires_in_days: float | None = Field(90, gt=0, le=3650, description="null: the key does not expire.")


class KeyPublic(BaseModel):
    key_id: str
    project: str
    role: Role
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    state: str = Field(description="active, expired or revoked.")

    @classmethod
    def of(cls, key: ApiKey) -> KeyPublic:
        return cls(**key.model_dump(include=set(cls.model_fields) - {"state"}), state=key.state())


class KeyCreated(KeyPublic):
    token: str = Field(description="The key itself, shown this once: send it as Authorization: Bearer <token>.")


class KeysPublic(BaseModel):
    keys: list[KeyPublic]


class ProjectCreated(BaseModel):
    project: ProjectPublic
    admin_key: KeyCreated = Field(description="A first admin key of the new project.")


class AuditPage(BaseModel):
    records: list[AuditRecord]
    count: int
    next_seq: int = Field(description="Pass as since_seq to read on from here.")
