"""DICOM series → canonical volume, checked against dcm2niix (an independent converter) and against
the volume the series was written from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (DCMTK_DECODE, PYDICOM_ENCODED, dcm2niix, dcmtk_decoded, mosaic_series, phantom, read_folder, tool,
                           write_mosaics, write_series)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medsynth.core.errors import InvalidInput, TooLarge
from medsynth.dicom.series import assemble_series, read_instance
from medsynth.io.nifti import canonicalise

AFFINE_ATOL = 1e-4
SHARED_GE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dcm_qa_nih" / "In" / "20180918GE"
SHARED_SIEMENS = SHARED_GE.parent / "20180918Si"
NO_SHARED = "../shared/data/dcm_qa_nih is not on this machine (only in the dev/CI tree)"

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
    # and read as staged series are, for their geometry and pixels only (the header walker, or pydicom where it does not walk)
    files = sorted((tmp_path / "in").glob("*.dcm"))
    fast = assemble_series([(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in files], max_voxels=10**8)
    assert np.array_equal(fast.image, ours.image) and np.array_equal(fast.affine, ours.affine)


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


def test_an_enhanced_object_of_one_frame_is_one_slice(tmp_path: Path) -> None:
    image, affine = phantom(shape=(10, 8, 1))
    files = write_series(tmp_path / "in", image, affine)
    scan = assemble_series([("enhanced.dcm", _enhanced([pydicom.dcmread(f) for f in files]))], max_voxels=10**8)
    assert np.array_equal(scan.image, read_folder(tmp_path / "in").image)


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
    files = sorted(folder.glob("*.dcm"))
    ours = assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in files], max_voxels=10**8)
    ref = dcm2niix(folder, tmp_path / "out")
    assert ours.shape == ref.shape == (64, 64, 15, 10)
    assert np.array_equal(ours.image, ref.image)
    assert np.abs(ours.affine - ref.affine).max() < AFFINE_ATOL
    geometry_only = assemble_series([(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in files],
                                    max_voxels=10**8)
    assert np.array_equal(geometry_only.image, ref.image) and np.array_equal(geometry_only.affine, ours.affine)


# --- Siemens mosaics -------------------------------------------------------------------------------


def _mosaic_phantom(shape=(12, 10, 7), flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An integer volume (int16 range) on the oblique phantom affine; ``flip`` reverses its slice axis,
    so the mosaic's SliceNormalVector points against the orientation's normal (as in Siemens sagittals)."""
    image, affine = phantom(shape=shape)
    if flip:
        affine = affine.copy()
        affine[:3, 2] *= -1
    return image, affine


@pytest.mark.parametrize("flip", [False, True], ids=["normal-along", "normal-against"])
def test_a_mosaic_time_series_unpacks_to_its_volumes_and_matches_dcm2niix(tmp_path: Path, flip: bool) -> None:
    """7 slices tiled 3x3 (two tiles blank), three time points, on an oblique grid."""
    image, affine = _mosaic_phantom(flip=flip)
    write_mosaics(tmp_path / "in", mosaic_series(image, affine, times=3))
    ours = read_folder(tmp_path / "in")
    truth = canonicalise(np.stack([image + t for t in range(3)], axis=-1), affine)
    assert ours.shape == truth.shape and ours.shape[-1] == 3
    assert np.array_equal(ours.image, truth.image)
    assert np.abs(ours.affine - truth.affine).max() < 1e-6
    ref = dcm2niix(tmp_path / "in", tmp_path / "out")
    assert np.array_equal(ours.image, ref.image)
    assert np.abs(ours.affine - ref.affine).max() < AFFINE_ATOL
    geometry_only = [(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in sorted((tmp_path / "in").glob("*.dcm"))]
    assert np.array_equal(assemble_series(geometry_only, max_voxels=10**8).image, ours.image)


def test_one_mosaic_is_one_3d_volume(tmp_path: Path) -> None:
    image, affine = _mosaic_phantom(shape=(8, 6, 4))  # 2x2 tiles, none blank
    write_mosaics(tmp_path / "in", mosaic_series(image, affine))
    ours = read_folder(tmp_path / "in")
    assert ours.image.ndim == 3
    assert np.array_equal(ours.image, canonicalise(image, affine).image)


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "jpeg2000"])
def test_compressed_mosaics_decode_then_unpack(tmp_path: Path, syntax: str) -> None:
    image, affine = _mosaic_phantom(shape=(16, 14, 7))  # OpenJPEG needs a few dozen pixels a side
    datasets = mosaic_series(image, affine, times=2)
    for ds in datasets:
        ds.compress(PYDICOM_ENCODED[syntax])
    write_mosaics(tmp_path / "in", datasets)
    truth = canonicalise(np.stack([image, image + 1], axis=-1), affine)
    assert np.array_equal(read_folder(tmp_path / "in").image, truth.image)


def test_a_mosaic_without_a_usable_csa_header_is_refused_with_the_series_and_why(tmp_path: Path) -> None:
    image, affine = _mosaic_phantom()
    write_mosaics(tmp_path / "none", mosaic_series(image, affine, csa=False))
    with pytest.raises(InvalidInput, match=r"series 1 \(epi mosaic\): 0000.dcm is a Siemens mosaic .* without its CSA image header"):
        read_folder(tmp_path / "none")

    (broken,) = mosaic_series(image, affine)
    broken.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = b"SV10\x04\x03\x02\x01" + b"\xff" * 40
    write_mosaics(tmp_path / "broken", [broken])
    with pytest.raises(InvalidInput, match=r"series 1 \(epi mosaic\): 0000.dcm is a Siemens mosaic whose CSA image header cannot be read"):
        read_folder(tmp_path / "broken")

    from medsynth.dicom.mosaic import write_csa
    (odd,) = mosaic_series(image, affine)
    odd.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = write_csa(
        {"NumberOfImagesInMosaic": ("US", ["11"]), "SliceNormalVector": ("FD", ["0", "0", "1"])})  # 4x4 tiles: 30 rows do not divide
    write_mosaics(tmp_path / "odd", [odd])
    with pytest.raises(InvalidInput, match=r"a mosaic of 11 slices is a grid of 4x4 tiles, which its 30x36 pixels do not divide into"):
        read_folder(tmp_path / "odd")

    (sideways,) = mosaic_series(image, affine)
    sideways.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = write_csa(
        {"NumberOfImagesInMosaic": ("US", ["7"]), "SliceNormalVector": ("FD", [str(v) for v in sideways.ImageOrientationPatient[:3]])})
    write_mosaics(tmp_path / "sideways", [sideways])
    with pytest.raises(InvalidInput, match="SliceNormalVector .* is not the normal of its ImageOrientationPatient"):
        read_folder(tmp_path / "sideways")


def test_mosaics_mixed_with_single_slices_are_refused(tmp_path: Path) -> None:
    image, affine = _mosaic_phantom()
    (mosaic,) = mosaic_series(image, affine)
    write_series(tmp_path / "plain", image, affine)
    plain = pydicom.dcmread(sorted((tmp_path / "plain").glob("*.dcm"))[0])
    plain.SeriesInstanceUID = mosaic.SeriesInstanceUID
    with pytest.raises(InvalidInput, match=r"mixes Siemens mosaics \(m.dcm\) with single-slice images \(0000.dcm\)"):
        assemble_series([("m.dcm", mosaic), ("0000.dcm", plain)], max_voxels=10**8)


@pytest.mark.skipif(not SHARED_SIEMENS.is_dir(), reason=NO_SHARED)
@pytest.mark.parametrize("series", ["mr_0003", "mr_0004", "mr_0005", "mr_0006"])
def test_dcm_qa_nih_siemens_mosaics_are_voxel_identical_to_dcm2niix(tmp_path: Path, series: str) -> None:
    """The Siemens EPI series of dcm_qa_nih: two mosaics each (5 slices of 72x72 tiled 3x3 in 216x216),
    one per time point; checked as sent, and after de-identification (which keeps only the numbers of
    the CSA header that unpack it) both by medsynth and by dcm2niix."""
    from medsynth.dicom.deid import Deidentifier, DeidPolicy

    import nibabel as nib

    folder = SHARED_SIEMENS / series
    files = sorted(folder.glob("*.dcm"))
    ours = assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in files], max_voxels=10**8)
    ref = dcm2niix(folder, tmp_path / "out")
    assert ours.shape == ref.shape == (72, 72, 5, 2)
    assert np.array_equal(ours.image, ref.image)
    assert np.abs(ours.affine - ref.affine).max() < AFFINE_ATOL
    geometry_only = [(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in files]
    assert np.array_equal(assemble_series(geometry_only, max_voxels=10**8).image, ref.image)
    # and the NIfTI that dcm_qa_nih ships (made by upstream dcm2niix: Ref/EPI_PE=<direction>_<series>.nii)
    (shipped,) = (SHARED_SIEMENS.parents[1] / "Ref").glob(f"EPI_PE=*_{int(series[-2:])}.nii")
    upstream = nib.load(shipped)
    upstream = canonicalise(np.asarray(upstream.dataobj, dtype=np.float32), np.asarray(upstream.affine, dtype=np.float64))
    assert np.array_equal(ours.image, upstream.image)
    assert np.abs(ours.affine - upstream.affine).max() < AFFINE_ATOL

    deid = Deidentifier(DeidPolicy(b"k" * 32))
    (tmp_path / "deid").mkdir()
    for f in files:
        deid.apply(pydicom.dcmread(f)).save_as(tmp_path / "deid" / f.name, enforce_file_format=True)
    assert np.array_equal(read_folder(tmp_path / "deid").image, ref.image)
    again = dcm2niix(tmp_path / "deid", tmp_path / "out-deid")
    assert np.array_equal(again.image, ref.image)
    assert np.abs(again.affine - ref.affine).max() < AFFINE_ATOL
