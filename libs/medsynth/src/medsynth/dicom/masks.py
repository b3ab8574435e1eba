"""Masks that arrive as DICOM: DICOM-SEG (BINARY, FRACTIONAL and LABELMAP, read with highdicom) and RT
Structure Sets (contours rasterised onto the referenced series' grid). Either becomes the scan's
integer label map on the image series' grid, with the name of each label (segment or ROI) kept for
the manifest.

A mask is matched to its image series by the SeriesInstanceUID it references (after de-identification
both carry the same remapped UID). A mask whose series is not there is refused, naming it; so is a
SEG that references more than one series.

How a SEG's frames become the label map (:func:`read_mask`):

* **Placement by geometry.** Each frame is put on the slice of the image series that its
  PlanePositionSequence / PlaneOrientationSequence / PixelMeasuresSequence (per-frame, else shared)
  say it lies on: its orientation, pixel spacing, rows and columns must be the series' and its
  ImagePositionPatient must fall on a slice origin within :data:`POSITION_TOLERANCE` of a voxel (in
  plane) and of the slice step (along the normal). This needs neither the frames' source-image
  references nor SpatialLocationsPreserved, which dcmqi/3D Slicer files omit (aligned frames with no
  DerivationImageSequence, or one without SpatialLocationsPreserved). Where a frame does reference a
  source image of the series, that image must be on the same slice; a frame with no position is placed
  by its reference alone. A SEG not on the series' pixel grid (cropped, resampled, rotated) is refused
  — medsynth does not resample masks.
* **Segment values.** The label value of a segment is its SegmentNumber. BINARY: a pixel is in the
  frame's segment when its stored value is non-zero. FRACTIONAL: when its value is at least
  :data:`FRACTIONAL_THRESHOLD` (0.5) of MaximumFractionalValue. LABELMAP: the stored value is the segment
  number; PixelPaddingValue (default 0) is background; any other value no segment describes is refused.
* **Overlap.** A label map holds one label per voxel. Under :data:`OVERLAP` ``"refuse"`` (the default)
  segments that share a voxel are an :class:`~medsynth.core.errors.InvalidInput` naming both segments
  and where; under ``"highest"`` the higher segment number wins (highdicom's rule for overlapping
  segments). Both are applied per voxel, with FRACTIONAL segments after thresholding. (One channel per
  segment is not a shape the dataset's label maps take.)
* **Coverage.** The slices a SEG covers are those of the source images it lists in
  ReferencedSeriesSequence (every slice when it lists none) plus those its frames lie on. On a covered
  slice a voxel in no segment is background 0 — writers (highdicom, dcmqi) omit empty frames. A slice it
  does not cover is *unlabeled*, not background: :func:`read_mask` says which (:attr:`Mask.covered`).
  A dataset's label map has no value for "unlabeled", so ingestion stores the coverage beside it (a
  0/1 volume, :attr:`medsynth.datasets.manifest.ScanEntry.coverage_key`) and views flag the slices it
  leaves out as unlabeled (:mod:`medsynth.datasets.views`) rather than let them read as background.

An RT Structure Set covers every slice (slices without contours are background); where ROIs overlap a
later ROI wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from medsynth.core.errors import InvalidInput
from medsynth.dicom.series import LPS_TO_RAS, ORIENTATION_ATOL, PIXEL_SPACING_ATOL, SeriesVolume, numbers

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
MASK_SOP_CLASSES = {SEG: "DICOM-SEG", LABELMAP_SEG: "DICOM-SEG", RTSTRUCT: "RTSTRUCT"}
SEG_SOP_CLASSES = (SEG, LABELMAP_SEG)
#: A contour point lies on a slice when within this fraction of the slice step of it.
SLICE_TOLERANCE = 0.25
#: A SEG frame lies on a slice when its origin is within this fraction of a voxel of the slice's
#: origin, in plane (pixel spacing) and along the normal (slice step).
POSITION_TOLERANCE = 0.25
#: A FRACTIONAL segment holds a pixel whose value is at least this fraction of MaximumFractionalValue.
FRACTIONAL_THRESHOLD = 0.5
OverlapRule = Literal["refuse", "highest"]
#: What overlapping SEG segments do: "refuse" (InvalidInput) or "highest" (the higher segment number wins).
OVERLAP: OverlapRule = "refuse"

IMAGE_POSITION, IMAGE_ORIENTATION, PIXEL_SPACING = 0x00200032, 0x00200037, 0x00280030


@dataclass(frozen=True)
class Mask:
    """A mask on its series' grid: ``label`` (column, row, slice) of segment numbers (0 background),
    ``names`` label → segment or ROI name, ``covered[k]`` whether the mask says anything about slice
    ``k`` (False: unlabeled, and ``label`` holds 0 there only for want of another value)."""

    label: np.ndarray
    names: dict[int, str]
    covered: np.ndarray


def describe_coverage(mask: Mask, ds: Dataset, name: str) -> str | None:
    """None when ``mask`` covers every slice of its series; else a sentence naming the slices it
    leaves unlabeled (0-based, along the series)."""
    if mask.covered.all():
        return None
    missing = np.flatnonzero(~mask.covered)
    return (f"{name} ({_kind(ds)}) labels {int(mask.covered.sum())} of the {mask.covered.size} slices of its series; "
            f"slice{'s' if missing.size > 1 else ''} {_ranges(missing)} (0-based, along the series) are unlabeled, not background")


def is_mask(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in MASK_SOP_CLASSES


def _kind(ds: Dataset) -> str:
    return "LABELMAP DICOM-SEG" if str(ds.SOPClassUID) == LABELMAP_SEG else MASK_SOP_CLASSES[str(ds.SOPClassUID)]


def referenced_series(ds: Dataset, name: str) -> str:
    """The SeriesInstanceUID of the images ``ds`` (a SEG or an RTSTRUCT) was drawn on; a SEG that
    references several series is refused."""
    try:
        if str(ds.SOPClassUID) in SEG_SOP_CLASSES:
            series = [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence]
            if len(set(series)) > 1:
                raise InvalidInput(f"{name} ({_kind(ds)}) references {len(set(series))} series ({', '.join(sorted(set(series)))}); "
                                   "medsynth reads a segmentation onto one image series: send one SEG per series.")
            return series[0]
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError, KeyError):
        raise InvalidInput(f"{name} ({_kind(ds)}) does not say which series it was drawn on.") from None


def read_mask(ds: Dataset, volume: SeriesVolume, name: str, *, overlap: OverlapRule = OVERLAP) -> Mask:
    """Mask ``ds`` (SEG of any type, or RTSTRUCT) on ``volume``'s grid, with the slices it covers.
    :func:`describe_coverage` says which it leaves unlabeled."""
    if volume.image.shape[3] != 1:
        raise InvalidInput(f"{name}: masks on time series are not supported.")
    if overlap not in ("refuse", "highest"):
        raise ValueError(f"unknown overlap rule {overlap!r}")
    if str(ds.SOPClassUID) in SEG_SOP_CLASSES:
        return _seg(ds, volume, name, overlap)
    label, names = _rtstruct(ds, volume, name)
    return Mask(label, names, np.ones(label.shape[2], dtype=bool))


# --- DICOM-SEG -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The series' geometry in LPS, as a SEG frame is checked against it."""

    to_voxel: np.ndarray  # LPS mm -> (column, row, slice) indices
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]  # between rows, between columns (PixelSpacing order)
    rows: int
    columns: int
    slices: int

    @classmethod
    def of(cls, volume: SeriesVolume) -> _Grid:
        lps = LPS_TO_RAS @ volume.affine
        col_spacing, row_spacing = float(np.linalg.norm(lps[:3, 0])), float(np.linalg.norm(lps[:3, 1]))
        columns, rows, slices = volume.image.shape[:3]
        return cls(np.linalg.inv(lps), lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing, (row_spacing, col_spacing),
                   rows, columns, slices)


def _seg(ds: Dataset, volume: SeriesVolume, name: str, overlap: OverlapRule) -> Mask:
    import highdicom as hd

    kind = _kind(ds)
    referenced_series(ds, name)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        seg_type = seg.segmentation_type.value
        segments = {int(s.SegmentNumber): str(s.get("SegmentLabel") or f"segment {s.SegmentNumber}") for s in seg.SegmentSequence}
    except Exception as exc:  # noqa: BLE001 - highdicom raises ValueError/AttributeError/KeyError for malformed SEGs
        raise InvalidInput(f"{name} is not a readable {kind}: {type(exc).__name__}: {exc}") from None
    grid = _Grid.of(volume)
    if (int(seg.Rows), int(seg.Columns)) != (grid.rows, grid.columns):
        raise InvalidInput(f"{name} ({kind}) has {seg.Rows}x{seg.Columns}-pixel frames, its series {grid.rows}x{grid.columns}: "
                           "it is not on the series' pixel grid (medsynth does not resample masks).")
    where = _source_slices(volume)
    placed = [(_frame_slice(ds, f, grid, where, name, kind), _frame_segment(ds, f, seg_type, segments, name, kind), f)
              for f in range(int(seg.get("NumberOfFrames", 1) or 1))]

    label = np.zeros((grid.columns, grid.rows, grid.slices), dtype=np.int32)
    names = dict(segments)
    background, maximum = 0, 1
    if seg_type == "LABELMAP":
        background = int(ds.get("PixelPaddingValue", 0) or 0)
        names.pop(background, None)
        if 0 in names:
            raise InvalidInput(f"{name} ({kind}) numbers a segment 0 ({names[0]!r}) that is not its background "
                               f"(PixelPaddingValue {background}); label value 0 is background in medsynth.")
    elif seg_type == "FRACTIONAL":
        maximum = int(ds.get("MaximumFractionalValue", 0) or 0)
        if maximum < 1:
            raise InvalidInput(f"{name} ({kind}) is FRACTIONAL without a positive MaximumFractionalValue.")
    seen: dict[tuple[int, int], int] = {}
    for k, segment, f in sorted(placed):  # ascending segment number: under "highest" a higher one overwrites
        if (k, segment) in seen:
            what = f"segment {segment}" if segment else "the label map"
            raise InvalidInput(f"{name} ({kind}) has two frames ({seen[k, segment] + 1} and {f + 1}) of {what} on slice {k}.")
        seen[k, segment] = f
        try:
            stored = np.asarray(seg.get_stored_frame(f, as_index=True)).T  # (row, column) -> (column, row)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types for damaged data
            raise InvalidInput(f"{name} ({kind}): frame {f + 1} cannot be decoded: {type(exc).__name__}: {exc}") from None
        region = label[:, :, k]  # a view
        if seg_type == "LABELMAP":
            values = stored.astype(np.int64)
            unknown = np.setdiff1d(np.unique(values), [background, *names])
            if unknown.size:
                raise InvalidInput(f"{name} ({kind}): frame {f + 1} holds value{'s' if unknown.size > 1 else ''} "
                                   f"{', '.join(map(str, unknown[:5].tolist()))} that no segment describes.")
            values[values == background] = 0
            region[...] = values
            continue
        inside = stored >= FRACTIONAL_THRESHOLD * maximum if seg_type == "FRACTIONAL" else stored != 0
        if overlap == "refuse":
            _refuse_overlap(region, inside, segment, names, f"{name} ({kind})", k)
        region[inside] = segment
    covered = _covered(ds, volume, [k for k, _, _ in placed])
    return Mask(label, {n: names[n] for n in sorted(names)}, covered)


def _refuse_overlap(region: np.ndarray, inside: np.ndarray, segment: int, names: dict[int, str], what: str, k: int) -> None:
    """Refuse segment ``segment`` (pixels ``inside``) where ``region`` (slice ``k``) already holds another."""
    clash = inside & (region != 0)
    if clash.any():
        i, j = (int(v) for v in np.argwhere(clash)[0])
        other = int(region[i, j])
        raise InvalidInput(f"{what}: segments {other} ({names.get(other, '?')!r}) and {segment} ({names.get(segment, '?')!r}) "
                           f"overlap ({int(clash.sum())} voxels on slice {k}, e.g. column {i}, row {j}); a label map holds one "
                           "label per voxel, and under medsynth's overlap rule 'refuse' overlapping segments are refused.")


def _first(seq) -> Dataset | None:
    return seq[0] if seq else None


def _group(ds: Dataset, f: int, keyword: str) -> Dataset | None:
    """Functional group ``keyword`` of frame ``f``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    item = _first(per_frame[f].get(keyword)) if per_frame is not None and f < len(per_frame) else None
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    return item if item is not None or shared is None else _first(shared.get(keyword))


def _numbers(item: Dataset | None, tag: int, what: str) -> list[float]:
    return numbers(item, tag, what) if item is not None and tag in item else []


def _source_slices(volume: SeriesVolume) -> dict[tuple[str, int | None], int]:
    """(SOPInstanceUID, 0-based frame or None) → slice; (uid, None) also for a multi-frame instance,
    -1 when its frames lie on several slices (a reference without a frame number is then ambiguous)."""
    out: dict[tuple[str, int | None], int] = {}
    for k, at_position in enumerate(volume.slices):
        for uid, frame in at_position:
            out[uid, frame] = k
            if frame is not None:
                out[uid, None] = k if out.get((uid, None), k) == k else -1
    return out


def _frame_segment(ds: Dataset, f: int, seg_type: str, segments: dict[int, str], name: str, kind: str) -> int:
    """The segment SEG frame ``f`` holds (BINARY, FRACTIONAL); 0 for a LABELMAP frame (its values say)."""
    if seg_type == "LABELMAP":
        return 0
    item = _group(ds, f, "SegmentIdentificationSequence")
    number = item.get("ReferencedSegmentNumber") if item is not None else None
    if number is None:
        raise InvalidInput(f"{name} frame {f + 1} ({kind}) does not say which segment it holds (no ReferencedSegmentNumber).")
    if int(number) not in segments:
        raise InvalidInput(f"{name} frame {f + 1} ({kind}) holds segment {int(number)}, which its SegmentSequence does not describe.")
    return int(number)


def _frame_slice(ds: Dataset, f: int, grid: _Grid, where: dict[tuple[str, int | None], int], name: str, kind: str) -> int:
    """The series slice SEG frame ``f`` lies on (by geometry; by source reference when it has no position)."""
    what = f"{name} frame {f + 1}"
    position = _numbers(_group(ds, f, "PlanePositionSequence"), IMAGE_POSITION, what)
    orientation = _numbers(_group(ds, f, "PlaneOrientationSequence"), IMAGE_ORIENTATION, what)
    spacing = _numbers(_group(ds, f, "PixelMeasuresSequence"), PIXEL_SPACING, what)
    referenced = _referenced_slices(ds, f, where)
    off_grid = f"{what} ({kind}) is not on its series' pixel grid"
    if len(orientation) == 6:
        if np.abs(np.asarray(orientation) - np.r_[grid.row_dir, grid.col_dir]).max() > ORIENTATION_ATOL:
            raise InvalidInput(f"{off_grid}: its orientation {orientation} differs from the series' "
                               f"{[round(v, 6) for v in [*grid.row_dir, *grid.col_dir]]} (medsynth does not resample masks).")
    if len(spacing) == 2:  # a relative tolerance too: spacings written from floats (dcmqi) carry rounding
        if any(abs(a - b) > PIXEL_SPACING_ATOL + 1e-4 * b for a, b in zip(spacing, grid.spacing)):
            raise InvalidInput(f"{off_grid}: its pixel spacing {spacing} differs from the series' "
                               f"{[round(v, 6) for v in grid.spacing]} (medsynth does not resample masks).")
    if len(position) != 3:
        if len(referenced) == 1:
            return referenced.pop()
        raise InvalidInput(f"{what} ({kind}) has no ImagePositionPatient and "
                           f"{'references images on several slices' if referenced else 'references no image'} of its series, "
                           "so which slice it labels is unknown.")
    i, j, k = (grid.to_voxel @ np.array([*position, 1.0]))[:3]
    slice_index = int(round(k))
    if max(abs(i), abs(j)) > POSITION_TOLERANCE or abs(k - slice_index) > POSITION_TOLERANCE:
        raise InvalidInput(f"{off_grid}: its ImagePositionPatient {position} is at voxel ({i:.3g}, {j:.3g}, {k:.3g}) of the "
                           "series, not on a slice origin (medsynth does not resample masks).")
    if not 0 <= slice_index < grid.slices:
        raise InvalidInput(f"{what} ({kind}) lies at slice {slice_index} of its series, which has {grid.slices} "
                           f"slice{'s' if grid.slices > 1 else ''}: it labels an image that is not there.")
    if referenced and referenced != {slice_index}:
        raise InvalidInput(f"{what} ({kind}) lies on slice {slice_index} of its series but references the image of slice "
                           f"{', '.join(map(str, sorted(referenced)))}.")
    return slice_index


def _referenced_slices(ds: Dataset, f: int, where: dict[tuple[str, int | None], int]) -> set[int]:
    """The slices of the series whose images frame ``f`` names in its DerivationImageSequence."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = per_frame[f] if per_frame is not None and f < len(per_frame) else None
    out: set[int] = set()
    for derivation in (groups.get("DerivationImageSequence") or []) if groups is not None else []:
        for source in derivation.get("SourceImageSequence") or []:
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            frames = [int(v) - 1 for v in _as_list(source.get("ReferencedFrameNumber"))] or [None]
            for frame in frames:
                k = where.get((uid, frame))
                if k is not None and k >= 0:
                    out.add(k)
    return out


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]


def _covered(ds: Dataset, volume: SeriesVolume, frame_slices: list[int]) -> np.ndarray:
    """Slices the SEG speaks for: those of the source images it lists (every slice when it lists none)
    and those its frames lie on."""
    listed = {str(item.get("ReferencedSOPInstanceUID", "")) for series in ds.get("ReferencedSeriesSequence") or []
              for item in series.get("ReferencedInstanceSequence") or []}
    listed.discard("")
    if not listed:
        return np.ones(len(volume.slices), dtype=bool)
    covered = np.array([any(uid in listed for uid, _ in at_position) for at_position in volume.slices], dtype=bool)
    covered[frame_slices] = True
    return covered


def _ranges(indices: np.ndarray) -> str:
    """0, 1, 2, 5 → "0–2, 5"."""
    parts, start = [], None
    values = [int(v) for v in indices]
    for n, v in enumerate(values):
        start = v if start is None else start
        if n + 1 == len(values) or values[n + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}–{v}")
            start = None
    return ", ".join(parts)


# --- RTSTRUCT --------------------------------------------------------------------------------------------


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
