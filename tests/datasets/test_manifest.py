"""Dataset manifests at a flat cost per upload: entries claimed one version at a time, scan-id claims
for duplicates, snapshots every SNAPSHOT_EVERY versions; every version reads back as the list of its
first scans; datasets written in the older layout (a full manifest per version) keep working."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, NotFound
from medsynth.datasets import manifest as m
from medsynth.datasets.ingest import commit_scans
from medsynth.datasets.manifest import DatasetManifest, ScanEntry, add_scan, add_scans, latest_version, list_versions, load_manifest
from medsynth.store.local import LocalStore


def scan(i: int, patient: str | None = None) -> ScanEntry:
    sid = f"{i:016x}"
    base = f"datasets/d/scans/{patient or f'p{i}'}/{sid}/"
    return ScanEntry(scan_id=sid, patient_id=patient or f"p{i}", image_sha256=sid * 4, original_image_key=base + "original/image.nii.gz",
                     image_key=base + "canonical/image.nii.gz", shape=[8, 8, 4], spacing=[1.0, 1.0, 1.0], orientation="RAS",
                     original_filename=f"s{i}.nii.gz")


class CountingStore(LocalStore):
    """The local store, counting what each write costs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes, self.written = 0, 0

    def put_bytes(self, key, data, **kw):
        self.writes, self.written = self.writes + 1, self.written + len(data)
        return super().put_bytes(key, data, **kw)

    def put_if_absent(self, key, data, **kw):
        self.writes, self.written = self.writes + 1, self.written + len(data)
        return super().put_if_absent(key, data, **kw)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


def test_every_version_reads_back_and_snapshots_come_every_n(store: CountingStore, monkeypatch) -> None:
    monkeypatch.setattr(m, "SNAPSHOT_EVERY", 5)
    for i in range(1, 13):
        assert add_scan(store, "d", scan(i)).version == i
    assert m._snapshots(store, "d") == [5, 10]
    for v in range(1, 13):
        assert [s.scan_id for s in load_manifest(store, "d", v).scans] == [scan(i).scan_id for i in range(1, v + 1)]
    assert load_manifest(store, "d").version == 12 and list_versions(store, "d") == list(range(1, 13))
    with pytest.raises(NotFound, match="no version 13"):
        load_manifest(store, "d", 13)


def test_an_upload_costs_the_same_at_the_200th_scan_as_at_the_first(store: CountingStore) -> None:
    """The old layout rewrote the whole manifest each time: bytes per upload grew with the dataset."""
    costs = []
    for i in range(1, 201):
        before = (store.writes, store.written)
        add_scan(store, "d", scan(i))
        if i % m.SNAPSHOT_EVERY:  # a snapshot upload is the amortised exception
            costs.append((store.writes - before[0], store.written - before[1]))
    assert len({w for w, _ in costs}) == 1  # the same number of objects every time
    assert max(b for _, b in costs) < 1.2 * min(b for _, b in costs)


def test_a_duplicate_image_is_refused_with_who_holds_it(store: CountingStore) -> None:
    add_scan(store, "d", scan(1, "alice"))
    with pytest.raises(Conflict, match="patient 'alice'"):
        add_scan(store, "d", scan(1, "bob"))
    assert latest_version(store, "d") == 1


def test_concurrent_commits_take_distinct_versions(store: CountingStore) -> None:
    errors: list[BaseException] = []

    def commit(i: int) -> None:
        try:
            add_scan(store, "d", scan(i))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(1, 25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(s.scan_id for s in load_manifest(store, "d").scans) == sorted(scan(i).scan_id for i in range(1, 25))


def test_a_stale_head_hint_is_probed_past(store: CountingStore) -> None:
    for i in range(1, 4):
        add_scan(store, "d", scan(i))
    store.put_json("datasets/d/head.json", {"version": 1})
    assert latest_version(store, "d") == 3 and add_scan(store, "d", scan(4)).version == 4


def test_a_claim_whose_upload_died_is_taken_over_only_once_stale(store: CountingStore) -> None:
    claim = m._Claim(scan_id=scan(1).scan_id, patient_id="p1", original_filename="s1.nii.gz", claimed_at=utcnow())
    store.put_json(m._claim_key("d", scan(1).scan_id), claim.model_dump(mode="json"))  # no entry: the uploader died
    with pytest.raises(Conflict):
        add_scan(store, "d", scan(1))
    claim.claimed_at = utcnow() - m.STALE_CLAIM - timedelta(seconds=1)
    store.put_json(m._claim_key("d", scan(1).scan_id), claim.model_dump(mode="json"))
    assert add_scan(store, "d", scan(1)).version == 1


def test_a_failed_commit_releases_its_claim(store: CountingStore, monkeypatch) -> None:
    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(m, "_append", broken)
    with pytest.raises(OSError):
        add_scan(store, "d", scan(1))
    assert m.find_scan(store, "d", scan(1).scan_id) is None


def test_the_scans_of_one_upload_enter_as_one_version_or_not_at_all(store: CountingStore) -> None:
    assert add_scans(store, "d", [scan(1), scan(2)]).version == 1
    assert [s.scan_id for s in load_manifest(store, "d", 1).scans] == [scan(1).scan_id, scan(2).scan_id]
    with pytest.raises(Conflict, match="patient 'p1'"):  # one of them is there already: none is claimed
        add_scans(store, "d", [scan(3), scan(1, "p3")])
    with pytest.raises(Conflict, match="s4.nii.gz and s4.nii.gz are one image"):
        add_scans(store, "d", [scan(4), scan(4)])
    assert m.find_scan(store, "d", scan(3).scan_id) is None and m.find_scan(store, "d", scan(4).scan_id) is None
    assert add_scan(store, "d", scan(3)).version == 2


def test_a_commit_that_fails_midway_leaves_nothing(store: CountingStore, monkeypatch) -> None:
    """The second scan's object cannot be written: the first one's is removed and neither stays claimed."""
    objects = [{f"datasets/d/scans/p{i}/{scan(i).scan_id}/canonical/image.nii.gz": b"voxels"} for i in (1, 2)]
    real = store.put_bytes

    def failing(key, data, **kw):
        if "/p2/" in key:
            raise OSError("disk full")
        return real(key, data, **kw)

    monkeypatch.setattr(store, "put_bytes", failing)
    with pytest.raises(OSError):
        commit_scans(store, "d", [(scan(1), objects[0]), (scan(2), objects[1])])
    assert list(store.list("datasets/d/")) == []


def test_a_dataset_in_the_older_layout_reads_and_grows(store: CountingStore) -> None:
    """Full manifests at every version and nothing else, as written before entries existed."""
    scans = [scan(i) for i in range(1, 4)]
    for v in range(1, 4):
        old = DatasetManifest(dataset="d", version=v, scans=scans[:v])
        store.put_bytes(m.manifest_key("d", v), old.model_dump_json().encode())
    assert [s.scan_id for s in load_manifest(store, "d", 2).scans] == [s.scan_id for s in scans[:2]]
    with pytest.raises(Conflict):  # its scans are claimed on the first new commit
        add_scan(store, "d", scan(2, "someone-else"))
    assert add_scan(store, "d", scan(9)).version == 4
    assert [s.scan_id for s in load_manifest(store, "d").scans] == [s.scan_id for s in scans] + [scan(9).scan_id]
