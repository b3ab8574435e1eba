"""Uploads on disk: read, checked, scrubbed and written in bounded memory, with the same results (and
the same bytes stored) as uploads in memory."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_nifti import BAD_CASES, LPS, _bad_inputs, _gzip_of_zeros_after, check, nifti_bytes

from medsynth.core.errors import InvalidInput, TooLarge
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.phantoms import make_phantom
from medsynth.io.nifti import scrub_free_text, scrub_free_text_file, to_nifti_bytes, validate_scan, write_nifti
from medsynth.store.local import LocalStore

MAX_VOXELS = 10**6


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_phantom(seed=1, shape=(24, 24, 12))


def as_file(folder: Path, name: str, data: bytes | None) -> Path | None:
    if data is None:
        return None
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_file_is_refused_as_its_bytes_are(phantom, case: str, tmp_path: Path) -> None:
    image, label, _ = _bad_inputs(phantom)[case]
    with pytest.raises(InvalidInput) as from_bytes:
        check(image, label)
    with pytest.raises(InvalidInput) as from_file:
        validate_scan(as_file(tmp_path, "image", image), as_file(tmp_path, "label", label), max_voxels=MAX_VOXELS)
    assert type(from_file.value) is type(from_bytes.value)
    assert str(from_file.value) == str(from_bytes.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["image"] + (["label"] if label is not None else []))


@pytest.mark.parametrize("gz", [True, False], ids=["nii.gz", "nii"])
@pytest.mark.parametrize("affine", [np.diag([2.0, 2.0, 2.5, 1.0]), LPS,
                                    np.array([[0, 2.0, 0, 0], [1.5, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])],
                         ids=["RAS", "LPS", "swapped"])
def test_a_file_gives_the_scan_and_the_stored_bytes_its_bytes_give(phantom, gz: bool, affine: np.ndarray, tmp_path: Path) -> None:
    image, label, _ = phantom
    image_bytes, label_bytes = nifti_bytes(image, affine, gz=gz), nifti_bytes(label.astype(np.float32), affine, gz=gz)
    in_memory = validate_scan(image_bytes, label_bytes, max_voxels=MAX_VOXELS)
    on_disk = validate_scan(as_file(tmp_path, "image", image_bytes), as_file(tmp_path, "label", label_bytes), max_voxels=MAX_VOXELS)
    np.testing.assert_array_equal(on_disk.image, in_memory.image)
    np.testing.assert_array_equal(on_disk.label, in_memory.label)
    assert on_disk.label.dtype == in_memory.label.dtype == np.uint8
    np.testing.assert_allclose(on_disk.affine, in_memory.affine)
    assert (on_disk.orientation, on_disk.label_values, on_disk.shape) == (in_memory.orientation, in_memory.label_values, in_memory.shape)
    write_nifti(on_disk.image, on_disk.affine, tmp_path / "canonical.nii.gz")  # from the RAS view
    assert (tmp_path / "canonical.nii.gz").read_bytes() == to_nifti_bytes(in_memory.image, in_memory.affine)
    scrub_free_text_file(tmp_path / "image", tmp_path / "original")
    assert (tmp_path / "original").read_bytes() == scrub_free_text(image_bytes)


def test_a_scrubbed_file_loses_its_free_text_and_extensions(phantom, tmp_path: Path) -> None:
    image, _, affine = phantom
    img = nib.Nifti1Image(image, affine)
    img.header["descrip"] = b"Smith^John 1961"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"referring: Dr Who " * 100))
    (tmp_path / "in.nii.gz").write_bytes(gzip.compress(img.to_bytes()))
    scrub_free_text_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    out = gzip.decompress((tmp_path / "out.nii.gz").read_bytes())
    assert b"Smith" not in out and b"Dr Who" not in out
    np.testing.assert_array_equal(np.asanyarray(nib.Nifti1Image.from_bytes(out).dataobj), image)


def test_a_gzip_bomb_on_disk_is_stopped_and_leaves_no_inflated_file(tmp_path: Path) -> None:
    header = nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)
    (tmp_path / "image").write_bytes(_gzip_of_zeros_after(header, 64 << 20))
    with pytest.raises(TooLarge, match="beyond the 608 bytes its NIfTI header declares"):
        validate_scan(tmp_path / "image", None, max_voxels=MAX_VOXELS)
    assert [p.name for p in tmp_path.iterdir()] == ["image"]


@pytest.mark.parametrize("gz", [True, False], ids=["nii.gz", "nii"])
def test_an_upload_on_disk_is_ingested_holding_one_copy_of_its_volume(gz: bool, tmp_path: Path) -> None:
    """Python-side allocations while a 16 MiB float32 upload (stored LPS, so reoriented) is checked,
    canonicalised, written and stored: one volume and a few MiB of chunks and slabs, where reading it
    into memory held the file, its inflation, the voxels, a reoriented copy and two serialisations."""
    volume = np.random.default_rng(0).random((128, 128, 256), dtype=np.float32)  # 16 MiB, incompressible
    data = nifti_bytes(volume, LPS, gz=gz)
    path = as_file(tmp_path, "image", data)
    store = LocalStore(tmp_path / "store")
    tracemalloc.start()
    try:
        entry, _ = ingest_scan(store, "ds", "p1", Upload("scan.nii.gz" if gz else "scan.nii", path=path, sha256="ab" * 32), None,
                               max_voxels=volume.size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < volume.nbytes + (8 << 20), f"peak {peak / 2**20:.1f} MiB for a {volume.nbytes / 2**20:.0f} MiB volume"
    stored = nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(entry.image_key)))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), volume[::-1, ::-1, :])
    assert store.get_bytes(entry.original_image_key) == scrub_free_text(data)
