"""A study's record: its nodes' states and its own (``studies/<id>/study.json``), read by the runner that
advances it, the results that summarise it and the routes that show it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow

NodeStateName = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled", "blocked"]
StudyStateName = Literal["running", "succeeded", "partial", "failed"]
ENDED = ("succeeded", "failed", "cancelled", "blocked")


class NodeState(BaseModel):
    kind: str
    key: str
    labels: dict[str, Any]
    state: NodeStateName = "waiting"
    job_id: str | None = None
    reused: bool = False
    progress: float = 0.0
    error: str | None = None


class StudyRecord(BaseModel):
    study_id: str
    name: str | None
    spec: dict[str, Any]
    state: StudyStateName = "running"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    nodes: dict[str, NodeState]
    results_keys: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
