"""Large uploads in bounded memory: a zip's declared inflated size is checked before any of it is
inflated, and uploads that will hold a large volume in memory take turns (or are answered 503)."""

from __future__ import annotations

import asyncio
import io
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_ingest_app
from medsynth.api.routes.dicom import ZIP_RATIO_FLOOR, dicom_files
from medsynth.api.upload_stream import FilesForm, UploadSlots, upload_slots
from medsynth.core.errors import Busy, TooLarge
from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload

from platform_fixtures import bearer

GIB = 1024**3


def zip_declaring(declared: int, member: bytes = b"DICM" * 256) -> bytes:
    """A small zip of one member whose headers (local and central directory) say it inflates to ``declared`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("study/0001.dcm", member)
    data = bytearray(buffer.getvalue())
    struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, declared)
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, declared)
    return bytes(data)


@pytest.fixture
def never_inflate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any zip member is opened for reading (writing one, as the tests do, still works)."""
    original = zipfile.ZipFile.open

    def open_for_writing_only(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            raise AssertionError(f"zip member {name!r} was opened for inflating")
        return original(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_for_writing_only)


def files_form(folder: Path, **uploads: bytes) -> FilesForm:
    form = FilesForm(tempfile.TemporaryDirectory(dir=folder))
    for name, data in uploads.items():
        path = Path(form.folder.name) / name
        path.write_bytes(data)
        form.files.append(Upload(name, path=path))
    return form


def test_a_zip_declaring_more_than_the_limit_is_refused_before_it_is_inflated(tmp_path: Path, never_inflate) -> None:
    bomb = zip_declaring(3 * 10**9)
    assert len(bomb) < 2048
    form = files_form(tmp_path, **{"study.zip": bomb})
    with pytest.raises(TooLarge) as caught:
        list(dicom_files(form, limit=2 * GIB, max_ratio=10**9))
    assert str(caught.value) == (f"study.zip declares 3000000000 bytes inflated in 1 files, more than the {2 * GIB}-byte limit "
                                 "(MEDSYNTH_MAX_DICOM_UPLOAD_BYTES); refused before inflating it.")


def stored_zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_the_limit_counts_every_zip_of_the_upload(tmp_path: Path) -> None:
    form = files_form(tmp_path, **{"a.zip": stored_zip(one=bytes(2000)), "b.zip": stored_zip(two=bytes(1500), three=bytes(500))})
    read = []
    with pytest.raises(TooLarge, match=r"b.zip declares 2000 bytes inflated in 2 files \(4000 with the upload's other zips\), "
                                       r"more than the 3000-byte limit"):
        for name, _ in dicom_files(form, limit=3000, max_ratio=10**9):
            read.append(name)
    assert read == ["a.zip:one"]  # nothing of b.zip


def test_a_zip_that_compresses_like_a_bomb_is_refused_before_it_is_inflated(tmp_path: Path, never_inflate) -> None:
    bomb = zip_declaring(392 * 10**6)  # 4 x 98 MB "DICOM" in a zip of a few hundred bytes
    form = files_form(tmp_path, **{"scans.zip": bomb})
    with pytest.raises(TooLarge, match=rf"scans.zip declares 392000000 bytes inflated from {len(bomb)} bytes \(\d+:1\), more than the "
                                       r"50:1 MEDSYNTH_MAX_ZIP_RATIO allows"):
        list(dicom_files(form, limit=2 * GIB, max_ratio=50))


def test_small_or_ordinary_zips_are_read(tmp_path: Path) -> None:
    members = {f"s/{i:04d}.dcm": bytes(1000) + bytes([i]) for i in range(3)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:  # compresses ~100:1, but is far below the floor
        for name, data in members.items():
            archive.writestr(name, data)
    assert sum(len(d) for d in members.values()) < ZIP_RATIO_FLOOR
    form = files_form(tmp_path, **{"small.zip": buffer.getvalue(), "plain.dcm": b"DICM"})
    got = dict(dicom_files(form, limit=2 * GIB, max_ratio=50))
    assert got == {**{f"small.zip:{k}": v for k, v in members.items()}, "plain.dcm": b"DICM"}


# --- slots for large uploads ------------------------------------------------------------------------


def test_a_large_upload_is_refused_while_the_slots_are_taken() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, large_bytes=1000, wait_s=0)
        async with slots.hold(5000):
            with pytest.raises(Busy) as caught:
                async with slots.hold(2000):
                    pytest.fail("a second large upload got in")
            assert caught.value.retry_after_s >= 1
            assert "2000 bytes" in str(caught.value) and "MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS" in str(caught.value)
            async with slots.hold(999):  # small: needs no slot
                pass
        async with slots.hold(5000):  # given back
            pass

    asyncio.run(scenario())


def test_a_large_upload_waits_for_its_turn() -> None:
    async def scenario() -> list[str]:
        slots = UploadSlots(1, large_bytes=1, wait_s=600)
        order: list[str] = []
        first_in, let_go = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with slots.hold(10):
                order.append("first in")
                first_in.set()
                await let_go.wait()
                order.append("first out")

        async def second() -> None:
            await first_in.wait()
            order.append("second waits")
            async with slots.hold(10):
                order.append("second in")

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        while "second waits" not in order:
            await asyncio.sleep(0)
        for _ in range(10):  # the second stays blocked however often it is scheduled
            await asyncio.sleep(0)
        assert order == ["first in", "second waits"]
        let_go.set()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["first in", "second waits", "first out", "second in"]


# --- through the service ----------------------------------------------------------------------------


@pytest.fixture
def one_slot(platform_settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    settings = platform_settings.model_copy(update={"large_upload_bytes": 1, "max_concurrent_large_uploads": 1,
                                                    "large_upload_wait_s": 0})
    with TestClient(create_ingest_app(settings), headers=bearer(settings, "uploader")) as client:
        yield client, settings


def test_the_service_answers_503_while_its_large_upload_slots_are_taken(one_slot) -> None:
    client, settings = one_slot
    scan = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 8), dtype=np.float32), np.eye(4)).to_bytes()
    taken = upload_slots(client.app, settings).hold(1)
    client.portal.call(taken.__aenter__)  # another upload is being checked and stored
    try:
        r = client.post("/v1/datasets/busy/scans", data={"patient_id": "p1"}, files={"image": ("scan.nii", scan)})
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1 and "MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS" in r.json()["detail"]
        r = client.post("/v1/datasets/busy/dicom", files=[("file", ("x.dcm", b"DICM" * 10, "application/dicom"))])
        assert r.status_code == 503, r.text
    finally:
        client.portal.call(taken.__aexit__, None, None, None)
    r = client.post("/v1/datasets/busy/scans", data={"patient_id": "p1"}, files={"image": ("scan.nii", scan)})
    assert r.status_code == 201, r.text


def test_the_service_refuses_a_zip_bomb_with_413_naming_its_sizes(one_slot, never_inflate) -> None:
    client, _ = one_slot
    bomb = zip_declaring(392 * 10**6)
    r = client.post("/v1/datasets/bombs/dicom", files=[("file", ("scans.zip", bomb, "application/zip"))])
    assert r.status_code == 413, r.text
    assert f"scans.zip declares 392000000 bytes inflated from {len(bomb)} bytes" in r.json()["detail"]
