"""DICOM masks → label maps on the image series' grid (:mod:`medsynth.dicom.masks`).

Every SEG here is written by highdicom's own writer on a series written by medsynth (oblique,
anisotropic), read back from its Part 10 bytes and compared voxel for voxel with the label map it was
written from: BINARY, FRACTIONAL and LABELMAP, single- and multi-frame, on single- and multi-frame
images, overlapping segments under both rules, SEGs that cover some slices, and the dcmqi/3D Slicer
shape (frames aligned with the images, no DerivationImageSequence or no SpatialLocationsPreserved).
Bad input is an InvalidInput naming the SEG and the problem, never a highdicom error.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_helpers import phantom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medsynth.core.errors import InvalidInput
from medsynth.dicom.masks import FRACTIONAL_THRESHOLD, LABELMAP_SEG, SEG, describe_coverage, is_mask, read_mask, referenced_series
from medsynth.dicom.series import SeriesVolume, read_instance, series_volume
from medsynth.dicom.write import SeriesIdentity, series_from_volume

SHARED_GE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dcm_qa_nih" / "In" / "20180918GE"
SHAPE = (14, 12, 6)  # columns, rows, slices


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _read(ds: Dataset, name: str) -> Dataset:
    """``ds`` as a receiver sees it: written to Part 10 and read back (with medsynth's arrival checks)."""
    return read_instance(_bytes(ds), name)


def make_series(shape=SHAPE, seed=0) -> tuple[list[Dataset], SeriesVolume]:
    image, affine = phantom(shape=shape, seed=seed)
    identity = SeriesIdentity("PID-1", "Doe^Jane", modality="CT", series_description="phantom")
    sources = [_read(ds, f"{k:04d}.dcm") for k, ds in enumerate(series_from_volume(image, affine, identity))]
    volume = series_volume([(f"{k:04d}.dcm", ds) for k, ds in enumerate(sources)], max_voxels=10**8)
    return sources, volume


def _description(number: int) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"organ {number}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def write_seg(sources: list[Dataset], pixels: np.ndarray, seg_type: str = "BINARY", segments=(1, 2), **options) -> Dataset:
    """A SEG written by highdicom: ``pixels`` (frame, row, column[, segment]) on ``sources`` (in that order)."""
    if pixels.dtype.kind in "biu":
        pixels = pixels.astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=seg_type,
        segment_descriptions=[_description(n) for n in segments], series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1", **options)
    return _read(seg, "seg.dcm")


def label_map(ds: Dataset, volume: SeriesVolume, name: str, **options) -> tuple[np.ndarray, dict[int, str]]:
    """The label map and names of a mask that covers every slice of its series (what these checks compare)."""
    mask = read_mask(ds, volume, name, **options)
    assert mask.covered.all() and describe_coverage(mask, ds, name) is None
    return mask.label, mask.names


def frames(label: np.ndarray) -> np.ndarray:
    """(column, row, slice[, segment]) → highdicom's (frame, row, column[, segment])."""
    return np.ascontiguousarray(np.swapaxes(label, 0, 2))


def reference(shape=SHAPE) -> np.ndarray:
    """A two-segment label map (column, row, slice) with an empty first and last slice."""
    label = np.zeros(shape, dtype=np.int32)
    label[2:9, 3:8, 1:4] = 1
    label[9:13, 1:5, 2:5] = 2
    return label


def dcmqi_style(seg: Dataset, drop: str) -> Dataset:
    """What dcmqi / 3D Slicer write: frames aligned with the source images, whose per-frame groups have
    no DerivationImageSequence (``drop="derivation"``) or one without SpatialLocationsPreserved
    (``drop="spatial"``)."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        if drop == "derivation":
            del item.DerivationImageSequence
        else:
            for derivation in item.DerivationImageSequence:
                for source in derivation.SourceImageSequence:
                    del source.SpatialLocationsPreserved
    return _read(seg, "seg.dcm")


# --- each form, voxel for voxel ----------------------------------------------------------------------------


def test_binary_multi_frame_seg_matches_its_label_map() -> None:
    sources, volume = make_series()
    expected = reference()
    # sources given in reverse: the SEG's frame order is not the series' slice order
    seg = write_seg(sources[::-1], frames(expected)[::-1])
    assert seg.SOPClassUID == SEG and int(seg.NumberOfFrames) == 6  # empty frames omitted: 3 + 3
    label, names = label_map(seg, volume, "seg.dcm")
    assert np.array_equal(label, expected)
    assert names == {1: "organ 1", 2: "organ 2"}


def test_fractional_seg_is_thresholded_at_half_the_maximum() -> None:
    sources, volume = make_series()
    rng = np.random.default_rng(3)
    # probabilities away from the threshold by more than the 1/255 quantisation of the stored values
    choices = np.array([0.0, 0.2, 0.45, 0.55, 0.8, 1.0])
    p1 = choices[rng.integers(0, len(choices), SHAPE)]
    p2 = np.where(p1 >= FRACTIONAL_THRESHOLD, 0.0, choices[rng.integers(0, len(choices), SHAPE)])  # no overlap above it
    seg = write_seg(sources, frames(np.stack([p1, p2], axis=-1)).astype(np.float32), "FRACTIONAL")
    assert seg.SegmentationType == "FRACTIONAL" and int(seg.MaximumFractionalValue) == 255
    expected = np.where(p1 >= 0.5, 1, np.where(p2 >= 0.5, 2, 0))
    label, _ = label_map(seg, volume, "seg.dcm")
    assert np.array_equal(label, expected)
    assert ((p1 > 0) & (p1 < 0.5)).any() and ((p2 > 0) & (p1 > 0)).any()  # below-threshold and overlapping tails exist


@pytest.mark.parametrize("palette", [False, True], ids=["monochrome", "palette-color"])
def test_labelmap_seg_matches_its_label_map_with_sparse_segment_numbers(palette: bool) -> None:
    sources, volume = make_series()
    expected = reference()
    expected[expected == 2] = 7  # LABELMAP segment numbers need not be consecutive
    expected[4:6, 9:11, 0] = 3
    options = {}
    if palette:  # stored values are still segment numbers; the LUT only colours them
        colors = ["black", "red", "black", "green", "black", "black", "black", "blue"]
        options["palette_color_lut_transformation"] = hd.PaletteColorLUTTransformation.from_colors(colors)
    seg = write_seg(sources, frames(expected).astype(np.uint8), "LABELMAP", segments=(1, 3, 7), **options)
    assert seg.SOPClassUID == LABELMAP_SEG and is_mask(seg)
    assert seg.PhotometricInterpretation == ("PALETTE COLOR" if palette else "MONOCHROME2")
    label, names = label_map(seg, volume, "labelmap.dcm")
    assert np.array_equal(label, expected)
    assert names == {1: "organ 1", 3: "organ 3", 7: "organ 7"}


def test_single_frame_seg_on_a_one_slice_series() -> None:
    sources, volume = make_series(shape=(14, 12, 1))
    expected = np.zeros((14, 12, 1), dtype=np.int32)
    expected[3:10, 2:6, 0] = 1
    seg = write_seg(sources, frames(expected).astype(np.uint8), segments=(1,))
    assert int(seg.NumberOfFrames) == 1
    label, names = label_map(seg, volume, "seg.dcm")
    assert np.array_equal(label, expected) and names == {1: "organ 1"}


def test_single_frame_seg_of_one_slice_of_a_stack() -> None:
    """All slices referenced, one labelled: the others are background (writers omit empty frames)."""
    sources, volume = make_series()
    expected = np.zeros(SHAPE, dtype=np.int32)
    expected[3:10, 2:6, 4] = 1
    seg = write_seg(sources, frames(expected).astype(np.uint8), segments=(1,))
    assert int(seg.NumberOfFrames) == 1
    mask = read_mask(seg, volume, "seg.dcm")
    assert mask.covered.all() and np.array_equal(mask.label, expected)


def test_seg_on_a_multi_frame_image() -> None:
    """A SEG drawn on an enhanced (multi-frame) CT: frames referenced by (instance, frame number)."""
    sources, _ = make_series()
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(sources, series_instance_uid=generate_uid(), series_number=5,
                                                        sop_instance_uid=generate_uid(), instance_number=1)
    enhanced = _read(enhanced, "enhanced.dcm")
    volume = series_volume([("enhanced.dcm", enhanced)], max_voxels=10**8)
    expected = reference()
    # the enhanced object's frame f is the source whose position it has
    positions = [tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 4)) for ds in sources]
    slice_of_frame = [positions.index(tuple(np.round(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, float), 4)))
                      for g in enhanced.PerFrameFunctionalGroupsSequence]
    seg = write_seg([enhanced], frames(expected)[slice_of_frame])
    assert "ReferencedFrameNumber" in seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    label, _ = label_map(seg, volume, "seg.dcm")
    assert np.array_equal(label, expected)


@pytest.mark.parametrize("drop", ["spatial", "derivation"])
@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_dcmqi_style_aligned_frames_are_placed_by_their_position(seg_type: str, drop: str) -> None:
    """The files 3D Slicer/dcmqi write, which highdicom will not index by source instance
    (``RuntimeError: Indexing via source frames is not permissible``): placed by geometry instead."""
    sources, volume = make_series()
    expected = reference()
    pixels = frames(expected).astype(np.uint8)
    if seg_type == "FRACTIONAL":
        pixels = np.stack([pixels == 1, pixels == 2], axis=-1).astype(np.float32)
    seg = dcmqi_style(write_seg(sources, pixels, seg_type), drop)
    if drop == "spatial":  # the refusal the issue reported, from highdicom's source-instance indexing
        with pytest.raises(RuntimeError, match="spatial locations are preserved"):
            hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance([str(s.SOPInstanceUID) for s in sources],
                                                                               combine_segments=True)
    else:
        assert all("DerivationImageSequence" not in item for item in seg.PerFrameFunctionalGroupsSequence)
    label, _ = label_map(seg, volume, "slicer.dcm")
    assert np.array_equal(label, expected)


# --- overlapping segments ------------------------------------------------------------------------------


def _overlapping() -> tuple[np.ndarray, np.ndarray]:
    one, two = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    one[2:9, 3:8, 1:4] = True
    two[6:12, 5:10, 3:5] = True  # overlaps segment 1 on slice 3
    return one, two


def test_overlapping_segments_are_refused_under_the_default_rule() -> None:
    sources, volume = make_series()
    one, two = _overlapping()
    seg = write_seg(sources, frames(np.stack([one, two], axis=-1)).astype(np.uint8))
    with pytest.raises(InvalidInput, match=r"seg\.dcm \(DICOM-SEG\): segments 1 \('organ 1'\) and 2 \('organ 2'\) overlap "
                                           r"\(9 voxels on slice 3.*overlapping segments are refused"):
        label_map(seg, volume, "seg.dcm")


def test_overlapping_segments_under_highest_wins() -> None:
    sources, volume = make_series()
    one, two = _overlapping()
    seg = write_seg(sources, frames(np.stack([one, two], axis=-1)).astype(np.uint8))
    label, _ = label_map(seg, volume, "seg.dcm", overlap="highest")
    assert np.array_equal(label, np.where(two, 2, np.where(one, 1, 0)))


# --- SEGs that cover some slices -------------------------------------------------------------------------


def test_a_seg_of_some_slices_leaves_the_others_unlabeled_and_says_which() -> None:
    sources, volume = make_series()
    expected = reference()
    seg = write_seg(sources[1:4], frames(expected)[1:4])  # drawn on slices 1-3 only
    mask = read_mask(seg, volume, "seg.dcm")
    assert mask.covered.tolist() == [False, True, True, True, False, False]
    assert np.array_equal(mask.label[:, :, 1:4], expected[:, :, 1:4])
    assert not mask.label[:, :, [0, 4, 5]].any()  # unlabeled, and `covered` says so
    assert re.fullmatch(r"seg\.dcm \(DICOM-SEG\) labels 3 of the 6 slices of its series; slices 0, 4–5 \(0-based, along the "
                        r"series\) are unlabeled, not background", describe_coverage(mask, seg, "seg.dcm"))


# --- bad input ---------------------------------------------------------------------------------------------


def test_a_seg_that_references_two_series_is_refused() -> None:
    sources, volume = make_series()
    other, _ = make_series(seed=1)
    seg = write_seg(sources, frames(reference()))
    second, item = Dataset(), Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = other[0].SOPClassUID, other[0].SOPInstanceUID
    second.SeriesInstanceUID, second.ReferencedInstanceSequence = other[0].SeriesInstanceUID, [item]
    seg.ReferencedSeriesSequence.append(second)
    seg = _read(seg, "seg.dcm")
    match = r"seg\.dcm \(DICOM-SEG\) references 2 series .*send one SEG per series"
    with pytest.raises(InvalidInput, match=match):
        referenced_series(seg, "seg.dcm")  # as it arrives
    with pytest.raises(InvalidInput, match=match):
        label_map(seg, volume, "seg.dcm")


def test_a_seg_off_the_series_grid_is_refused() -> None:
    sources, volume = make_series()
    seg = write_seg(sources, frames(reference()))
    affine = volume.affine.copy()
    affine[:3, 3] += 0.5  # the same series half a millimetre away
    with pytest.raises(InvalidInput, match=r"seg\.dcm frame 1 \(DICOM-SEG\) is not on its series' pixel grid.*does not resample"):
        label_map(seg, SeriesVolume(volume.image, affine, volume.slices), "seg.dcm")
    small, _ = make_series(shape=(10, 12, 6))
    with pytest.raises(InvalidInput, match=r"seg\.dcm \(DICOM-SEG\) has 12x10-pixel frames, its series 12x14"):
        label_map(write_seg(small, frames(reference((10, 12, 6)))), volume, "seg.dcm")


def test_a_frame_whose_position_and_source_image_disagree_is_refused() -> None:
    sources, volume = make_series()
    seg = write_seg(sources, frames(reference()))
    first = seg.PerFrameFunctionalGroupsSequence[0]
    referenced = first.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    elsewhere = next(s for s in sources if s.SOPInstanceUID != referenced)
    first.PlanePositionSequence[0].ImagePositionPatient = elsewhere.ImagePositionPatient
    seg = _read(seg, "seg.dcm")
    match = r"seg\.dcm frame 1 \(DICOM-SEG\) lies on slice \d of its series but references the image of slice \d"
    with pytest.raises(InvalidInput, match=match):
        label_map(seg, volume, "seg.dcm")


def test_a_labelmap_value_no_segment_describes_is_refused() -> None:
    sources, volume = make_series()
    expected = reference()
    seg = write_seg(sources, frames(expected).astype(np.uint8), "LABELMAP")
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [0, 1, 2]  # highdicom describes the background as 0
    del seg.SegmentSequence[2]
    seg = _read(seg, "labelmap.dcm")
    with pytest.raises(InvalidInput, match=r"labelmap\.dcm \(LABELMAP DICOM-SEG\): frame \d holds value 2 that no segment describes"):
        label_map(seg, volume, "labelmap.dcm")


def test_a_labelmap_seg_is_not_an_image() -> None:
    sources, _ = make_series()
    seg = write_seg(sources, frames(reference()).astype(np.uint8), "LABELMAP")
    with pytest.raises(InvalidInput, match=r"labelmap\.dcm is a LABELMAP DICOM-SEG \(segmentation\) object, not an image"):
        series_volume([("labelmap.dcm", seg)], max_voxels=10**8)


# --- a real series ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_GE.is_dir(), reason="../shared/data/dcm_qa_nih is not on this machine (only in the dev/CI tree)")
def test_a_seg_on_a_real_ge_series() -> None:
    """The first temporal position of a GE EPI series of dcm_qa_nih (15 real slices), segmented with highdicom."""
    files = sorted((SHARED_GE / "mr_0004").glob("*.dcm"))
    by_position: dict[tuple[float, ...], Dataset] = {}
    for f in files:
        ds = read_instance(f.read_bytes(), f.name)
        key = tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3))
        if key not in by_position or int(ds.InstanceNumber) < int(by_position[key].InstanceNumber):
            by_position[key] = ds
    sources = list(by_position.values())
    volume = series_volume([(f"{k}.dcm", ds) for k, ds in enumerate(sources)], max_voxels=10**8)
    cols, rows, slices = volume.image.shape[:3]
    assert slices == 15
    expected = (volume.image[..., 0] > np.percentile(volume.image, 70)).astype(np.int32)
    expected[: cols // 2] *= 2  # a second segment on the left half
    by_uid = {uid: k for k, at_position in enumerate(volume.slices) for uid, _ in at_position}
    pixels = np.stack([expected[:, :, by_uid[str(ds.SOPInstanceUID)]].T for ds in sources]).astype(np.uint8)
    seg = dcmqi_style(write_seg(sources, pixels), "derivation")
    label, _ = label_map(seg, volume, "seg.dcm")
    assert np.array_equal(label, expected)
