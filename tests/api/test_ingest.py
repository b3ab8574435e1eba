"""NIfTI ingestion through the ingest service's HTTP API, with a real store and a real broker."""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Iterator

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_ingest_app
from medsynth.bus.topics import events_topic
from medsynth.core.settings import Settings
from medsynth.datasets.manifest import list_versions, load_manifest
from medsynth.bus.messages import Event
from medsynth.datasets.phantoms import make_phantom
from medsynth.store import ObjectStore

from platform_fixtures import bearer, consume, live_server


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None, *, gz: bool = True) -> bytes:
    img = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


@pytest.fixture
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_phantom(seed=1, shape=(24, 24, 12))


@pytest.fixture
def client(platform_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_ingest_app(platform_settings), headers=bearer(platform_settings, "uploader")) as c:
        yield c


def upload(client: TestClient, dataset: str, patient: str, image: bytes, label: bytes | None = None, *, name: str = "scan.nii.gz",
           label_name: str = "label.nii.gz"):
    files = {"image": (name, image)}
    if label is not None:
        files["label"] = (label_name, label)
    return client.post(f"/v1/datasets/{dataset}/scans", data={"patient_id": patient}, files=files)


def test_phantom_is_ingested_with_original_canonical_and_manifest(client, phantom, store: ObjectStore, platform_settings: Settings) -> None:
    image, label, affine = phantom
    flipped = affine.copy()
    flipped[0, 0] = -flipped[0, 0]  # stored left-right flipped (LAS): the canonical copy must be RAS
    raw_image = nifti_bytes(image, flipped)
    r = upload(client, "knee", "p001", raw_image, nifti_bytes(label, flipped))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["dataset_version"] == 1 and body["orientation"] == "RAS"
    assert body["label_values"] == [0, 1, 2] and body["shape"] == list(image.shape)
    stored = nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(body["original_image_key"])))
    sent = nib.Nifti1Image.from_bytes(gzip.decompress(raw_image))
    assert np.array_equal(np.asanyarray(stored.dataobj), np.asanyarray(sent.dataobj))  # voxels and affine as sent
    assert np.array_equal(stored.affine, sent.affine) and stored.get_data_dtype() == sent.get_data_dtype()
    canonical = nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(body["image_key"])))
    assert canonical.get_data_dtype() == np.float32
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.asanyarray(canonical.dataobj), image[::-1], rtol=1e-6)
    manifest = load_manifest(store, "knee")
    assert [s.patient_id for s in manifest.scans] == ["p001"] and manifest.version == 1
    assert manifest.scans[0].spacing == pytest.approx([float(abs(x)) for x in np.diag(affine)[:3]])
    events = consume(platform_settings, events_topic(platform_settings.topic_prefix), until=lambda ms: len(ms) >= 1)
    ingested = Event.FromString(events[0].value).scan_ingested
    assert (ingested.dataset, ingested.patient_id, ingested.scan_id) == ("knee", "p001", body["scan_id"])


def test_image_without_label_and_plain_nii(client, phantom) -> None:
    image, _, affine = phantom
    r = upload(client, "brain", "p1", nifti_bytes(image[:, :, 5], affine, gz=False), name="slice.nii")
    assert r.status_code == 201, r.text
    assert r.json()["label_key"] is None and len(r.json()["shape"]) == 2


def _bad_inputs(phantom) -> list[tuple[str, str, dict, int, str]]:
    image, label, affine = phantom
    good, good_label = nifti_bytes(image, affine), nifti_bytes(label, affine)
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    inf = image.copy()
    inf[1, 2, 3] = np.inf
    half = label.astype(np.float32)
    half[5, 5, 5] = 0.5
    negative = label.astype(np.int16)
    negative[5, 5, 5] = -1
    shifted = affine.copy()
    shifted[0, 3] += 10
    no_spacing = nib.Nifti1Header(binaryblock=nifti_bytes(image, affine, gz=False)[:348], check=False)
    no_spacing["pixdim"][1], no_spacing["qform_code"], no_spacing["sform_code"] = 0.0, 0, 0  # nibabel would read 1 mm
    return [
        ("unreadable file", "p", {"image": b"this is not a nifti file at all" * 20}, 422, "not a readable NIfTI"),
        ("truncated file", "p", {"image": good[: len(good) // 2]}, 422, "not a readable NIfTI"),
        ("4D volume", "p", {"image": nifti_bytes(np.zeros((4, 4, 4, 3), np.float32), affine)}, 422, "2D or 3D"),
        ("1D volume", "p", {"image": nifti_bytes(np.zeros((16,), np.float32))}, 422, "2D or 3D"),
        ("NaN voxels", "p", {"image": nifti_bytes(nan, affine)}, 422, "NaN"),
        ("inf voxels", "p", {"image": nifti_bytes(inf, affine)}, 422, "inf"),
        ("non-integer labels", "p", {"image": good, "label": nifti_bytes(half, affine)}, 422, "0.5"),
        ("negative labels", "p", {"image": good, "label": nifti_bytes(negative, affine)}, 422, "-1"),
        ("shape mismatch", "p", {"image": good, "label": nifti_bytes(label[:-2], affine)}, 422, "shape"),
        ("affine mismatch", "p", {"image": good, "label": nifti_bytes(label, shifted)}, 422, "affine"),
        ("path in patient id", "../etc", {"image": good, "label": good_label}, 422, "patient id"),
        ("slash in patient id", "a/b", {"image": good}, 422, "patient id"),
        ("wrong extension", "p", {"image": good, "name": "scan.png"}, 422, ".nii"),
        ("zero pixdim", "p", {"image": no_spacing.binaryblock + nifti_bytes(image, affine, gz=False)[348:], "name": "scan.nii"}, 422,
         "pixdim[1] must be a positive, finite voxel size"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input_is_rejected_and_leaves_nothing(case: int, client, phantom, store: ObjectStore) -> None:
    what, patient, files, status, needle = _bad_inputs(phantom)[case]
    r = upload(client, "ds", patient, files["image"], files.get("label"), name=files.get("name", "scan.nii.gz"))
    assert r.status_code == status, (what, r.status_code, r.text)
    assert needle in r.json()["detail"], (what, r.json()["detail"])
    assert list(store.list("datasets/")) == [], f"{what} left objects behind"


def test_dataset_name_with_path_characters_is_rejected(client, phantom, store: ObjectStore) -> None:
    image, _, affine = phantom
    r = upload(client, "..", "p", nifti_bytes(image, affine))
    assert r.status_code in (404, 422)
    r = upload(client, "bad$name", "p", nifti_bytes(image, affine))
    assert r.status_code == 422 and "dataset name" in r.json()["detail"]
    assert list(store.list("")) == [] or not list(store.list("datasets/"))


def test_upload_over_the_size_limit(platform_settings: Settings, phantom, store: ObjectStore) -> None:
    image, _, affine = phantom
    small = platform_settings.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_ingest_app(small), headers=bearer(small, "uploader")) as c:
        r = upload(c, "ds", "p", nifti_bytes(image + np.random.default_rng(0).random(image.shape, np.float32), affine))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    voxels = platform_settings.model_copy(update={"max_voxels": 100})
    with TestClient(create_ingest_app(voxels), headers=bearer(voxels, "uploader")) as c:
        r = upload(c, "ds", "p", nifti_bytes(image, affine))
    assert r.status_code == 413, r.text
    assert list(store.list("datasets/")) == []


def test_second_upload_of_the_same_scan_is_a_conflict(client, phantom, store: ObjectStore) -> None:
    image, label, affine = phantom
    data = nifti_bytes(image, affine)
    assert upload(client, "ds", "p1", data, nifti_bytes(label, affine)).status_code == 201
    keys = sorted(store.list("datasets/ds/scans/"))
    r = upload(client, "ds", "p2", data)
    assert r.status_code == 409 and "already in dataset" in r.json()["detail"] and "p1" in r.json()["detail"]
    assert sorted(store.list("datasets/ds/scans/")) == keys and list_versions(store, "ds") == [1]


def test_concurrent_uploads_into_one_dataset_all_land(client, store: ObjectStore) -> None:
    n = 12
    scans = [make_phantom(seed=100 + i, shape=(16, 16, 8)) for i in range(n)]
    results: list[int] = [0] * n

    def send(i: int) -> None:
        image, label, affine = scans[i]
        results[i] = upload(client, "busy", f"p{i:02d}", nifti_bytes(image, affine), nifti_bytes(label, affine)).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * n
    manifest = load_manifest(store, "busy")
    assert sorted(s.patient_id for s in manifest.scans) == [f"p{i:02d}" for i in range(n)]
    assert list_versions(store, "busy") == list(range(1, n + 1))


def test_a_race_between_two_labels_of_one_image_stores_the_winners(client, store: ObjectStore) -> None:
    """Two uploads of one image (one patient) with different label maps at once: one is accepted, the
    other is a conflict, and what is stored (original and canonical label) is the accepted upload's, as
    its manifest entry says."""
    for round in range(8):
        image, label, affine = make_phantom(seed=300 + round, shape=(16, 16, 8))
        other = np.where(label > 0, 3, 0).astype(np.uint8)
        image_bytes = nifti_bytes(image, affine)
        labels = [nifti_bytes(label.astype(np.uint8), affine, gz=False), nifti_bytes(other, affine, gz=False)]
        start = threading.Barrier(2)
        results: list = [None, None]

        def send(i: int) -> None:
            start.wait()
            results[i] = upload(client, "race", "p1", image_bytes, labels[i], label_name="label.nii")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [201, 409], [r.text for r in results]
        winner = next(i for i, r in enumerate(results) if r.status_code == 201)
        entry = load_manifest(store, "race").scans[-1]
        assert entry.scan_id == results[winner].json()["scan_id"]
        stored = store.get_bytes(entry.original_label_key)
        assert hashlib.sha256(stored).hexdigest() == entry.label_sha256 == hashlib.sha256(labels[winner]).hexdigest(), f"round {round}"
        canonical = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(entry.label_key))).dataobj)
        assert sorted(int(v) for v in np.unique(canonical)) == entry.label_values == ([0, 1, 2], [0, 3])[winner], f"round {round}"


# -- streaming: the body is read as it arrives, with a running cap and the header checked first ------

BOUNDARY = "medsynth-test-boundary"


class Body:
    """A multipart body produced lazily (sent chunked: no Content-Length), counting what was taken."""

    def __init__(self, head: bytes, filler: int, patient: str = "p1") -> None:
        self.head, self.filler, self.patient, self.sent = head, filler, patient, 0

    def __iter__(self):
        prefix = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"patient_id\"\r\n\r\n{self.patient}\r\n"
                  f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scan.nii\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n").encode()
        for chunk in (prefix, self.head):
            self.sent += len(chunk)
            yield chunk
        block = b"\0" * 65536
        for _ in range(self.filler // len(block)):
            self.sent += len(block)
            yield block
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.sent += len(tail)
        yield tail


@pytest.fixture
def small_limit_client(platform_settings: Settings) -> Iterator[TestClient]:
    settings = platform_settings.model_copy(update={"max_upload_bytes": 1024**2, "max_voxels": 10**6})
    with TestClient(create_ingest_app(settings), headers=bearer(settings, "uploader")) as c:
        yield c


@pytest.fixture
def live_ingest(platform_settings: Settings) -> Iterator[str]:
    """The ingest app on a real socket (the test client would read the whole body before the app
    sees it), with a 1 MiB upload limit."""
    settings = platform_settings.model_copy(update={"max_upload_bytes": 1024**2, "max_voxels": 10**6})
    with live_server(create_ingest_app(settings)) as url:
        yield url, bearer(settings, "uploader")


def post_stream(live: tuple[str, dict], body: Body) -> tuple[int | None, str]:
    """POST the lazy body; the server may answer and close before taking it all (then the client's
    write fails: status None)."""
    import httpx

    try:
        url, auth = live
        r = httpx.post(f"{url}/v1/datasets/streamed/scans", content=iter(body), timeout=30,
                       headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}", **auth})
    except httpx.TransportError as exc:
        return None, str(exc)
    return r.status_code, r.text


def test_a_chunked_upload_is_cut_off_at_the_limit_not_after_it_is_spooled(live_ingest: str) -> None:
    header = nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)[:352]
    body = Body(header, filler=64 * 1024**2)  # 64 MiB without a Content-Length against a 1 MiB limit
    status, text = post_stream(live_ingest, body)
    assert status in (413, None), text
    assert body.sent < 8 * 1024**2, body.sent  # refused within a few MiB (socket buffers) of the cap, not after 64 MiB


def test_a_file_that_is_not_nifti_is_refused_from_its_first_bytes(live_ingest: str) -> None:
    body = Body(b"%PDF-1.7 " + b"x" * 600, filler=64 * 1024**2)
    status, text = post_stream(live_ingest, body)
    assert status in (422, None), text
    assert body.sent < 8 * 1024**2, body.sent  # the rest of the file was never read


def test_a_header_declaring_too_many_voxels_is_refused_before_the_voxels(live_ingest: str) -> None:
    header = bytearray(nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)[:352])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 2000))
    hdr.set_data_dtype(np.float32)
    header[:348] = hdr.binaryblock
    body = Body(bytes(header), filler=64 * 1024**2)
    status, text = post_stream(live_ingest, body)
    assert status in (413, None), text
    assert body.sent < 8 * 1024**2, body.sent


def test_early_refusals_carry_their_reason(small_limit_client: TestClient) -> None:
    """The same refusals through the test client, which delivers the whole body: status and reason."""
    header = nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)[:352]
    cases = [(Body(header, filler=2 * 1024**2), 413, "limit"), (Body(b"%PDF-1.7 " + b"x" * 600, filler=65536), 422, "not a readable NIfTI")]
    for body, status, reason in cases:
        r = small_limit_client.post("/v1/datasets/streamed/scans", content=b"".join(body),
                                    headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert r.status_code == status and reason in r.json()["detail"], r.text


def test_a_form_without_a_patient_id_or_an_image_is_a_422(client, phantom) -> None:
    image, _, _ = phantom
    r = client.post("/v1/datasets/d/scans", files={"image": ("scan.nii.gz", nifti_bytes(image))})
    assert r.status_code == 422 and "patient_id" in r.json()["detail"]
    r = client.post("/v1/datasets/d/scans", data={"patient_id": "p"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/v1/datasets/d/scans", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]


def test_free_text_header_fields_never_reach_the_store(client, phantom, store: ObjectStore) -> None:
    image, label, affine = phantom
    img = nib.Nifti1Image(image, affine)
    img.header["descrip"], img.header["aux_file"], img.header["intent_name"] = b"Doe^John 1970-01-01", b"MRN-99731", b"acc-4411"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient Doe^John MRN-99731".ljust(32, b"\0")))
    r = upload(client, "freetext", "p001", gzip.compress(img.to_bytes()), nifti_bytes(label, affine))
    assert r.status_code == 201, r.text
    for key in store.list("datasets/freetext/"):
        data = store.get_bytes(key)
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        for needle in (b"Doe^John", b"MRN-99731", b"acc-4411"):
            assert needle not in data, (key, needle)
