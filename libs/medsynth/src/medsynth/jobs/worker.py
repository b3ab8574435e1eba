"""The worker loop: consume a command, run its handler, record the outcome, then commit.

Commit order (after quix-streams): handler outputs are in the store → the job record says so → events
are acknowledged by the broker → the offset is committed. A worker killed anywhere before the commit
gets its command redelivered to another group member; the record tells that member what happened:

- record terminal (succeeded / failed / cancelled): skip and commit — outputs are written once; if
  its event was never acknowledged (the worker died between the record and the event), announce it
  first (:mod:`medsynth.jobs.announce`: found in the log rather than sent twice);
- record running or queued: run again (handlers are idempotent: deterministic output keys);
- ``attempts`` reached ``max_attempts``: the command goes to the dead-letter topic with the error.

While a handler runs (in its own thread) the consumer loop goes on polling with its partitions
paused, so the worker stays in its consumer group however long the job takes, and renews the job's
lease (``jobs/<id>/lease.json``) every third of ``lease_s``. A command whose job is ``running`` under
another worker's unexpired lease (a rebalance moved the partition while that worker still runs it)
waits until the lease ends or the job does: no job runs twice at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from google.protobuf.message import Message

from medsynth.bus.client import Bus, BusError
from medsynth.bus.topics import command_topic, dead_letter_topic
from medsynth.core.clock import utcnow
from medsynth.core.errors import InvalidInput, JobCancelled, NotFound, PermanentJobError
from medsynth.core.settings import Settings
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.bus.messages import DeadLetter, JobKind, decode_command, make_event, transition_id
from medsynth.jobs.announce import announce_terminal
from medsynth.store.projects import DEFAULT_PROJECT, project_store
from medsynth.store import ObjectStore
from medsynth.runtime.telemetry import CONSUMER_LAG, DEAD_LETTERS, JOB_SECONDS, JOBS, declare_worker_series
from medsynth.v1 import events_pb2

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 1.0
#: How often an idle or busy worker measures its group's lag (consumer-lag gauge).
LAG_EVERY_S = 10.0
#: After SIGTERM, how long a running handler gets to reach its next progress step before the worker
#: leaves it behind (its command is not committed, so it runs again elsewhere).
STOP_GRACE_S = 5.0


class WorkerStopping(Exception):
    """Raised inside a handler at its next progress report when the worker is shutting down."""


@dataclass
class JobContext:
    """What a handler gets besides its spec: the store, settings, and progress/cancel hooks."""

    record: JobRecord
    store: ObjectStore  # the job's project's part of the store
    settings: Settings
    _worker: Worker
    records: JobRecords
    _last_write: float = field(default=0.0)

    @property
    def job_id(self) -> str:
        return self.record.job_id

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested, :class:`WorkerStopping` on shutdown."""
        if self._worker.stopping.is_set():
            raise WorkerStopping(f"worker {self._worker.name} is stopping")
        if self.records.cancel_requested(self.job_id):
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def emit(self, event) -> None:
        """Publish an event (e.g. cohort-ready) on the events topic."""
        self._worker.bus.emit(event)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1); also the point where cancellation and shutdown are honoured."""
        self.check_cancelled()
        now = time.monotonic()
        if now - self._last_write < PROGRESS_WRITE_INTERVAL_S and fraction < 1.0:
            return
        self._last_write = now
        self.record.progress, self.record.message = max(0.0, min(1.0, fraction)), message
        self.records.put(self.record)
        self._worker.bus.emit(
            make_event(self.job_id, self.record.kind, project=self.record.project, progress=events_pb2.JobProgress(fraction=fraction, message=message))
        )


Handler = Callable[[Message, JobContext], Mapping[str, str]]
"""A handler runs one job from its spec and returns its result keys (name → store key)."""


class Outcome(Enum):
    done = "done"    # commit the offset
    retry = "retry"  # seek back and run the command again after a backoff


class Worker:
    """Runs the handlers of some job kinds as one member of the consumer group ``<prefix>.<name>``."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        store: ObjectStore,
        bus: Bus,
        handlers: Mapping[JobKind, Handler],
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store  # the root: each job reads and writes its project's part (project_store)
        self.bus = bus
        self._project_records: dict[str, JobRecords] = {}
        self.handlers = dict(handlers)
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.identity = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self._current: JobRecord | None = None  # the job whose attempt runs now (its lease is renewed)
        self._lag_at = 0.0
        self._lease_lock = threading.Lock()
        declare_worker_series(self.handlers)

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop` is called. The message in hand is finished or left uncommitted."""
        from kafka.structs import OffsetAndMetadata

        topics = [command_topic(self.bus.prefix, kind) for kind in self.handlers]
        consumer = self._connect(topics)
        if consumer is None:
            return
        self.ready.set()
        log.info("worker %s consuming %s", self.identity, topics)
        try:
            while not self.stopping.is_set():
                self._measure_lag(consumer)
                for tp, messages in self._poll(consumer).items():
                    for message in messages:
                        try:
                            outcome = self._process_polling(consumer, message)
                        except WorkerStopping:
                            return
                        except Exception:  # noqa: BLE001 - e.g. store or broker down: keep the message
                            log.exception("processing %s:%d@%d failed; will retry", tp.topic, tp.partition, message.offset)
                            outcome = Outcome.retry
                        if outcome is Outcome.retry:
                            if tp in consumer.assignment():  # else its new owner reads it from the committed offset
                                consumer.seek(tp, message.offset)
                            self.stopping.wait(self.settings.retry_backoff_s)
                        else:
                            self._commit(consumer, {tp: OffsetAndMetadata(message.offset + 1, "", -1)})
        finally:
            self.ready.clear()
            consumer.close(autocommit=False, timeout_ms=3000)

    def _measure_lag(self, consumer) -> None:
        """Every LAG_EVERY_S, per assigned partition: end offset minus this group's position (0 when
        caught up). Skipped while the broker does not accept a connection (the call would block)."""
        from kafka.errors import KafkaError

        if time.monotonic() - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = time.monotonic()
        assigned = consumer.assignment()
        if not assigned or not self.bus.reachable(timeout_s=0.5):
            return
        try:
            ends = consumer.end_offsets(list(assigned))
            for tp in assigned:
                # tansu 0.6.0 answers ListOffsets(latest) with 1 for a partition holding several records;
                # the high watermark of the last fetch is then the better end (on Kafka both agree)
                end = max(ends.get(tp) or 0, consumer.highwater(tp) or 0)
                CONSUMER_LAG.labels(f"{self.bus.prefix}.{self.name}", tp.topic, str(tp.partition)).set(
                    max(0, end - consumer.position(tp, timeout_ms=2000)))
        except (KafkaError, TypeError) as exc:  # the broker is away: the next round measures again
            log.debug("consumer lag not measured: %s", exc)

    def _connect(self, topics: list[str]):
        """The group consumer, once the broker answers; None if the worker is stopped first."""
        from kafka.errors import KafkaError

        while not self.stopping.is_set():
            try:
                return self.bus.consumer(topics, group=f"{self.bus.prefix}.{self.name}")
            except (KafkaError, BusError) as exc:  # BusError: the bus's own words for it (unreachable, TLS refused)
                log.warning("worker %s cannot reach the broker (%s); trying again", self.identity, exc)
                self.stopping.wait(max(1.0, self.settings.retry_backoff_s))
        return None

    def _process_polling(self, consumer, message) -> Outcome:
        """:meth:`process` in a thread while this one keeps the consumer polling (partitions paused)
        and the job's lease renewed; returns its outcome or raises what it raised."""
        result: dict[str, object] = {}

        def target() -> None:
            try:
                result["outcome"] = self.process(message)
            except BaseException as exc:  # noqa: BLE001 - handed to the polling thread
                result["error"] = exc

        thread = threading.Thread(target=target, name=f"job-{message.topic}-{message.offset}", daemon=True)
        thread.start()
        renew_every = self.settings.lease_s / 3
        last_renewal = time.monotonic()
        stop_seen: float | None = None
        while thread.is_alive():
            if self.stopping.is_set():
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > STOP_GRACE_S:
                    self._abandon_current()
                    raise WorkerStopping(f"worker {self.identity} stopped; job left to its next delivery")
            consumer.pause(*consumer.assignment())
            for tp, early in self._poll(consumer, timeout_ms=200).items():  # after a rebalance, before the pause
                if tp in consumer.assignment():
                    consumer.seek(tp, early[0].offset)
            thread.join(timeout=0.05)
            self._measure_lag(consumer)
            if time.monotonic() - last_renewal >= renew_every and thread.is_alive():
                last_renewal = time.monotonic()
                self._renew_current_lease()
        consumer.resume(*consumer.paused())
        if "error" in result:
            raise result["error"]
        return result["outcome"]

    def _leased_elsewhere(self, records: JobRecords, record: JobRecord) -> bool:
        """Another live process holds the job's lease (it runs the job, or announces its end)."""
        lease = records.lease(record.job_id)
        if lease is None or lease.worker == self.identity or lease.expired() or self._holder_gone(lease.worker):
            return False
        log.info("job %s is held by %s until %s; waiting", record.job_id, lease.worker, lease.expires_at.isoformat())
        return True

    @staticmethod
    def _holder_gone(holder: str) -> bool:
        """A lease held by a process of this host that no longer exists (a worker killed and restarted
        on the same machine) need not be waited out; on other hosts only its expiry tells."""
        host, _, pid = holder.rpartition("@")[2].rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _abandon_current(self) -> None:
        """Shutdown with a handler still busy: give up the lease, so that the command's next delivery
        (to a restarted worker or another member) need not wait for it to expire."""
        with self._lease_lock:
            current, self._current = self._current, None
        if current is not None:
            log.warning("job %s still running %.0f s after the stop signal; leaving it to its next delivery", current.job_id, STOP_GRACE_S)
            try:
                self._records(current.project).release_lease(current.job_id)
            except Exception:  # noqa: BLE001 - then the lease simply expires
                log.warning("releasing the lease of job %s failed", current.job_id, exc_info=True)

    def _renew_current_lease(self) -> None:
        with self._lease_lock:
            current = self._current
            if current is None:
                return
            try:
                self._records(current.project).renew_lease(current.job_id, self.identity, current.attempts, self.settings.lease_s)
            except Exception:  # noqa: BLE001 - the store may be down for a while; the next renewal retries
                log.warning("renewing the lease of job %s failed", current.job_id, exc_info=True)

    @staticmethod
    def _poll(consumer, timeout_ms: int = 500) -> dict:
        """One poll; group-membership errors (a rebalance in flight) are retried by the next poll."""
        from kafka.errors import CommitFailedError, InvalidRequestError, RebalanceInProgressError

        try:
            return consumer.poll(timeout_ms=timeout_ms, max_records=1)
        except (InvalidRequestError, RebalanceInProgressError, CommitFailedError) as exc:
            log.info("consumer group is rebalancing (%s); polling again", type(exc).__name__)
            return {}

    @staticmethod
    def _commit(consumer, offsets: dict) -> None:
        """Commit; if the group rebalanced meanwhile the command is redelivered and skipped, since its
        record is already terminal."""
        from kafka.errors import CommitFailedError, RebalanceInProgressError

        try:
            consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("commit of %s failed (%s); the command will be redelivered and skipped", offsets, exc)

    def stop(self) -> None:
        self.stopping.set()

    def _records(self, project: str) -> JobRecords:
        """The job records of ``project``, in its part of the store (a malformed name is InvalidInput)."""
        if project not in self._project_records:
            self._project_records[project] = JobRecords(project_store(self.store, project), project)
        return self._project_records[project]

    # -- one message -----------------------------------------------------------------------------

    def process(self, message) -> Outcome:
        try:
            command, kind, spec = decode_command(message.value)
        except InvalidInput as exc:
            self._dead_letter(None, message, str(exc), attempts=0)
            return Outcome.done
        try:
            records = self._records(command.project or DEFAULT_PROJECT)
            record = records.get(command.job_id)
        except (NotFound, InvalidInput) as exc:
            self._dead_letter(kind, message, str(exc), attempts=0)
            return Outcome.done
        if record.state.terminal:
            if record.announced:
                log.info("job %s already %s; skipping redelivered command", record.job_id, record.state.value)
                return Outcome.done
            if self._leased_elsewhere(records, record):  # its announcer is at it now
                return Outcome.retry
            log.info("job %s is %s but its event was not acknowledged; announcing it", record.job_id, record.state.value)
            announce_terminal(self.bus, records, record, resumed=True)
            return Outcome.done
        if records.cancel_requested(record.job_id):
            self._finish(record, JobState.cancelled)
            return Outcome.done
        if record.state is JobState.running and self._leased_elsewhere(records, record):
            return Outcome.retry
        if record.attempts >= self.settings.max_attempts:
            self._fail(record, message, record.error or "attempts exhausted (worker lost mid-job)")
            return Outcome.done
        return self._attempt(record, kind, spec, message)

    def _attempt(self, record: JobRecord, kind: JobKind, spec: Message, message) -> Outcome:
        record.attempts += 1
        record.state, record.started_at, record.message = JobState.running, utcnow(), ""
        records = self._records(record.project)
        records.renew_lease(record.job_id, self.identity, record.attempts, self.settings.lease_s)
        records.put(record)
        self._current = record
        try:
            return self._run_handler(record, kind, spec, message)
        finally:
            with self._lease_lock:  # no renewal can land after the release
                self._current = None
                try:
                    records.release_lease(record.job_id)
                except Exception:  # noqa: BLE001 - an unreleased lease only makes a redelivery wait for its expiry
                    log.warning("releasing the lease of job %s failed", record.job_id, exc_info=True)

    def _run_handler(self, record: JobRecord, kind: JobKind, spec: Message, message) -> Outcome:
        start_event = make_event(record.job_id, kind, project=record.project,
                                 event_id=transition_id(record.job_id, "started", record.attempts),
                                 started=events_pb2.JobStarted(attempt=record.attempts, worker=self.identity))
        record.events_offset = self.bus.emit(start_event).offset  # its terminal event comes after: where a search for it starts
        records = self._records(record.project)
        ctx = JobContext(record=record, store=records.store, settings=self.settings, _worker=self, records=records)
        started = time.monotonic()
        try:
            handler = self.handlers[kind]
            result = dict(handler(spec, ctx))
            ctx.check_cancelled()
        except WorkerStopping:
            record.state, record.attempts = JobState.queued, record.attempts - 1
            record.message = f"interrupted by shutdown of {self.identity}; will resume"
            records.put(record)
            raise
        except JobCancelled:
            self._finish(record, JobState.cancelled)
            return Outcome.done
        except (PermanentJobError, InvalidInput, NotFound) as exc:
            self._fail(record, message, f"{type(exc).__name__}: {exc}")
            return Outcome.done
        except Exception as exc:  # noqa: BLE001 - any handler failure is recorded and retried or dead-lettered
            error = f"{type(exc).__name__}: {exc}"
            log.warning("job %s attempt %d failed: %s\n%s", record.job_id, record.attempts, error, traceback.format_exc())
            JOBS.labels(kind.value, "error").inc()
            if record.attempts >= self.settings.max_attempts:
                self._fail(record, message, error)
                return Outcome.done
            record.state, record.error = JobState.queued, error
            record.message = f"attempt {record.attempts} failed; retrying"
            records.put(record)
            return Outcome.retry
        finally:
            JOB_SECONDS.labels(kind.value).observe(time.monotonic() - started)
        record.result_keys = result
        self._finish(record, JobState.succeeded)
        return Outcome.done

    # -- outcomes --------------------------------------------------------------------------------

    def _finish(self, record: JobRecord, state: JobState) -> None:
        record.state, record.finished_at = state, utcnow()
        if state is JobState.succeeded:
            record.progress, record.error = 1.0, None
        announce_terminal(self.bus, self._records(record.project), record)
        JOBS.labels(record.kind.value, state.value).inc()

    def _fail(self, record: JobRecord, message, error: str) -> None:
        self._dead_letter(record.kind, message, error, attempts=record.attempts)
        record.state, record.finished_at, record.error, record.dead_lettered = JobState.failed, utcnow(), error, True
        announce_terminal(self.bus, self._records(record.project), record)
        JOBS.labels(record.kind.value, "failed").inc()

    def _dead_letter(self, kind: JobKind | None, message, error: str, *, attempts: int) -> None:
        letter = DeadLetter(
            command=message.value or b"",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=error,
            attempts=attempts,
        )
        letter.time.FromDatetime(utcnow())
        key = message.key.decode() if message.key else f"{message.topic}:{message.partition}:{message.offset}"
        self.bus.publish(dead_letter_topic(self.bus.prefix, kind), key, letter.SerializeToString())
        DEAD_LETTERS.labels(kind.value if kind else "unreadable").inc()
        log.error("dead-lettered %s:%d@%d after %d attempts: %s", message.topic, message.partition, message.offset, attempts, error)
