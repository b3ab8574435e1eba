"""Masks that arrive as DICOM: DICOM-SEG (read with highdicom) and RT Structure Sets (contours
rasterised onto the referenced series' grid). Either becomes the scan's integer label map, with the
name of each label (segment or ROI) kept for the manifest.

A mask is matched to its image series by the SeriesInstanceUID it references (after de-identification
both carry the same remapped UID). A mask whose series is not there is refused, naming it.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from medsynth.core.errors import InvalidInput
from medsynth.dicom.series import LPS_TO_RAS, SeriesVolume

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
MASK_SOP_CLASSES = {SEG: "DICOM-SEG", RTSTRUCT: "RTSTRUCT"}
#: A contour point lies on a slice when within this fraction of the slice step of it.
SLICE_TOLERANCE = 0.25


def is_mask(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in MASK_SOP_CLASSES


def referenced_series(ds: Dataset, name: str) -> str:
    """The SeriesInstanceUID of the images ``ds`` (a SEG or an RTSTRUCT) was drawn on."""
    try:
        if str(ds.SOPClassUID) == SEG:
            return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError, KeyError):
        raise InvalidInput(f"{name} ({MASK_SOP_CLASSES[str(ds.SOPClassUID)]}) does not say which series it was drawn on.") from None


def label_map(ds: Dataset, volume: SeriesVolume, name: str) -> tuple[np.ndarray, dict[int, str]]:
    """The integer label map of mask ``ds`` on ``volume``'s grid (column, row, slice), and label → name."""
    if volume.image.shape[3] != 1:
        raise InvalidInput(f"{name}: masks on time series are not supported.")
    if str(ds.SOPClassUID) == SEG:
        return _seg(ds, volume, name)
    return _rtstruct(ds, volume, name)


def _seg(ds: Dataset, volume: SeriesVolume, name: str) -> tuple[np.ndarray, dict[int, str]]:
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
        uids = [at_position[0][0] for at_position in volume.slices]
        pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=False, dtype=np.int32)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom raises ValueError/RuntimeError/KeyError for unusable SEGs
        raise InvalidInput(f"{name} is not a usable DICOM-SEG for its series: {type(exc).__name__}: {exc}") from None
    label = np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))  # (slice, row, col) -> (col, row, slice)
    return label, names


def _rtstruct(ds: Dataset, volume: SeriesVolume, name: str) -> tuple[np.ndarray, dict[int, str]]:
    cols, rows, slices = volume.image.shape[:3]
    label = np.zeros((cols, rows, slices), dtype=np.int32)
    to_voxel = np.linalg.inv(volume.affine) @ LPS_TO_RAS  # contour points are LPS mm
    # the basic profile empties ROI Name (free text), so after de-identification ROIs are known by number
    rois = {int(r.ROINumber): str(r.get("ROIName") or f"roi {r.ROINumber}") for r in ds.get("StructureSetROISequence", [])}
    names: dict[int, str] = {}
    centres = np.stack(np.meshgrid(np.arange(cols), np.arange(rows), indexing="ij"), axis=-1).reshape(-1, 2) + 0.0
    for value, contour_set in enumerate(ds.get("ROIContourSequence", []), start=1):
        number = int(contour_set.ReferencedROINumber)
        names[value] = rois.get(number, f"roi {number}")
        inside = np.zeros_like(label, dtype=bool)
        for contour in contour_set.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) not in ("CLOSED_PLANAR", "POINT"):
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            voxels = (to_voxel @ np.c_[points, np.ones(len(points))].T).T[:, :3]
            k = float(np.mean(voxels[:, 2]))
            slice_index = int(round(k))
            if abs(k - slice_index) > SLICE_TOLERANCE or not 0 <= slice_index < slices or np.ptp(voxels[:, 2]) > 2 * SLICE_TOLERANCE:
                raise InvalidInput(f"{name}: a contour of ROI {names[value]!r} does not lie on a slice of its series.")
            # contours of one ROI on one slice combine by XOR: an inner contour is a hole
            inside[:, :, slice_index] ^= _polygon(centres, voxels[:, :2]).reshape(cols, rows)
        label[inside] = value  # a later ROI wins where ROIs overlap
    if not names:
        raise InvalidInput(f"{name} holds no ROI contours.")
    return label, names


def _polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Which ``points`` (n, 2) lie inside ``polygon`` (m, 2) by the even-odd rule."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.logical_xor.reduce(crosses & (x < at), axis=1)
