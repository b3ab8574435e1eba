"""API keys for scripts: random, shown once, kept as a SHA-256 hash, one project and one role each,
with an expiry and revocation. Records are ``auth/keys/<key id>.json`` in the root store.

A key reads ``msk_<key id>_<secret>``: the id finds the record, the secret (256 random bits) is
compared with the stored hash in constant time. A plain hash suffices for secrets of that entropy
(no one can guess them, so there is nothing to slow down)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from medsynth.auth.principal import Principal, Role
from medsynth.core.clock import utcnow
from medsynth.core.errors import InvalidInput, NotFound, Unauthorized
from medsynth.core.names import check_name
from medsynth.store import ObjectStore

PREFIX = "auth/keys/"
TOKEN_PREFIX = "msk"


class ApiKey(BaseModel):
    key_id: str
    project: str
    role: Role
    name: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str = ""
    secret_sha256: str = Field(repr=False)

    def state(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def principal(self) -> Principal:
        return Principal(actor=f"key:{self.key_id}", grants={self.project: frozenset({self.role})}, key_id=self.key_id)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(key_id: str) -> str:
    return f"{PREFIX}{check_name(key_id, 'key id')}.json"


class ApiKeys:
    """Create, look up, list and revoke keys; a looked-up key is trusted for ``cache_s`` seconds."""

    def __init__(self, root: ObjectStore, *, cache_s: float = 10.0) -> None:
        self.root = root
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def create(self, project: str, role: Role | str, *, name: str = "", expires_in_days: float | None = 90,
               created_by: str = "") -> tuple[ApiKey, str]:
        """A new key and its token (``msk_…``), which is shown this once and never stored."""
        check_name(project, "project name")
        if expires_in_days is not None and expires_in_days <= 0:
            raise InvalidInput("expires_in_days must be positive (or None for a key that does not expire)")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=key_id, project=project, role=Role(role), name=name[:200], created_by=created_by,
            expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days is not None else None,
            secret_sha256=_digest(secret),
        )
        if not self.root.put_if_absent(_key(key_id), key.model_dump_json(indent=2).encode(), content_type="application/json"):
            raise RuntimeError("a fresh random key id collided with an existing key")  # 2^-64: not a user error
        return key, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def get(self, key_id: str) -> ApiKey:
        try:
            return ApiKey.model_validate(self.root.get_json(_key(key_id)))
        except (NotFound, InvalidInput):
            raise NotFound(f"no key {key_id!r}") from None

    def authenticate(self, token: str) -> ApiKey:
        """The active key ``token`` belongs to; :class:`Unauthorized` naming why not."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
            raise Unauthorized("not a medsynth API key (they read msk_<id>_<secret>)")
        key_id, secret = parts[1], parts[2]
        key = self._cached(key_id)
        if key is None:
            try:
                key = self.get(key_id)
            except NotFound:
                raise Unauthorized("unknown API key") from None
            with self._lock:
                self._cache[key_id] = (time.monotonic(), key)
        if not hmac.compare_digest(_digest(secret), key.secret_sha256):
            raise Unauthorized("unknown API key")  # the same answer as an unknown id: nothing to probe
        if (state := key.state()) != "active":
            raise Unauthorized(f"API key {key_id} is {state}")
        return key

    def _cached(self, key_id: str) -> ApiKey | None:
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is None or time.monotonic() - hit[0] > self.cache_s:
            return None
        return hit[1]

    def list(self, project: str) -> list[ApiKey]:
        keys = (ApiKey.model_validate(self.root.get_json(k)) for k in self.root.list(PREFIX) if k.endswith(".json"))
        return sorted((k for k in keys if k.project == project), key=lambda k: k.created_at)

    def listing(self, project: str, *, after: str | None = None) -> Iterator[tuple[str, ApiKey]]:
        """(id, key) of ``project``'s keys in id order from the first after ``after``, each read when reached
        (a key's project is in its record, so every key of the store up to a page's end is read)."""
        ids = sorted(k[len(PREFIX):-len(".json")] for k in self.root.list(PREFIX) if k.endswith(".json"))
        for key_id in ids:
            if after is not None and key_id <= after:
                continue
            try:
                key = ApiKey.model_validate(self.root.get_json(_key(key_id)))
            except (NotFound, InvalidInput):
                continue
            if key.project == project:
                yield key_id, key

    def revoke(self, project: str, key_id: str, *, by: str = "") -> ApiKey:
        """Revoke a key of ``project`` (a key of another project is as unknown as a missing one)."""
        key = self.get(key_id)
        if key.project != project:
            raise NotFound(f"no key {key_id!r}")
        if key.revoked_at is None:
            key.revoked_at, key.revoked_by = utcnow(), by
            self.root.put_json(_key(key_id), key.model_dump(mode="json"))
        with self._lock:
            self._cache.pop(key_id, None)
        return key
