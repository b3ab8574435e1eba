"""Projects: every dataset, scan, view, generator, cohort, run, evaluation and job belongs to one.

A project's resources are kept in its own part of the store (:func:`project_store`); the registry of
projects is ``auth/projects/<name>.json`` at the store's root. The ``default`` project always exists
and holds what was written before projects did.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, InvalidInput, NotFound
from medsynth.core.names import check_name
from medsynth.store.base import ObjectStore
from medsynth.store.scoped import ScopedStore

DEFAULT_PROJECT = "default"
REGISTRY = "auth/projects/"


#: What ingest does with a time series (several volumes of one series: fMRI, DWI, Siemens mosaics over
#: time; or a 4D NIfTI): refuse it, keep its first time point, or make one scan per time point.
TimeSeries = Literal["refuse", "first", "split"]


class DicomOptions(BaseModel):
    """How the project's DICOM is de-identified on the way in (DICOM PS3.15 Annex E), and what becomes of
    time series (DICOM series and 4D NIfTI alike)."""

    model_config = ConfigDict(extra="forbid")
    retain_dates: bool = Field(False, description="Retain Longitudinal Temporal Information with Modified Dates: "
                                                   "dates shifted by a fixed number of days per patient instead of removed.")
    allow_burned_in: bool = Field(False, description="Ingest images that may show identifying text in their pixels "
                                                      "(BurnedInAnnotation YES, secondary captures, ultrasound) instead of quarantining them.")
    time_series: TimeSeries = Field("refuse", description="A time series (a DICOM series with several volumes at one "
                                    "position — fMRI, DWI, Siemens mosaics over time — or a 4D NIfTI, whose fourth axis "
                                    "is time): 'refuse' it with the reason, keep its 'first' time point as the scan, or "
                                    "'split' it into one scan per time point (named <series>-t000, -t001, ...). A 4D "
                                    "image whose fourth axis holds channels (a Decathlon multi-modal image) is not a "
                                    "time series and is refused whatever this says.")


class Project(BaseModel):
    name: str
    description: str = ""
    dicom: DicomOptions = Field(default_factory=DicomOptions)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


def project_prefix(name: str) -> str:
    check_name(name, "project name")
    return "" if name == DEFAULT_PROJECT else f"projects/{name}/"


def project_store(root: ObjectStore, name: str) -> ScopedStore:
    """The part of ``root`` that holds project ``name``'s resources."""
    return ScopedStore(root, project_prefix(name))


class Projects:
    """The registry of projects in the root store."""

    def __init__(self, root: ObjectStore) -> None:
        self.root = root

    def create(self, name: str, *, description: str = "", created_by: str = "", dicom: DicomOptions | None = None) -> Project:
        check_name(name, "project name")
        project = Project(name=name, description=description, created_by=created_by, dicom=dicom or DicomOptions())
        if name == DEFAULT_PROJECT or not self.root.put_if_absent(
            f"{REGISTRY}{name}.json", project.model_dump_json(indent=2).encode(), content_type="application/json"
        ):
            raise Conflict(f"project {name!r} already exists")
        return project

    def get(self, name: str) -> Project:
        if name == DEFAULT_PROJECT:
            return Project(name=DEFAULT_PROJECT, description="Data written before projects existed.",
                           created_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
        check_name(name, "project name")
        try:
            return Project.model_validate(self.root.get_json(f"{REGISTRY}{name}.json"))
        except NotFound:
            raise NotFound(f"no project {name!r}") from None

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except (NotFound, InvalidInput):  # a malformed name names no project
            return False
        return True

    def names(self) -> list[str]:
        found = [key[len(REGISTRY):-len(".json")] for key in self.root.list(REGISTRY) if key.endswith(".json")]
        return [DEFAULT_PROJECT, *sorted(n for n in found if n != DEFAULT_PROJECT)]
