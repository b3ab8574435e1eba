"""Typed access to the protobuf contracts in ``protos/``: job kinds, command and event builders.

The generated modules live in :mod:`medsynth.v1`; this module is the only place that knows how job
kinds map onto the ``oneof`` fields of :class:`Command`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum

from google.protobuf.message import DecodeError, Message

from medsynth.core.errors import InvalidInput
from medsynth.v1 import events_pb2, jobs_pb2

SCHEMA_VERSION = 1

Command = jobs_pb2.Command
Event = events_pb2.Event
DeadLetter = events_pb2.DeadLetter


class JobKind(str, Enum):
    """Job kinds; the value is the name used in topics, keys and the REST API."""

    prepare_dataset = "prepare-dataset"
    train_generator = "train-generator"
    sample_cohort = "sample-cohort"
    train_segmenter = "train-segmenter"
    evaluate = "evaluate"

    @property
    def field(self) -> str:
        """Name of this kind's field in ``Command.body``."""
        return self.name

    @property
    def proto(self) -> int:
        return jobs_pb2.JobKind.Value(self.name.upper())

    def spec_type(self) -> type[Message]:
        return type(getattr(Command(), self.field))


def make_command(job_id: str, kind: JobKind, spec: Message, project: str = "") -> Command:
    cmd = Command(schema_version=SCHEMA_VERSION, job_id=job_id, kind=kind.proto, project=project)
    getattr(cmd, kind.field).CopyFrom(spec)
    return cmd


def decode_command(data: bytes) -> tuple[Command, JobKind, Message]:
    """Parse a command message; raise :class:`InvalidInput` when it is not one medsynth can run."""
    cmd = Command()
    try:
        cmd.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"command is not a valid medsynth.v1.Command: {exc}") from exc
    body = cmd.WhichOneof("body")
    if not cmd.job_id or body is None:
        raise InvalidInput(f"command needs a job_id and a body, got job_id={cmd.job_id!r} body={body!r}.")
    kind = JobKind[body]
    return cmd, kind, getattr(cmd, body)


def make_event(job_id: str = "", kind: JobKind | None = None, *, project: str = "", event_id: str = "", **body: Message) -> Event:
    """Build an event with one body field, e.g. ``make_event(job_id, kind, project=p, started=JobStarted(...))``.

    ``event_id``: the id of a transition (see :func:`transition_id`), the same each time the same
    transition is announced, so that the bus publishes it once and readers can tell a copy; default a
    random id (progress, scan-ingested)."""
    (name, value), = body.items()
    event = Event(schema_version=SCHEMA_VERSION, event_id=event_id or uuid.uuid4().hex, job_id=job_id, project=project)
    event.time.FromDatetime(datetime.now(timezone.utc))
    if kind is not None:
        event.kind = kind.proto
    getattr(event, name).CopyFrom(value)
    return event



def transition_id(job_id: str, transition: str, n: int | None = None) -> str:
    """The event id of one transition of a job: ``<job>.succeeded`` (terminal states happen once),
    ``<job>.started.2`` (an attempt), ``<job>.queued.3`` (a publication)."""
    return f"{job_id}.{transition}" if n is None else f"{job_id}.{transition}.{n}"
