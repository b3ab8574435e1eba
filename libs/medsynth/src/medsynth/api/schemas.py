"""Response schemas (``XPublic``, ``XsPublic``) and the administration's request bodies; the job
kinds' request bodies (``XCreate``) are :mod:`medsynth.commands.requests`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medsynth.api.pagination import Page
from medsynth.auth.audit import AuditRecord
from medsynth.auth.keys import ApiKey
from medsynth.auth.principal import Role
from medsynth.commands.requests import Name
from medsynth.datasets.manifest import DicomSource
from medsynth.generators.entry import GeneratorEntry
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


class GeneratorPublic(BaseModel):
    job: JobPublic = Field(description="The training job.")
    generator: GeneratorEntry | None = Field(None, description="Once the job succeeded: the registry entry.")


class CohortPublic(BaseModel):
    job: JobPublic = Field(description="The sampling job.")
    manifest: dict[str, Any] | None = Field(
        None, description="Once the job succeeded: the cohort manifest (family, mode, geometry, mask sources, noise rule, "
                          "samples with their keys and digests; release: the memorization gate's audit).")


class SegmentationPublic(BaseModel):
    job: JobPublic = Field(description="The training job.")
    metrics: dict[str, Any] | None = Field(
        None, description="Once the job succeeded: metrics.json (3D Dice and HD95 per case and class with bootstrap CIs, "
                          "hd95_unit, the validation curve, the best step, stopping).")


class EvaluationPublic(BaseModel):
    job: JobPublic = Field(description="The evaluation job.")
    report: dict[str, Any] | None = Field(
        None, description="Once the job succeeded: report.json (fidelity, diversity, utility, relative_dice, memorization, "
                          "segmentation_curves).")


#: The OpenAPI entry of a route answering a file (``binary("image/png")``): its media type, a binary schema.
def binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


class JobsPublic(Page):
    jobs: list[JobPublic]
    count: int = Field(description="Jobs on this page.")


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


class DatasetsPublic(Page):
    datasets: list[DatasetPublic]


class VersionsPublic(Page):
    versions: list[int] = Field(description="The dataset's versions, oldest first.")


class GeneratorFamilyPublic(BaseModel):
    family: str
    title: str
    description: str
    image_sizes: list[int]
    mask_sources: list[str]
    losses: list[str]
    options: dict[str, Any]


class GeneratorFamiliesPublic(Page):
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


class ProjectsPublic(Page):
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


class KeysPublic(Page):
    keys: list[KeyPublic]


class ProjectCreated(BaseModel):
    project: ProjectPublic
    admin_key: KeyCreated = Field(description="A first admin key of the new project.")


class AuditPage(Page):
    records: list[AuditRecord]
    count: int
    next_seq: int = Field(description="Pass as since_seq to read on from here (or next_cursor as cursor).")
