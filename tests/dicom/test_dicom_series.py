"""DICOM series → canonical volume, checked against dcm2niix (an independent converter) and against
the volume the series was written from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import DCMTK_DECODE, dcm2niix, dcmtk_decoded, phantom, read_folder, tool, write_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medsynth.core.errors import InvalidInput, TooLarge
from medsynth.dicom.series import assemble_series, read_instance
from medsynth.io.nifti import canonicalise

AFFINE_ATOL = 1e-4
SHARED_GE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dcm_qa_nih" / "In" / "20180918GE"

LOSSLESS = ["explicit", "implicit", "deflate", "rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"]


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_series_match_dcm2niix_and_the_source_volume(tmp_path: Path, syntax: str) -> None:
    image, affine = phantom()
    write_series(tmp_path / "in", image, affine, syntax=syntax)
    ours = read_folder(tmp_path / "in")
    # dcm2niix reads the file itself where it can, else dcmtk's decompressed copy of it
    source = dcmtk_decoded(tmp_path / "in", tmp_path / "decoded", syntax) if syntax in DCMTK_DECODE else tmp_path / "in"
    ref = dcm2niix(source, tmp_path / "out")
    assert ours.shape == ref.shape == (36, 40, 7) or ours.shape == ref.shape == (40, 36, 7)
    assert np.array_equal(ours.image, ref.image)
    assert np.abs(ours.affine - ref.affine).max() < AFFINE_ATOL
    written = canonicalise(image, affine)
    assert np.array_equal(ours.image, written.image)
    assert np.abs(ours.affine - written.affine).max() < 1e-6


def test_jpeg_baseline_matches_dcmtk_within_decoder_rounding(tmp_path: Path) -> None:
    """Lossy JPEG: two conforming decoders may round the inverse DCT differently by one grey level."""
    image, affine = phantom()
    write_series(tmp_path / "in", image, affine, syntax="jpeg-baseline")
    (tmp_path / "dj").mkdir()
    import subprocess
    for f in sorted((tmp_path / "in").glob("*.dcm")):
        subprocess.run([tool("dcmdjpeg"), str(f), str(tmp_path / "dj" / f.name)], check=True)
    ours, dcmtk = read_folder(tmp_path / "in"), read_folder(tmp_path / "dj")
    assert np.abs(ours.image - dcmtk.image).max() <= 1
    assert np.allclose(ours.affine, dcmtk.affine)


def test_slices_are_sorted_by_position_not_by_file_order(tmp_path: Path) -> None:
    image, affine = phantom()
    write_series(tmp_path / "in", image, affine, edit=lambda ds, k: setattr(ds, "InstanceNumber", 100 - k))
    files = sorted((tmp_path / "in").glob("*.dcm"))
    shuffled = [files[i] for i in np.random.default_rng(3).permutation(len(files))]
    scan = assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in shuffled], max_voxels=10**8)
    assert np.array_equal(scan.image, canonicalise(image, affine).image)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    image, affine = phantom(shape=(8, 6, 4))
    image = image * 0.5 + 0.25  # not integers: stored with a slope
    write_series(tmp_path / "in", image, affine)
    ds = pydicom.dcmread(next((tmp_path / "in").glob("*.dcm")))
    assert float(ds.RescaleSlope) != 1.0
    scan = read_folder(tmp_path / "in")
    assert np.abs(scan.image - canonicalise(image, affine).image).max() <= float(ds.RescaleSlope)


def test_monochrome1_is_inverted_to_monochrome2(tmp_path: Path) -> None:
    image = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
    write_series(tmp_path / "in", image, np.eye(4), edit=lambda ds, k: _as_unsigned_monochrome1(ds, bits=12))
    scan = read_folder(tmp_path / "in")
    # stored v becomes 4095 - v (12 bits stored), so brighter stays larger
    assert sorted(scan.image.ravel().tolist()) == [4095.0 - v for v in range(5, -1, -1)]


def _as_unsigned_monochrome1(ds: Dataset, bits: int) -> None:
    pixels = np.frombuffer(ds.PixelData, dtype=np.int16).astype(np.uint16)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, bits, bits - 1
    ds.PixelData = pixels.tobytes()


def test_signed_pixels_keep_their_sign(tmp_path: Path) -> None:
    image = np.array([[[-1000.0], [-1.0]], [[0.0], [2000.0]]], dtype=np.float32)
    write_series(tmp_path / "in", image, np.eye(4))
    assert sorted(read_folder(tmp_path / "in").image.ravel().tolist()) == [-1000.0, -1.0, 0.0, 2000.0]


def test_enhanced_multiframe_object_matches_the_single_frame_series(tmp_path: Path) -> None:
    image, affine = phantom(shape=(10, 8, 5))
    files = write_series(tmp_path / "in", image, affine)
    single = [pydicom.dcmread(f) for f in files]
    multi = _enhanced(single)
    scan = assemble_series([("enhanced.dcm", multi)], max_voxels=10**8)
    assert np.array_equal(scan.image, read_folder(tmp_path / "in").image)
    assert np.allclose(scan.affine, canonicalise(image, affine).affine, atol=1e-6)


def _enhanced(single: list[Dataset]) -> Dataset:
    """An Enhanced MR-like object holding ``single``'s slices as frames (in reverse order)."""
    first = single[0]
    ds = Dataset()
    ds.file_meta = first.file_meta
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName", "Modality", "Rows",
                    "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SeriesNumber"):
        setattr(ds, keyword, getattr(first, keyword))
    frames = list(reversed(single))
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = first.RescaleSlope, first.RescaleIntercept, "US"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in frames:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = f.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(f.PixelData for f in frames)
    return ds


def test_a_single_slice_is_a_2d_scan(tmp_path: Path) -> None:
    image, affine = phantom(shape=(12, 10, 1))
    write_series(tmp_path / "in", image, affine)
    scan = read_folder(tmp_path / "in")
    assert scan.shape in ((12, 10), (10, 12))


def test_a_time_series_is_4d_with_time_last(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 4))
    files = write_series(tmp_path / "t0", image, affine)
    second = write_series(tmp_path / "t1", image + 1, affine)
    instances = []
    for t, group in enumerate((files, second)):
        for f in group:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
            ds.TemporalPositionIdentifier = t + 1
            instances.append((f"{t}/{f.name}", ds))
    scan = assemble_series(instances, max_voxels=10**8)
    assert scan.shape[-1] == 2 and scan.image.ndim == 4
    assert np.array_equal(scan.image[..., 1], scan.image[..., 0] + 1)


# --- rejections ------------------------------------------------------------------------------------


def _instances(folder: Path) -> list[tuple[str, Dataset]]:
    return [(f.name, read_instance(f.read_bytes(), f.name)) for f in sorted(folder.glob("*.dcm"))]


def test_a_missing_slice_is_named(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 6))
    write_series(tmp_path / "in", image, affine)
    instances = [pair for pair in _instances(tmp_path / "in") if pair[0] != "0003.dcm"]
    with pytest.raises(InvalidInput, match=r"series 1 \(phantom\): a missing slice between 0002.dcm and 0004.dcm"):
        assemble_series(instances, max_voxels=10**8)


def test_uneven_spacing_mixed_orientation_and_size_are_refused(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 5))
    write_series(tmp_path / "a", image, affine,
                 edit=lambda ds, k: setattr(ds, "ImagePositionPatient", [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + (0.7 if k == 2 else 0)]))
    with pytest.raises(InvalidInput, match="uneven slice spacing"):
        assemble_series(_instances(tmp_path / "a"), max_voxels=10**8)
    write_series(tmp_path / "b", image, affine,
                 edit=lambda ds, k: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]) if k == 3 else None)
    with pytest.raises(InvalidInput, match="mixed orientations"):
        assemble_series(_instances(tmp_path / "b"), max_voxels=10**8)
    pairs = _instances(tmp_path / "a")
    small, _ = phantom(shape=(4, 5, 1))
    write_series(tmp_path / "c", small, affine)
    odd = _instances(tmp_path / "c")[0][1]
    odd.SeriesInstanceUID = pairs[0][1].SeriesInstanceUID
    with pytest.raises(InvalidInput, match="pixels, the series"):
        assemble_series([*pairs[:2], ("small.dcm", odd)], max_voxels=10**8)


def test_duplicate_instances_at_one_position_are_refused(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 4))
    write_series(tmp_path / "in", image, affine)
    pairs = _instances(tmp_path / "in")
    copy = pydicom.dcmread(tmp_path / "in" / "0001.dcm")
    copy.SOPInstanceUID = generate_uid()
    with pytest.raises(InvalidInput, match="different numbers of instances|duplicate instances"):
        assemble_series([*pairs, ("copy.dcm", copy)], max_voxels=10**8)


def test_localizers_and_non_images_are_refused(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 3))
    write_series(tmp_path / "loc", image, affine, edit=lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    with pytest.raises(InvalidInput, match="is a localizer"):
        assemble_series(_instances(tmp_path / "loc"), max_voxels=10**8)
    report = Dataset()
    report.SOPClassUID, report.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()  # Basic Text SR
    report.StudyInstanceUID, report.SeriesInstanceUID = generate_uid(), generate_uid()
    with pytest.raises(InvalidInput, match="holds no pixel data"):
        assemble_series([("report.dcm", report)], max_voxels=10**8)


def test_too_many_voxels_is_refused_before_decoding(tmp_path: Path) -> None:
    image, affine = phantom(shape=(6, 5, 3))
    write_series(tmp_path / "in", image, affine)
    with pytest.raises(TooLarge, match="more than the limit of 50"):
        assemble_series(_instances(tmp_path / "in"), max_voxels=50)


def test_not_dicom_truncated_and_undecodable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a DICOM file"):
        read_instance(b"\x1f\x8bnot dicom at all" * 20, "scan.nii.gz")
    image, affine = phantom(shape=(6, 5, 1))
    (path,) = write_series(tmp_path / "in", image, affine)
    data = path.read_bytes()
    with pytest.raises(InvalidInput, match="truncated.dcm"):
        ds = read_instance(data[: len(data) - 20], "truncated.dcm")
        assemble_series([("truncated.dcm", ds)], max_voxels=10**8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder for video
    with pytest.raises(InvalidInput, match="cannot decode|no decoder"):
        from medsynth.dicom.series import check_instance
        check_instance(ds, "video.dcm")


@pytest.mark.skipif(not SHARED_GE.is_dir(), reason="../shared/data/dcm_qa_nih is not on this machine (only in the dev/CI tree)")
@pytest.mark.parametrize("series", ["mr_0004", "mr_0005", "mr_0006", "mr_0007"])
def test_dcm_qa_nih_ge_series_are_voxel_identical_to_dcm2niix(tmp_path: Path, series: str) -> None:
    """The GE EPI series of dcm_qa_nih (15 slices x 10 volumes each)."""
    folder = SHARED_GE / series
    ours = assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in sorted(folder.glob("*.dcm"))], max_voxels=10**8)
    ref = dcm2niix(folder, tmp_path / "out")
    assert ours.shape == ref.shape == (64, 64, 15, 10)
    assert np.array_equal(ours.image, ref.image)
    assert np.abs(ours.affine - ref.affine).max() < AFFINE_ATOL
