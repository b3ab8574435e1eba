"""What is shown of a study: its progress per arm and per stage while it runs, and once every job has
ended its stored results with the reader studies made from its cohorts as they stand now."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from medsynth.core.errors import Conflict
from medsynth.metrics.report import without_training_data
from medsynth.store import ObjectStore
from medsynth.studies.reader import reader_studies_of
from medsynth.studies.record import ENDED, StudyRecord
from medsynth.studies.results import arm_id
from medsynth.studies.runner import load_study


@dataclass(frozen=True)
class Progress:
    progress: float  # 0..1 over every node: an ended node counts 1, a running one its job's progress
    jobs: dict[str, int]  # node state -> count
    stages: dict[str, dict[str, int]]  # job kind -> node state -> count
    arms: list[dict[str, Any]]  # per arm (segmentation runs): runs, count per state, and the arm's state


def progress(record: StudyRecord) -> Progress:
    nodes = record.nodes.values()
    jobs: dict[str, int] = defaultdict(int)
    stages: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    arms: dict[str, dict[str, Any]] = {}
    for n in nodes:
        jobs[n.state] += 1
        stages[n.kind][n.state] += 1
        if n.kind == "train-segmenter":
            arm = arms.setdefault(arm_id(n.labels), {"arm_id": arm_id(n.labels), "runs": 0, "succeeded": 0, "failed": 0,
                                                    "blocked": 0, "state": "waiting"})
            arm["runs"] += 1
            arm[n.state] = arm.get(n.state, 0) + 1
    for arm in arms.values():
        ended = arm["succeeded"] + arm["failed"] + arm.get("blocked", 0) + arm.get("cancelled", 0)
        arm["state"] = ("running" if ended < arm["runs"] else "succeeded" if arm["succeeded"] == arm["runs"]
                        else "partial" if arm["succeeded"] else "failed")
    done = sum(1.0 if n.state in ENDED else n.progress for n in nodes) / max(1, len(record.nodes))
    return Progress(progress=round(done, 4), jobs=dict(jobs), stages={k: dict(v) for k, v in stages.items()},
                    arms=sorted(arms.values(), key=lambda a: a["arm_id"]))


def ended_study(store: ObjectStore, study_id: str) -> StudyRecord:
    """The study, once its results are written; 409 while jobs are still running."""
    record = load_study(store, study_id)
    if not record.results_keys:
        raise Conflict(f"study {study_id} is {record.state}; its results come when every job has ended")
    return record


def results_with_readers(store: ObjectStore, record: StudyRecord, training_data: bool) -> dict[str, Any]:
    """The stored results, with the reader studies that name this study as they stand now; without
    closest pairs and training patient ids for a caller who may not see training data."""
    results = {**store.get_json(record.results_keys["json"]), "reader_studies": reader_studies_of(store, record.study_id)}
    return results if training_data else without_training_data(results)
