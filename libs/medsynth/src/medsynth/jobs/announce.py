"""Announcing a job's terminal state: the one path by which ``succeeded``, ``failed`` and ``cancelled``
events reach the events topic, once per job.

The record is written terminal and not yet announced, the event is published once (the bus looks for
an unacknowledged send in the log before sending again), then the record is marked announced. Whoever
announces holds the job's lease meanwhile; a process that dies in between leaves a terminal record
that is not announced, which the next worker to receive the job's command announces — from the log
offset recorded before any send, so a send that did land is found instead of repeated.
"""

from __future__ import annotations

from medsynth.bus.client import Bus
from medsynth.bus.messages import Event, make_event, transition_id
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.v1 import events_pb2


def terminal_event(record: JobRecord) -> Event:
    """The event of a terminal record; its id is the same however often it is built."""
    if record.state is JobState.succeeded:
        body = {"succeeded": events_pb2.JobSucceeded(result_keys=record.result_keys)}
    elif record.state is JobState.failed:
        body = {"failed": events_pb2.JobFailed(error=record.error or "", attempts=record.attempts, dead_lettered=record.dead_lettered)}
    elif record.state is JobState.cancelled:
        body = {"cancelled": events_pb2.JobCancelled()}
    else:
        raise ValueError(f"job {record.job_id} is {record.state.value}, not terminal")
    return make_event(record.job_id, record.kind, project=record.project,
                      event_id=transition_id(record.job_id, record.state.value), **body)


def announce_terminal(bus: Bus, records: JobRecords, record: JobRecord, *, resumed: bool = False) -> None:
    """Write ``record`` (terminal), publish its event once, mark it announced.

    ``resumed``: the record was written terminal by a process that may have sent the event and died
    before marking it; the log is searched from ``record.events_offset`` (its partition's beginning
    when unknown) before anything is sent.
    """
    if not record.state.terminal:
        raise ValueError(f"job {record.job_id} is {record.state.value}, not terminal")
    if not resumed:
        record.announced = False
        records.put(record)
    bus.emit(terminal_event(record), since=(record.events_offset or 0) if resumed else None)
    record.announced = True
    records.put(record)
