"""The object-store interface every backend implements.

Keys are ``/``-separated relative paths (``datasets/knee/manifests/v000001.json``). Every write is
atomic: a reader sees either the previous object or the whole new one, never a part. Every object
carries the SHA-256 of its content, computed while it is written.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from medsynth.core.errors import InvalidInput

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    modified: datetime


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed store key, else raise :class:`InvalidInput`."""
    parts = key.split("/") if isinstance(key, str) else []
    if not parts or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise InvalidInput(f"store key must be a relative '/'-separated path without '.', '..' or empty parts, got {key!r}.")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if some well-formed key could start with it (``""``, ``"a/"``, ``"a/b"``,
    ``"a/."``), else raise :class:`InvalidInput`. Only the complete parts (those followed by ``/``)
    are checked; the last part may be the start of any part."""
    complete = prefix.split("/")[:-1] if isinstance(prefix, str) else [""]
    if any(p in ("", ".", "..") for p in complete) or "\\" in prefix or "\x00" in prefix:
        raise InvalidInput(f"store prefix must be the start of a well-formed key, got {prefix!r}.")
    return prefix


ABANDONED_AFTER_S = 3600.0  # longer than any single object write takes


class ObjectStore(ABC):
    """One interface, two backends: :class:`~medsynth.store.local.LocalStore` and
    :class:`~medsynth.store.s3.S3Store`."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write everything ``stream`` yields to ``key`` (replacing any object there), in chunks, atomically."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> bool:
        """Create ``key`` with ``data`` only if no object is there; return whether it was created.

        Atomic across processes and machines: of two concurrent callers, exactly one gets ``True``.
        """

    @abstractmethod
    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Stream an object's content. Raises :class:`~medsynth.core.errors.NotFound`."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, content hash and modification time. Raises :class:`~medsynth.core.errors.NotFound`."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with ``prefix`` (a plain string prefix), in lexicographic order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    # Conveniences shared by every backend -------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        import io

        return self.put_stream(key, io.BytesIO(data), content_type=content_type)

    def put_file(self, key: str, path: str | Path, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, content_type=content_type)

    def put_json(self, key: str, obj: Any) -> ObjectInfo:
        return self.put_bytes(key, _dump_json(obj), content_type="application/json")

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def download(self, key: str, path: str | Path) -> ObjectInfo:
        """Copy an object to a local file, streaming."""
        with self.open(key) as src, open(path, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        return self.stat(key)

    def sweep_abandoned(self, older_than_s: float = ABANDONED_AFTER_S) -> int:
        """Remove what writes that died midway left behind, if older than ``older_than_s`` (a write
        still running is younger); return how many were removed. Services call it when they start.
        The default has nothing to sweep: an S3 server never shows a partial object (incomplete
        multipart uploads are its lifecycle rules' business)."""
        return 0

    def exists(self, key: str) -> bool:
        from medsynth.core.errors import NotFound

        try:
            self.stat(key)
        except NotFound:
            return False
        return True


def _dump_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
