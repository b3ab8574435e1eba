"""A view of an object store confined to one project's keys.

A project's resources live under ``projects/<name>/`` (the default project keeps the pre-project
layout at the root, so stores written before projects existed need no migration). Whatever the
prefix, a scoped store only takes keys whose first part is a resource root (:data:`RESOURCE_ROOTS`):
no key a route or a handler builds can reach another project's data, the API keys or the audit
trail, which live beside the projects at the root.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import BinaryIO

from medsynth.core.errors import InvalidInput
from medsynth.store.base import ObjectInfo, ObjectStore, check_key, check_prefix

#: The first part of every key a project's resources use.
RESOURCE_ROOTS = frozenset({"datasets", "dicom", "jobs", "generators", "cohorts", "audits", "segmentations", "evaluations", "studies", "reader-studies"})


class ScopedStore(ObjectStore):
    def __init__(self, base: ObjectStore, prefix: str) -> None:
        if prefix:
            check_prefix(prefix)
            if not prefix.endswith("/"):
                raise InvalidInput(f"a scope prefix ends with '/', got {prefix!r}")
        self.base, self.prefix = base, prefix

    def __repr__(self) -> str:
        return f"ScopedStore({self.base!r}, {self.prefix!r})"

    def _key(self, key: str) -> str:
        check_key(key)
        if key.split("/", 1)[0] not in RESOURCE_ROOTS:
            raise InvalidInput(f"store key {key!r} is outside a project's resources")
        return self.prefix + key

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        return replace(info, key=info.key[len(self.prefix):])

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self._info(self.base.put_stream(self._key(key), stream, content_type=content_type))

    def put_if_absent(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> bool:
        return self.base.put_if_absent(self._key(key), data, content_type=content_type)

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self.base.open(self._key(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._info(self.base.stat(self._key(key)))

    def delete(self, key: str) -> None:
        self.base.delete(self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        root = prefix.split("/", 1)[0]
        if "/" in prefix and root not in RESOURCE_ROOTS:
            raise InvalidInput(f"store prefix {prefix!r} is outside a project's resources")
        for key in self.base.list(self.prefix + prefix):
            key = key[len(self.prefix):]
            if key.split("/", 1)[0] in RESOURCE_ROOTS:
                yield key
