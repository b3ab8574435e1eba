"""Running a study: its record in the store, and ``advance``, which moves it on from whatever state it
is in (called by the api's background loop, and once when the study is created).

``advance`` is idempotent and needs nothing but the store and the job service: for each node whose
inputs have finished it submits the node's job, unless an identical request already has a job that
did not fail (``studies/cache/<key>.json``, claimed create-if-absent so that two api processes never
both keep one); a node whose input failed is ``blocked`` and the rest go on. When every node has
ended, the study's results are computed and it ends ``succeeded`` (every node did), ``partial`` or
``failed`` (no arm beyond real data could be scored).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from medsynth.studies.plan import Node, check_size, expand, node_keys
from medsynth.studies.record import ENDED, NodeState, StudyRecord
from medsynth.studies.results import write_results
from medsynth.studies.spec import StudyCreate
from medsynth.commands.build import SUBMISSIONS
from medsynth.bus.messages import JobKind
from medsynth.bus.client import Bus, BusError
from medsynth.core.clock import utcnow
from medsynth.datasets.split import SPLITS
from medsynth.datasets.views import load_view
from medsynth.core.errors import Conflict, InvalidInput, MedsynthError, NotFound
from medsynth.core.names import sortable_suffix
from medsynth.jobs.records import JobState
from medsynth.jobs.service import JobDeferred, JobService
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)

def study_key(study_id: str) -> str:
    return f"studies/{study_id}/study.json"


def cache_key(key: str) -> str:
    return f"studies/cache/{key}.json"


def new_study_id() -> str:
    """``study-<time-ordered hex>``: studies list in the store in the order they were made."""
    return f"study-{sortable_suffix()}"


def create_study(spec: StudyCreate, store: ObjectStore, jobs: JobService, *, max_jobs: int, study_id: str | None = None) -> StudyRecord:
    """Check the grid (its size, the view, each family against the view), record the study (as
    ``study_id``, default a new id), start it."""
    nodes = expand(spec)
    check_size(nodes, max_jobs)
    view = load_view(store, spec.dataset, spec.view_id)
    if problem := view.unlabeled_problem(SPLITS, "a study (each arm's segmenter is trained, selected and tested against masks)"):
        raise InvalidInput(problem)
    if spec.arms.synthetic_patients:
        per_patient = view.counts["train"] / max(1, len(view.patients["train"]))
        largest = max(spec.arms.synthetic_patients)
        if round(largest * per_patient) > spec.cohort_size:
            raise InvalidInput(f"the arm +{largest} patients needs {round(largest * per_patient)} synthetic slices ({per_patient:.1f} "
                               f"per training patient of view {spec.view_id}); cohort_size is {spec.cohort_size}")
    for node in nodes.values():  # each family's generator request is checked now: a bad family is a 422, not a failed study
        if node.kind is JobKind.train_generator and node.labels["seed"] == spec.seeds[0]:  # other seeds differ only in seed
            body_type, command = SUBMISSIONS[node.kind]
            command(body_type(**node.body), store, jobs.records)
    keys = node_keys(nodes)
    record = StudyRecord(
        study_id=study_id or new_study_id(), name=spec.name, spec=spec.model_dump(mode="json"),
        nodes={n.id: NodeState(kind=n.kind.value, key=keys[n.id], labels=n.labels) for n in nodes.values()},
    )
    store.put_json(study_key(record.study_id), record.model_dump(mode="json"))
    return advance(record.study_id, store, jobs)


def load_study(store: ObjectStore, study_id: str) -> StudyRecord:
    try:
        return StudyRecord.model_validate(store.get_json(study_key(study_id)))
    except (NotFound, InvalidInput) as exc:
        raise NotFound(f"unknown study {study_id!r}") from exc


def study_ids(store: ObjectStore) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list("studies/") if k.endswith("/study.json")})


def list_studies(store: ObjectStore) -> list[StudyRecord]:
    return [load_study(store, i) for i in study_ids(store)]


_ADVANCING: dict[str, threading.Lock] = {}
_ADVANCING_GUARD = threading.Lock()


def advance(study_id: str, store: ObjectStore, jobs: JobService) -> StudyRecord:
    """Refresh every node from its job, submit those whose inputs are ready, and finish the study
    when nothing is left to run. Writes the record back when anything changed.

    One pass at a time per study in this process (the request that creates a study and the loop
    would otherwise both submit its first jobs); a pass that finds another running returns at once.
    Between api processes the content-key claim decides: the loser cancels the job it submitted.
    The record is read once the pass holds the lock, so that it sees what the previous pass wrote."""
    with _ADVANCING_GUARD:
        lock = _ADVANCING.setdefault(study_id, threading.Lock())
    if not lock.acquire(blocking=False):
        return load_study(store, study_id)
    try:
        return _advance(load_study(store, study_id), store, jobs)
    finally:
        lock.release()


def _advance(record: StudyRecord, store: ObjectStore, jobs: JobService) -> StudyRecord:
    if record.state != "running":
        return record
    before = record.model_dump_json()
    nodes = expand(StudyCreate.from_record(record.spec))  # a record from before early stopping keeps fixed steps
    for node_id, node in nodes.items():
        state = record.nodes[node_id]
        if state.job_id is not None:
            if state.state not in ENDED:  # an ended job does not change: no need to read it again
                _refresh(state, jobs)
            continue
        needed = [record.nodes[d] for d in node.needs()]
        stopped = [d for d, s in zip(node.needs(), needed) if s.state in ("failed", "cancelled", "blocked")]
        if stopped:
            state.state, state.error = "blocked", f"needs {stopped[0]}, which {record.nodes[stopped[0]].state}"
        elif all(s.state == "succeeded" for s in needed):
            _start(node, state, record, store, jobs)
    if all(s.state in ENDED for s in record.nodes.values()):
        _finish(record, store, jobs)
    if record.model_dump_json() != before:
        record.updated_at = utcnow()
        store.put_json(study_key(record.study_id), record.model_dump(mode="json"))
    return record


def _refresh(state: NodeState, jobs: JobService) -> None:
    job = jobs.records.get(state.job_id)
    state.state, state.progress, state.error = job.state.value, job.progress, job.error


def _usable(jobs: JobService, job_id: str) -> bool:
    try:
        return jobs.records.get(job_id).state not in (JobState.failed, JobState.cancelled)
    except (NotFound, InvalidInput):
        return False


def _start(node: Node, state: NodeState, record: StudyRecord, store: ObjectStore, jobs: JobService) -> None:
    """Adopt the job an identical request already has, or submit one and claim the key for it."""
    cached = store.get_json(cache_key(state.key)) if store.exists(cache_key(state.key)) else None
    if cached and _usable(jobs, cached["job_id"]):
        state.job_id, state.reused = cached["job_id"], True
        _refresh(state, jobs)
        return
    body_type, command = SUBMISSIONS[node.kind]
    filled = {name: ([record.nodes[d].job_id for d in value] if isinstance(value, list) else record.nodes[value].job_id)
              for name, value in node.deps.items()}
    try:
        spec = command(body_type(**node.body, **filled), store, jobs.records)
    except (MedsynthError, ValidationError) as exc:  # e.g. a mask source the trained generator cannot serve
        state.state, state.error = "failed", f"not submitted: {exc}"
        return
    try:
        job_id = jobs.submit(node.kind, spec).job_id
    except JobDeferred as exc:  # recorded and queued: the reconciler publishes it
        job_id = exc.job_id
    if not store.put_if_absent(cache_key(state.key), f'{{"job_id": "{job_id}"}}'.encode(), content_type="application/json"):
        other = store.get_json(cache_key(state.key))["job_id"]
        if _usable(jobs, other):  # another api process got there first: keep its job, drop ours
            try:
                jobs.cancel(job_id)
            except Conflict:
                pass
            job_id = other
        else:  # the key named a failed job: this one replaces it
            store.put_json(cache_key(state.key), {"job_id": job_id})
    state.job_id = job_id
    _refresh(state, jobs)


def _finish(record: StudyRecord, store: ObjectStore, jobs: JobService) -> None:
    try:
        record.results_keys = write_results(record, store, jobs.records)
    except MedsynthError as exc:
        log.exception("study %s: results could not be computed", record.study_id)
        record.error = f"results could not be computed: {exc}"
    scored = [s for s in record.nodes.values() if s.kind == "train-segmenter" and s.labels.get("arm") != "real"]
    if all(s.state == "succeeded" for s in record.nodes.values()) and record.error is None:
        record.state = "succeeded"
    elif any(s.state == "succeeded" for s in scored) and record.results_keys:
        record.state = "partial"
    else:
        record.state = "failed"
    record.finished_at = utcnow()


def run_study_loop(projects: Callable[[], Iterable[tuple[ObjectStore, JobService]]], every_s: float, stop: threading.Event,
                   wake: threading.Event | None = None) -> None:
    """Advance every running study of every project every ``every_s`` seconds, and as soon as ``wake``
    is set (a job ended: :func:`watch_job_endings`), until ``stop``."""
    wake = wake or threading.Event()
    while not stop.is_set():
        wake.wait(every_s)
        wake.clear()
        if stop.is_set():
            return
        for store, jobs in projects():
            try:
                for study_id in study_ids(store):  # advance reads each record once and leaves ended studies as they are
                    advance(study_id, store, jobs)
            except Exception:  # noqa: BLE001 - one project's failure must not stop the others; the next pass retries
                log.exception("advancing studies failed")


ENDINGS = ("succeeded", "failed", "cancelled")


def watch_job_endings(bus: Bus, wake: threading.Event, stop: threading.Event) -> None:
    """Set ``wake`` whenever a job-ended event arrives on the events topic, so that a study submits
    what its inputs were waiting for at once rather than at the loop's next tick. Its own consumer
    group per api process, from the newest events; on broker trouble it retries, and the loop's
    period remains the fallback."""
    from google.protobuf.message import DecodeError
    from kafka.errors import KafkaError

    from medsynth.bus.messages import Event
    from medsynth.bus.topics import events_topic

    group = f"{bus.prefix}.api-studies-{uuid.uuid4().hex[:8]}"
    while not stop.is_set():
        try:
            consumer = bus.consumer([events_topic(bus.prefix)], group=group, auto_offset_reset="latest", max_poll_records=200)
        except (KafkaError, BusError) as exc:
            log.debug("study event watcher not connected: %s", exc)
            stop.wait(2.0)
            continue
        try:
            while not stop.is_set():
                for messages in consumer.poll(timeout_ms=500).values():
                    for message in messages:
                        event = Event()
                        try:
                            event.ParseFromString(message.value)
                        except DecodeError:  # not an event: nothing to wake for
                            continue
                        if event.WhichOneof("body") in ENDINGS:
                            wake.set()
        except KafkaError as exc:  # the broker went away: reconnect
            log.debug("study event watcher: %s", exc)
        finally:
            consumer.close(autocommit=False)
