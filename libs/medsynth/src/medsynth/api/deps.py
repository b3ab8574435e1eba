"""Dependencies for routes; everything is built in the app's lifespan and read from ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medsynth.auth.guard import Guard
from medsynth.auth.policy import sees_training_data
from medsynth.auth.principal import Principal
from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.jobs.service import JobService
from medsynth.store.projects import project_store
from medsynth.store import ObjectStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_project(request: Request) -> str:
    """The project the request acts on, resolved by the guard (:func:`medsynth.auth.guard.authorize`)."""
    return request.state.project


def get_store(request: Request) -> ObjectStore:
    """The request's project's part of the store: another project's keys cannot be named through it."""
    return project_store(request.app.state.store, get_project(request))


def get_bus(request: Request) -> Bus:
    return request.app.state.bus


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs_of(get_project(request))


def get_guard(request: Request) -> Guard:
    return request.app.state.guard


def get_principal(request: Request) -> Principal:
    return request.state.principal


def get_sees_training_data(request: Request) -> bool:
    """Whether the caller may see training images, closest pairs and training patient ids in the
    request's project (:func:`medsynth.auth.policy.sees_training_data`); when not, routes answer with
    :func:`medsynth.metrics.report.without_training_data` of what they would show."""
    return sees_training_data(get_principal(request).roles_in(get_project(request)))


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BusDep = Annotated[Bus, Depends(get_bus)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
ProjectDep = Annotated[str, Depends(get_project)]
GuardDep = Annotated[Guard, Depends(get_guard)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
SeesTrainingDataDep = Annotated[bool, Depends(get_sees_training_data)]
