"""The local-directory backend: every object is a plain file at ``<root>/<key>``.

Layout under ``root``::

    datasets/knee/manifests/v000001.json     the object itself, browsable by an operator
    .meta/datasets/knee/manifests/v000001.json   its sidecar: {"sha256", "size", "ino", "mtime_ns", ...}
    .../.tmp-XXXXXXXX                         a write in progress (never listed)

A write streams into a ``.tmp-`` file in the object's directory, hashing as it goes, fsyncs it, writes
the sidecar (atomically, itself via a temp file), then renames the data file over the key with
:func:`os.replace`. A reader therefore sees either the old file or the whole new one.

The sidecar lets :meth:`LocalStore.stat` answer without reading the file. It describes one inode: it
records the data file's inode number, size and mtime, and is trusted only while they all still match
(two concurrent writers may leave the sidecar of the loser next to the winner's data, and an operator
may edit a file by hand). Otherwise the hash is recomputed from the file and the sidecar refreshed.

The sidecar tree mirrors the key tree exactly (``.meta/<key>``, no suffix), so two keys can never
share a sidecar path. Keys are therefore restricted slightly more than :func:`check_key` does: the first
part may not be ``.meta`` and no part may start with ``.tmp-``.

Objects are readable by anyone the umask lets read them (an operator browses the store), except those
under :data:`PRIVATE_PREFIXES` — secrets such as the projects' de-identification keys: their files are
0600 and their folders (and their sidecars' folders) 0700, whatever the umask. The store narrows the
top private folders when it opens, and anything under them when it sweeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from medsynth.core.errors import Conflict, InvalidInput, NotFound, StoreError
from medsynth.store.base import ABANDONED_AFTER_S, CHUNK, ObjectInfo, ObjectStore, check_key, check_prefix

META_DIR = ".meta"
TEMP_PREFIX = ".tmp-"
#: Key prefixes whose objects are secrets (de-identification keys, API key and reader-token records).
PRIVATE_PREFIXES = ("auth/",)
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700
_MKDIR_ATTEMPTS = 5


def _file_mode() -> int:
    """Mode for new objects: what ``open()`` would give (0o666 less the umask), not mkstemp's 0o600,
    so that an operator can browse the store."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _is_private(key: str) -> bool:
    return key.startswith(PRIVATE_PREFIXES)


def _narrow(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` unless it has it already (or is gone)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


class LocalStore(ObjectStore):
    """Objects as plain files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the local store root {str(self.root)!r}: {exc}") from exc
        for top in self._private_tops():  # closes what an older version left open, all beneath them too
            with contextlib.suppress(OSError):  # best effort (a read-only store): writes would fail anyway
                _narrow(top, PRIVATE_DIR_MODE)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def sweep_abandoned(self, older_than_s: float = ABANDONED_AFTER_S) -> int:
        """Delete ``.tmp-`` files (data or sidecar) last modified more than ``older_than_s`` ago: a
        process killed mid-write leaves one behind, and nothing else ever removes it."""
        cutoff = datetime.now(timezone.utc).timestamp() - older_than_s
        removed = 0
        private = self._private_tops()
        for directory, _, files in os.walk(self.root):
            sealed = any(Path(directory) == top or top in Path(directory).parents for top in private)
            if sealed:  # on the way: files and folders of secrets written before they were private
                _narrow(Path(directory), PRIVATE_DIR_MODE)
            for name in files:
                path = Path(directory) / name
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(TEMP_PREFIX) and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                    elif sealed:
                        _narrow(path, PRIVATE_FILE_MODE)
        return removed

    # Writes --------------------------------------------------------------------------------------

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._data_path(key)
        tmp, digest, size = self._write_temp(key, path.parent, stream)
        try:
            if path.is_dir():
                raise _directory_conflict(key)
            st = os.stat(tmp)
            self._write_meta(key, _meta_record(st, digest, content_type))
            _replace(key, tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(path.parent)
        return ObjectInfo(key=key, size=size, sha256=digest, modified=_mtime(st))

    def put_if_absent(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> bool:
        """Hard-link a finished temp file to the key: :func:`os.link` fails if anything is there, which
        makes creation atomic across processes. The sidecar is written after the link (only by the
        winner), so a losing caller never touches the winner's sidecar."""
        path = self._data_path(key)
        tmp, digest, _ = self._write_temp(key, path.parent, io.BytesIO(data))
        try:
            st = os.stat(tmp)
            try:
                os.link(tmp, path)
            except FileExistsError:
                if path.is_dir():
                    raise _directory_conflict(key) from None
                return False
            except (IsADirectoryError, NotADirectoryError) as exc:
                raise _directory_conflict(key) from exc
            except OSError as exc:  # e.g. a filesystem without hard links
                raise StoreError(f"cannot create {key!r} in {self!r} with a hard link: {exc}") from exc
            _fsync_dir(path.parent)
            self._write_meta(key, _meta_record(st, digest, content_type))
            return True
        finally:
            _unlink_quietly(tmp)

    def delete(self, key: str) -> None:
        path = self._data_path(key)
        for p in (path, self._meta_path(key)):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                p.unlink()
        self._prune_empty_dirs(path.parent, self.root)
        self._prune_empty_dirs(self._meta_path(key).parent, self.root / META_DIR)

    # Reads ---------------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """The open file itself (a context manager); it keeps reading the version it opened even if
        the key is replaced meanwhile."""
        path = self._data_path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object at key {key!r} in the store.") from None

    def stat(self, key: str) -> ObjectInfo:
        path = self._data_path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no object at key {key!r} in the store.") from None
        if not _is_file(st):
            raise NotFound(f"no object at key {key!r} in the store (it is a directory).")
        meta = self._read_meta(key)
        if meta is not None and _meta_matches(meta, st):
            return ObjectInfo(key=key, size=st.st_size, sha256=meta["sha256"], modified=_mtime(st))
        return self._rehash(key, meta)

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        # Walk only the deepest directory the prefix pins down ("a/b/c" -> "a/b").
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base_rel.split("/", 1)[0] == META_DIR:
            return iter([])
        keys = [k for k in self._walk(base_rel) if k.startswith(prefix)]
        return iter(sorted(keys))

    # Helpers -------------------------------------------------------------------------------------

    def _data_path(self, key: str) -> Path:
        check_key(key)
        parts = key.split("/")
        if parts[0] == META_DIR or any(p.startswith(TEMP_PREFIX) for p in parts):
            raise InvalidInput(
                f"store key {key!r} is reserved by the local store: its first part may not be "
                f"{META_DIR!r} and no part may start with {TEMP_PREFIX!r}."
            )
        return self.root.joinpath(*parts)

    def _meta_path(self, key: str) -> Path:
        return self.root.joinpath(META_DIR, *key.split("/"))

    def _private_tops(self) -> list[Path]:
        """The top folders of :data:`PRIVATE_PREFIXES`, of the objects and of their sidecars."""
        tops = [prefix.rstrip("/").split("/") for prefix in PRIVATE_PREFIXES]
        return [base.joinpath(*parts) for parts in tops for base in (self.root, self.root / META_DIR)]

    def _seal(self, key: str, directory: Path) -> None:
        """For a private ``key``: its folders 0700, from ``directory`` (where its file or sidecar is)
        up to the top folder of its prefix."""
        for top in self._private_tops():
            if directory == top or top in directory.parents:
                while True:
                    _narrow(directory, PRIVATE_DIR_MODE)
                    if directory == top:
                        return
                    directory = directory.parent

    def _write_temp(self, key: str, directory: Path, stream: BinaryIO) -> tuple[Path, str, int]:
        """Stream ``stream`` into a new fsynced temp file in ``directory``; return it, its hash, its size."""
        fd, tmp = _mkstemp_in(key, directory)
        digest = hashlib.sha256()
        size = 0
        try:
            if _is_private(key):
                self._seal(key, directory)
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(fd, PRIVATE_FILE_MODE if _is_private(key) else _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, digest.hexdigest(), size

    def _write_meta(self, key: str, record: dict[str, Any]) -> None:
        path = self._meta_path(key)
        fd, tmp = _mkstemp_in(key, path.parent)  # mkstemp: 0600
        try:
            if _is_private(key):
                self._seal(key, path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, sort_keys=True)
            _replace(key, tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._meta_path(key).read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _rehash(self, key: str, old_meta: dict[str, Any] | None) -> ObjectInfo:
        """Hash the file as it is now (through one open descriptor, so size, mtime and hash describe
        one inode) and refresh the sidecar."""
        with self.open(key) as f:
            st = os.fstat(f.fileno())
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
        content_type = (old_meta or {}).get("content_type", "application/octet-stream")
        with contextlib.suppress(OSError):
            self._write_meta(key, _meta_record(st, sha, content_type))
        return ObjectInfo(key=key, size=st.st_size, sha256=sha, modified=_mtime(st))

    def _walk(self, base_rel: str) -> Iterator[str]:
        """Every object key under ``root/base_rel``, unordered, skipping temp files and ``.meta``."""
        start = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        stack = [(start, base_rel)]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) or (not rel and entry.name == META_DIR):
                    continue
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), key))
                elif entry.is_file():
                    yield key

    @staticmethod
    def _prune_empty_dirs(directory: Path, stop: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, never ``stop`` or above it."""
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _mkstemp_in(key: str, directory: Path) -> tuple[int, Path]:
    """Create a ``.tmp-`` file in ``directory``, creating the directory first. Retries because a
    concurrent delete may prune the (then empty) directory between the two steps."""
    for attempt in range(_MKDIR_ATTEMPTS):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
            return fd, Path(name)
        except FileNotFoundError:
            if attempt == _MKDIR_ATTEMPTS - 1:
                raise
        except (FileExistsError, NotADirectoryError) as exc:
            raise Conflict(f"cannot write {key!r}: a part of its path is an existing object ({exc}).") from exc
    raise AssertionError("unreachable")


def _replace(key: str, tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise _directory_conflict(key) from exc


def _directory_conflict(key: str) -> Conflict:
    return Conflict(f"cannot write {key!r}: its path is a directory holding other objects.")


def _meta_record(st: os.stat_result, sha256: str, content_type: str) -> dict[str, Any]:
    return {
        "sha256": sha256,
        "size": st.st_size,
        "ino": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
        "content_type": content_type,
    }


def _meta_matches(meta: dict[str, Any], st: os.stat_result) -> bool:
    return (
        isinstance(meta.get("sha256"), str)
        and meta.get("size") == st.st_size
        and meta.get("ino") == st.st_ino
        and meta.get("mtime_ns") == st.st_mtime_ns
    )


def _is_file(st: os.stat_result) -> bool:
    import stat as stat_mod

    return stat_mod.S_ISREG(st.st_mode)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=timezone.utc)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
