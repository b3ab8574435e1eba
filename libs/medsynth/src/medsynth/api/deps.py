"""Dependencies for routes; everything is built in the app's lifespan and read from ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.jobs.service import JobService
from medsynth.store import ObjectStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


def get_bus(request: Request) -> Bus:
    return request.app.state.bus


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BusDep = Annotated[Bus, Depends(get_bus)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
