"""The object-store contract, run against every backend (``store`` is parametrized in conftest), then
a few checks specific to one backend."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from medsynth.core.errors import Conflict, InvalidInput, NotFound, StoreError
from medsynth.core.settings import Settings, StoreBackend
from medsynth.store import ObjectStore, open_store
from medsynth.store.base import CHUNK
from medsynth.store.local import LocalStore
from medsynth.store.s3 import PART_SIZE, S3Store

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GeneratedStream:
    """A non-seekable reader yielding ``size`` pseudo-random bytes, hashing what it hands out."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.remaining = size
        self.block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
        self.counter = 0
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n < 0 else min(n, self.remaining, len(self.block))
        self.counter += 1
        chunk = (self.counter.to_bytes(8, "big") + self.block)[:n]
        self.remaining -= len(chunk)
        self.digest.update(chunk)
        return chunk


# Round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 40], ids=["empty", "small", "10k"])
def test_bytes_round_trip(store: ObjectStore, data: bytes) -> None:
    info = store.put_bytes("d/blob.bin", data)
    assert store.get_bytes("d/blob.bin") == data
    assert (info.key, info.size, info.sha256) == ("d/blob.bin", len(data), sha(data))


def test_json_round_trip(store: ObjectStore) -> None:
    obj = {"name": "knee", "shape": [12, 256, 256], "spacing": 0.5, "nested": {"ok": True, "none": None}}
    store.put_json("datasets/knee/manifest.json", obj)
    assert store.get_json("datasets/knee/manifest.json") == obj
    assert json.loads(store.get_bytes("datasets/knee/manifest.json")) == obj


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put_bytes("k", b"first version, longer")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    info = store.stat("k")
    assert (info.size, info.sha256) == (6, sha(b"second"))
    assert list(store.list()) == ["k"]


def test_stat_matches_hashlib(store: ObjectStore) -> None:
    data = os.urandom(123_457)
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    put = store.put_stream("a/b/c.bin", io.BytesIO(data))
    info = store.stat("a/b/c.bin")
    assert info.key == "a/b/c.bin"
    assert info.size == len(data)
    assert info.sha256 == sha(data)
    assert (put.key, put.size, put.sha256) == (info.key, info.size, info.sha256)
    assert info.modified.tzinfo is not None
    assert before <= info.modified <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert abs(put.modified - info.modified) < timedelta(seconds=5)
    assert store.exists("a/b/c.bin")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.stat("no/such/key"),
        lambda s: s.open("no/such/key"),
        lambda s: s.get_bytes("no/such/key"),
        lambda s: s.get_json("no/such/key"),
    ],
    ids=["stat", "open", "get_bytes", "get_json"],
)
def test_missing_key_raises_not_found(store: ObjectStore, call: Callable[[ObjectStore], Any]) -> None:
    store.put_bytes("no/such/other", b"x")  # a neighbour exists; the key itself does not
    with pytest.raises(NotFound, match="no/such/key"):
        call(store)
    assert not store.exists("no/such/key")


def test_directory_like_key_is_not_an_object(store: ObjectStore) -> None:
    store.put_bytes("dir/child", b"x")
    with pytest.raises(NotFound):
        store.stat("dir")
    with pytest.raises(NotFound):
        store.open("dir")


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put_bytes("x/y", b"1")
    store.put_bytes("x/z", b"2")
    store.delete("x/y")
    assert not store.exists("x/y")
    with pytest.raises(NotFound):
        store.get_bytes("x/y")
    store.delete("x/y")
    store.delete("never/there")
    assert list(store.list()) == ["x/z"]
    store.put_bytes("x/y", b"3")  # a deleted key can be written again
    assert store.get_bytes("x/y") == b"3"


# Listing ------------------------------------------------------------------------------------------

KEYS = ["a/b/x", "a/bc", "a/c", "a/b/y/z", "b", "ab", "a/b/a", "A"]


def test_list_everything_sorted(store: ObjectStore) -> None:
    for key in reversed(KEYS):
        store.put_bytes(key, key.encode())
    assert list(store.list()) == sorted(KEYS)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a/b", ["a/b/a", "a/b/x", "a/b/y/z", "a/bc"]),
        ("a/b/", ["a/b/a", "a/b/x", "a/b/y/z"]),
        ("a/", ["a/b/a", "a/b/x", "a/b/y/z", "a/bc", "a/c"]),
        ("a", ["a/b/a", "a/b/x", "a/b/y/z", "a/bc", "a/c", "ab"]),
        ("a/c", ["a/c"]),
        ("a/b/y/z", ["a/b/y/z"]),
        ("a/d", []),
        ("zzz/", []),
    ],
)
def test_list_by_prefix_is_exact_and_sorted(store: ObjectStore, prefix: str, expected: list[str]) -> None:
    for key in KEYS:
        store.put_bytes(key, b"")
    assert list(store.list(prefix)) == expected


def test_list_of_empty_store(store: ObjectStore) -> None:
    assert list(store.list()) == []
    assert list(store.list("a/")) == []


@pytest.mark.parametrize("prefix", ["/", "/a", "../", "a//", "a/../b", "a\\b"])
def test_bad_prefix_is_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        list(store.list(prefix))


# Key validation -----------------------------------------------------------------------------------

BAD_KEYS = ["../x", "/abs", "a//b", "", "a/", "a/./b", "x/..", "a\\b", "nul\x00"]
OPERATIONS: dict[str, Callable[[ObjectStore, str, Path], Any]] = {
    "put_bytes": lambda s, k, _: s.put_bytes(k, b"x"),
    "put_stream": lambda s, k, _: s.put_stream(k, io.BytesIO(b"x")),
    "put_json": lambda s, k, _: s.put_json(k, {}),
    "put_if_absent": lambda s, k, _: s.put_if_absent(k, b"x"),
    "open": lambda s, k, _: s.open(k),
    "get_bytes": lambda s, k, _: s.get_bytes(k),
    "stat": lambda s, k, _: s.stat(k),
    "exists": lambda s, k, _: s.exists(k),
    "delete": lambda s, k, _: s.delete(k),
    "download": lambda s, k, p: s.download(k, p / "out"),
}


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(store: ObjectStore, key: str, op: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        OPERATIONS[op](store, key, tmp_path)
    assert repr(key) in str(caught.value)
    assert list(store.list()) == []


# put_if_absent ------------------------------------------------------------------------------------


def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    assert store.put_if_absent("locks/job-1", b"owner A") is True
    assert store.put_if_absent("locks/job-1", b"owner B") is False
    assert store.put_if_absent("locks/job-1", b"owner A") is False
    assert store.get_bytes("locks/job-1") == b"owner A"
    info = store.stat("locks/job-1")
    assert (info.size, info.sha256) == (7, sha(b"owner A"))
    assert list(store.list()) == ["locks/job-1"]


def test_put_if_absent_does_not_replace_a_streamed_object(store: ObjectStore) -> None:
    store.put_bytes("k", b"streamed")
    assert store.put_if_absent("k", b"other") is False
    assert store.get_bytes("k") == b"streamed"
    store.delete("k")
    assert store.put_if_absent("k", b"other") is True
    assert store.get_bytes("k") == b"other"


@pytest.mark.parametrize("round_", range(3))
def test_put_if_absent_race_has_exactly_one_winner(store: ObjectStore, round_: int) -> None:
    contenders = 8
    key = f"races/r{round_}"
    payloads = [f"contender {i} ".encode() * (i + 1) for i in range(contenders)]
    barrier = threading.Barrier(contenders)
    results: dict[int, bool | BaseException] = {}

    def contend(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.put_if_absent(key, payloads[i])
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, bool) for r in results.values()), results
    winners = [i for i, won in results.items() if won is True]
    assert len(winners) == 1, results
    assert store.get_bytes(key) == payloads[winners[0]]
    assert store.stat(key).sha256 == sha(payloads[winners[0]])


# Streaming and atomicity --------------------------------------------------------------------------


def test_large_stream_round_trip_reads_in_chunks(store: ObjectStore) -> None:
    size = 20 * MiB + 12_345  # more than two S3 parts, not a multiple of anything
    source = GeneratedStream(size, seed=1)
    info = store.put_stream("big/volume.raw", source)  # a plain reader: no seek, no len
    expected = source.digest.hexdigest()
    assert (info.size, info.sha256) == (size, expected)

    digest, total = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        with store.open("big/volume.raw") as f:
            while chunk := f.read(CHUNK):
                assert len(chunk) <= CHUNK
                digest.update(chunk)
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (total, digest.hexdigest()) == (size, expected)
    assert peak < 8 * MiB, f"reading a {size}-byte object in chunks peaked at {peak} bytes"
    stat = store.stat("big/volume.raw")
    assert (stat.size, stat.sha256) == (size, expected)
    assert store.put_if_absent("big/volume.raw", b"x") is False


def test_download_to_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 17)
    store.put_bytes("scans/s1.nii", data)
    target = tmp_path / "downloaded.nii"
    info = store.download("scans/s1.nii", target)
    assert target.read_bytes() == data
    assert (info.key, info.size, info.sha256) == ("scans/s1.nii", len(data), sha(data))
    with pytest.raises(NotFound):
        store.download("scans/missing.nii", tmp_path / "missing.nii")
    assert not (tmp_path / "missing.nii").exists()


def test_readers_never_see_a_partial_write(store: ObjectStore) -> None:
    """A writer keeps replacing one key with whole contents of different sizes (each larger than an
    S3 part, so S3 uploads are multipart) while the test polls it; every read must be one whole version,
    and every stat one version's (size, sha256) pair."""
    versions = [os.urandom(PART_SIZE + 1 + i * 100_003) for i in range(3)]
    sizes_by_hash = {sha(v): len(v) for v in versions}
    store.put_bytes("hot/key", versions[0])
    writes, done, failures = 8, threading.Event(), []

    def writer() -> None:
        try:
            for i in range(1, writes + 1):
                store.put_bytes("hot/key", versions[i % len(versions)])
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        while not done.is_set() or reads < 3:
            data = store.get_bytes("hot/key")
            assert sha(data) in sizes_by_hash, f"read {len(data)} bytes that are no written version"
            info = store.stat("hot/key")
            assert sizes_by_hash.get(info.sha256) == info.size, f"stat mixes versions: {info}"
            reads += 1
    finally:
        thread.join()
    assert not failures, failures
    assert store.get_bytes("hot/key") == versions[writes % len(versions)]


# Local backend specifics --------------------------------------------------------------------------


def test_local_objects_are_plain_files(local_store: LocalStore) -> None:
    local_store.put_bytes("datasets/knee/v1.json", b"{}")
    local_store.put_if_absent("locks/a", b"A")
    assert (local_store.root / "datasets" / "knee" / "v1.json").read_bytes() == b"{}"
    assert (local_store.root / "locks" / "a").read_bytes() == b"A"
    assert (local_store.root / "locks" / "a").stat().st_mode & 0o044 == 0o044 & ~_umask()
    leftovers = [p for p in local_store.root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert (local_store.root / ".meta").is_dir()
    assert list(local_store.list()) == ["datasets/knee/v1.json", "locks/a"]


def test_local_list_skips_temp_files_and_meta(local_store: LocalStore) -> None:
    local_store.put_bytes("a/x", b"1")
    (local_store.root / "a" / ".tmp-abandoned").write_bytes(b"half")
    (local_store.root / ".tmp-top").write_bytes(b"half")
    assert list(local_store.list()) == ["a/x"]
    assert list(local_store.list(".meta")) == []


def test_local_stat_recomputes_a_stale_or_missing_sidecar(local_store: LocalStore) -> None:
    local_store.put_bytes("k", b"original")
    path = local_store.root / "k"
    path.write_bytes(b"edited by hand, longer")  # an operator edits the file in place
    assert local_store.stat("k").sha256 == sha(b"edited by hand, longer")

    path.write_bytes(b"same length, other bytes!!")
    path.write_bytes(b"same length, OTHER bytes!!")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, later mtime
    assert local_store.stat("k").sha256 == sha(b"same length, OTHER bytes!!")

    (local_store.root / ".meta" / "k").unlink()
    assert local_store.stat("k").sha256 == sha(b"same length, OTHER bytes!!")
    assert (local_store.root / ".meta" / "k").exists()  # refreshed


def test_local_stat_trusts_a_matching_sidecar(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    local_store.put_bytes("k", b"data")
    monkeypatch.setattr(local_store, "_rehash", lambda *a: pytest.fail("stat re-read a file whose sidecar matches"))
    assert local_store.stat("k").sha256 == sha(b"data")


@pytest.mark.parametrize("key", [".meta/x", "a/.tmp-x", ".tmp-y"])
def test_local_reserved_keys_are_rejected(local_store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        local_store.put_bytes(key, b"x")


def test_local_file_directory_collision_is_a_conflict(local_store: LocalStore) -> None:
    local_store.put_bytes("a", b"file")
    with pytest.raises(Conflict, match="'a/b'"):
        local_store.put_bytes("a/b", b"x")
    local_store.put_bytes("d/e", b"x")
    with pytest.raises(Conflict, match="'d'"):
        local_store.put_bytes("d", b"x")
    with pytest.raises(Conflict, match="'d'"):
        local_store.put_if_absent("d", b"x")


def test_local_delete_prunes_empty_directories(local_store: LocalStore) -> None:
    local_store.put_bytes("p/q/r", b"x")
    local_store.put_bytes("p/s", b"y")
    local_store.delete("p/q/r")
    assert not (local_store.root / "p" / "q").exists()
    assert (local_store.root / "p" / "s").exists()
    assert local_store.root.exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# S3 backend specifics -----------------------------------------------------------------------------


def test_s3_keeps_the_hash_in_object_metadata(s3_store: S3Store, s3_server: Any) -> None:
    s3_store.put_bytes("m/small", b"small")
    s3_store.put_stream("m/large", GeneratedStream(PART_SIZE + 5, seed=2))  # multipart
    s3_store.put_if_absent("m/cond", b"cond")
    client = s3_server.client()
    for key in ("m/small", "m/large", "m/cond"):
        header = client.stat_object(s3_store.bucket, key).metadata.get("x-amz-meta-sha256")
        assert header == s3_store.stat(key).sha256
    assert client.stat_object(s3_store.bucket, "m/cond").metadata["x-amz-meta-sha256"] == sha(b"cond")


def test_s3_stat_hashes_an_object_written_by_another_tool(s3_store: S3Store, s3_server: Any) -> None:
    data = os.urandom(50_000)
    s3_server.client().put_object(s3_store.bucket, "foreign/obj", io.BytesIO(data), len(data))
    info = s3_store.stat("foreign/obj")
    assert (info.size, info.sha256) == (len(data), sha(data))


def test_s3_server_honours_if_none_match(s3_store: S3Store, s3_server: Any) -> None:
    """The raw conditional write put_if_absent relies on: the second PUT gets 412."""
    from minio.error import S3Error

    client = s3_server.client()
    client._put_object(s3_store.bucket, "cond/raw", b"1", {"If-None-Match": "*"})
    with pytest.raises(S3Error) as caught:
        client._put_object(s3_store.bucket, "cond/raw", b"2", {"If-None-Match": "*"})
    assert (caught.value.code, caught.value.response.status) == ("PreconditionFailed", 412)
    assert s3_store.get_bytes("cond/raw") == b"1"


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_s3_server_refuses_wrong_credentials(s3_store: S3Store, s3_server: Any, which: str) -> None:
    """The S3 server behind the tests checks signatures (an emulator that accepts any key would hide a
    misconfigured deployment)."""
    s3_store.put_bytes("creds/k", b"v")
    access, secret = s3_server.access_key, s3_server.secret_key
    access, secret = (access, secret + "x") if which == "secret" else ("nobody", secret)
    stranger = S3Store(s3_server.endpoint, s3_store.bucket, access, secret)
    for call in (lambda: stranger.get_bytes("creds/k"), lambda: stranger.put_bytes("creds/new", b"x")):
        with pytest.raises(StoreError):
            call()
    assert not s3_store.exists("creds/new")


def test_s3_unreachable_endpoint_is_a_store_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    store = S3Store(f"127.0.0.1:{port}", "medsynth", "k", "s")
    started = time.monotonic()
    for call in (lambda: store.stat("k"), lambda: store.put_bytes("k", b"x"), store.ensure_bucket):
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
            call()
    assert time.monotonic() - started < 15


def test_s3_missing_bucket_is_a_store_error_naming_it(s3_server: Any) -> None:
    store = S3Store(s3_server.endpoint, "medsynth-never-created", s3_server.access_key, s3_server.secret_key)
    with pytest.raises(StoreError, match="medsynth-never-created"):
        store.put_bytes("k", b"x")
    with pytest.raises(StoreError, match="medsynth-never-created"):
        list(store.list())


@pytest.mark.parametrize("bucket", ["", "UPPER", "a", "bad_bucket"])
def test_s3_bad_bucket_name_is_invalid_input(bucket: str) -> None:
    with pytest.raises(InvalidInput, match=repr(bucket)):
        S3Store("localhost:9000", bucket, "k", "s")


# Factory ------------------------------------------------------------------------------------------


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(Settings(store=StoreBackend.local, home=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "store"
    store.put_bytes("k", b"v")
    assert (tmp_path / "store" / "k").read_bytes() == b"v"


def test_open_store_s3_creates_the_bucket(s3_server: Any) -> None:
    settings = Settings(
        store=StoreBackend.s3,
        s3_endpoint=s3_server.endpoint,
        s3_bucket="medsynth-factory-test",
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert s3_server.client().bucket_exists("medsynth-factory-test")
    store.put_bytes("k", b"v")
    assert open_store(settings).get_bytes("k") == b"v"  # ensure_bucket on an existing bucket is fine
