"""Idempotency keys: a request that creates a job (or a study) sent again with the same
``Idempotency-Key`` gets the resource the first one made instead of making a second.

One object per key and caller in the project's store, beside the job records:
``jobs/idempotency/<sha256 of caller and key>.json`` holding the SHA-256 of the first request (method,
path, body), the id of what it made and when. It is created with create-if-absent before the resource,
so of two concurrent requests with one key exactly one makes it; the other is told to come back
(:class:`~medsynth.core.errors.IdempotencyKeyInUse`) or, once the resource exists, gets it. The same key
with another request is :class:`~medsynth.core.errors.IdempotencyKeyReused`. A request that fails before
its resource exists (an invalid body, a missing generator) frees its key again. Keys are remembered for
:data:`KEY_TTL_S`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel

from medsynth.core.clock import utcnow
from medsynth.core.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidInput, NotFound
from medsynth.store import ObjectStore

PREFIX = "jobs/idempotency/"
#: How long a key is remembered: a request sent again later makes a new resource (as Stripe's keys, 24 h).
KEY_TTL_S = 24 * 3600.0
#: A key claimed this long ago whose resource never appeared belongs to a request that died midway: it is freed.
ABANDONED_AFTER_S = 60.0

T = TypeVar("T")


class KeyRecord(BaseModel):
    request_sha256: str
    resource_id: str
    created_at: datetime


def request_digest(method: str, path: str, body: bytes) -> str:
    """The SHA-256 that tells two requests apart: method, path and body (JSON compared as parsed, so
    that key order and white space do not make two bodies different)."""
    import json

    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    digest = hashlib.sha256(f"{method.upper()} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


class IdempotencyKeys:
    """The keys of one project's store (:func:`medsynth.store.projects.project_store`)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def object_key(caller: str, key: str) -> str:
        digest = hashlib.sha256(caller.encode() + b"\n" + key.encode()).hexdigest()
        return f"{PREFIX}{digest}.json"

    def once(self, caller: str, key: str, request_sha256: str, new_id: Callable[[], str],
             create: Callable[[str], T], existing: Callable[[str], T]) -> tuple[T, bool]:
        """``create(id)`` under a new id the first time ``caller`` sends ``key``; the same resource,
        ``existing(id)``, every later time with the same request. Returns it and whether it was there already.

        Raises:
            IdempotencyKeyReused: ``key`` came before with another request.
            IdempotencyKeyInUse: the first request with ``key`` is still making its resource.
        """
        where = self.object_key(caller, key)
        for _ in range(3):
            mine = KeyRecord(request_sha256=request_sha256, resource_id=new_id(), created_at=utcnow())
            if self.store.put_if_absent(where, mine.model_dump_json().encode(), content_type="application/json"):
                return self._create(where, mine.resource_id, create, existing), False
            held = self._read(where)
            if held is None:
                continue  # freed meanwhile
            age = (utcnow() - held.created_at).total_seconds()
            if age > KEY_TTL_S:
                self.store.delete(where)
                continue
            if held.request_sha256 != request_sha256:
                raise IdempotencyKeyReused(
                    f"Idempotency-Key {key!r} was sent before with another request (it made {held.resource_id}); "
                    "a new request needs a new key.")
            try:
                return existing(held.resource_id), True
            except NotFound:
                if age <= ABANDONED_AFTER_S:
                    raise IdempotencyKeyInUse(f"the first request with Idempotency-Key {key!r} is still being served; "
                                              "send it again in a moment.") from None
                self.store.delete(where)
        raise IdempotencyKeyInUse(f"Idempotency-Key {key!r} is contended; send the request again in a moment.")

    def _create(self, where: str, resource_id: str, create: Callable[[str], T], existing: Callable[[str], T]) -> T:
        try:
            return create(resource_id)
        except BaseException:
            try:
                existing(resource_id)  # recorded before it failed (a job whose command waits for the broker): keep the key
            except (NotFound, InvalidInput):
                self.store.delete(where)  # nothing was made: the key is free for a corrected request
            raise

    def _read(self, where: str) -> KeyRecord | None:
        try:
            return KeyRecord.model_validate(self.store.get_json(where))
        except NotFound:
            return None
