"""The audit trail: one record per request that reads or changes data, append-only and hash-chained.

Records are ``audit/log/<seq, 12 digits>.json`` in the root store, written with put-if-absent so that
processes appending at once never overwrite each other (the loser takes the next number). Each
record carries the hash of the one before it and its own hash over its content, so an edited
record fails its hash and a removed one breaks the chain; ``audit/head.json`` notes a recent end
of the chain, so removing the last records is seen too (up to the records written since that note).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import NotFound
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "audit/log/"
HEAD = "audit/head.json"
GENESIS = "0" * 64
HEAD_EVERY = 20  # records between two notes of the chain's end


class AuditRecord(BaseModel):
    seq: int
    time: datetime
    actor: str = Field(description="key:<id>, oidc:<user>, development, or anonymous when no credentials held.")
    project: str | None = None
    role: str | None = None
    action: str
    method: str
    route: str
    resource: dict[str, str] = Field(default_factory=dict)
    outcome: int = Field(description="The HTTP status answered.")
    reason: str = Field("", description="Why a request was refused or failed.")
    client: str = ""
    detail: dict[str, str] = Field(default_factory=dict, description="e.g. a downloaded cohort's manifest digest.")
    prev: str
    hash: str = ""

    def digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"hash"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class AuditEntry:
    """What a request contributes to its record while it is handled."""

    action: str
    method: str
    route: str
    resource: dict[str, str]
    client: str
    actor: str = "anonymous"
    project: str | None = None
    role: str | None = None
    reason: str = ""
    detail: dict[str, str] = field(default_factory=dict)


class ChainCheck(BaseModel):
    ok: bool
    records: int
    broken_at: int | None = None
    reason: str = ""


def _key(seq: int) -> str:
    return f"{PREFIX}{seq:012d}.json"


class AuditLog:
    def __init__(self, root: ObjectStore) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._end: tuple[int, str] | None = None  # (seq, hash) of the last record this process knows
        self._queue: queue.SimpleQueue | None = None

    def submit(self, entry: AuditEntry, outcome: int) -> Future:
        """:meth:`append` on this log's one writer thread; the future holds the record (or the error).
        A service's requests wait on it without each holding a worker thread while records are
        written one after another."""
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._write_queued, name="audit-writer", daemon=True).start()
        done: Future = Future()
        self._queue.put((entry, outcome, done))
        return done

    def _write_queued(self) -> None:
        assert self._queue is not None
        while True:
            entry, outcome, done = self._queue.get()
            try:
                done.set_result(self.append(entry, outcome))
            except Exception as exc:  # noqa: BLE001 - handed to the request that waits for it
                done.set_exception(exc)

    def append(self, entry: AuditEntry, outcome: int) -> AuditRecord:
        with self._lock:
            seq, prev = self._end or self._find_end()
            while True:
                record = AuditRecord(seq=seq + 1, time=utcnow(), outcome=outcome, prev=prev,
                                     reason=entry.reason[:500], **{k: v for k, v in vars(entry).items() if k != "reason"})
                record.hash = record.digest()
                if self.root.put_if_absent(_key(record.seq), record.model_dump_json().encode(), content_type="application/json"):
                    break
                taken = AuditRecord.model_validate(self.root.get_json(_key(seq + 1)))  # another process won the number
                seq, prev = taken.seq, taken.hash
            self._end = (record.seq, record.hash)
            if record.seq % HEAD_EVERY == 0:
                self.root.put_json(HEAD, {"seq": record.seq, "hash": record.hash})
            return record

    def _find_end(self) -> tuple[int, str]:
        """From the last note of the chain's end, step forward over the records written since."""
        try:
            head = self.root.get_json(HEAD)
            seq, prev = int(head["seq"]), str(head["hash"])
        except NotFound:
            seq, prev = 0, GENESIS
        while self.root.exists(_key(seq + 1)):
            nxt = AuditRecord.model_validate(self.root.get_json(_key(seq + 1)))
            seq, prev = nxt.seq, nxt.hash
        return seq, prev

    def records(self, *, since_seq: int = 0) -> list[AuditRecord]:
        return list(self.iter_records(since_seq=since_seq))

    def iter_records(self, *, since_seq: int = 0) -> Iterator[AuditRecord]:
        """The records after ``since_seq``, oldest first, each read when reached."""
        for key in self.root.list(PREFIX):
            if key.endswith(".json") and int(key[len(PREFIX):-5]) > since_seq:
                yield AuditRecord.model_validate(self.root.get_json(key))

    def verify(self) -> ChainCheck:
        """Walk the whole chain: every record's hash, its link to the one before, no gap in the numbers,
        and no end before the last noted one."""
        prev, expected, count = GENESIS, 1, 0
        for key in self.root.list(PREFIX):
            if not key.endswith(".json"):
                continue
            try:
                record = AuditRecord.model_validate(self.root.get_json(key))
            except ValueError:
                return ChainCheck(ok=False, records=count, broken_at=expected, reason=f"record {key} is not an audit record")
            if record.seq != expected or key != _key(record.seq):
                return ChainCheck(ok=False, records=count, broken_at=expected, reason=f"record {expected} is missing")
            if record.digest() != record.hash:
                return ChainCheck(ok=False, records=count, broken_at=record.seq, reason=f"record {record.seq} was altered (its hash does not match)")
            if record.prev != prev:
                return ChainCheck(ok=False, records=count, broken_at=record.seq, reason=f"record {record.seq} does not follow record {record.seq - 1}")
            prev, expected, count = record.hash, expected + 1, count + 1
        try:
            noted = int(self.root.get_json(HEAD)["seq"])
        except NotFound:
            noted = 0
        if noted > count:
            return ChainCheck(ok=False, records=count, broken_at=count + 1, reason=f"records after {count} were removed (the chain reached {noted})")
        return ChainCheck(ok=True, records=count)


def matches(record: AuditRecord, filters: dict[str, Any]) -> bool:
    return all(value is None or getattr(record, name) == value for name, value in filters.items())
