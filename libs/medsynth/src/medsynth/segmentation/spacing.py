"""Physical pixel spacing of the items of a 2D slice view, for distances (HD95) in millimetres.

A ``slices2d`` view (:func:`medsynth.datasets.views.build_views`) takes slice ``i`` along ``axis``
of a canonical (RAS) volume, zero-pads it to a square of ``side = max(h, w)`` pixels and resizes
that square to ``size × size`` (:func:`medsynth.datasets.views.resize_square`; a 2D scan is one
slice, whatever the axis). Padding adds pixels without changing their size and the resize scales
both axes by ``side / size``, so a view pixel measures::

    (spacing[row axis] * side / size, spacing[col axis] * side / size)   millimetres

where the row and column axes are the volume's axes other than ``axis``, in order, and ``spacing``
is the scan's canonical voxel size in the dataset manifest (``ScanEntry.spacing``, mm). Anisotropic
voxels stay anisotropic: the view keeps the pixel aspect ratio, not the physical one.

Consecutive slices of a scan lie ``spacing[axis]`` mm apart (the slicing does not resample along
``axis``): :func:`view_slice_spacing` gives that distance per item, for 3D HD95 on the stacked
slices of views that keep every slice of a held-out scan (``ViewSpec.keep_empty_eval``).

Views do not record per-item spacing; it is derived here from the manifest version the view was
built from. When that cannot be done (a 3D-patch view, a view record without its spec, scans missing
from the manifest), :func:`view_pixel_spacing` returns ``None`` and distances stay in view pixels,
labelled ``PIXEL_UNIT``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput

MM_UNIT = "mm"
PIXEL_UNIT = "px"
MM_SOURCE = "manifest voxel spacing × side / size (slices padded to a square of side max(h, w), resized to size)"
PIXEL_SOURCE = "view pixels: no physical spacing known for this view"


def slice_pixel_spacing(shape: Sequence[int], spacing: Sequence[float], axis: int, size: int) -> tuple[float, float]:
    """(row, col) size in mm of one pixel of a ``size``² view slice of a scan.

    Args:
        shape: the canonical scan's shape (2 or 3 axes).
        spacing: its voxel size per axis in mm (same length as ``shape``).
        axis: the slicing axis of the view (ignored for 2D scans, as ``slices_2d`` does).
        size: the view's side in pixels.
    """
    shape, sp = [int(n) for n in shape], [float(s) for s in spacing]
    if len(shape) not in (2, 3) or len(sp) != len(shape):
        raise InvalidInput(f"need a 2D or 3D shape with one spacing per axis, got shape {shape} and spacing {sp}.")
    if not all(np.isfinite(s) and s > 0 for s in sp) or min(shape) < 1 or size < 1:
        raise InvalidInput(f"shape, spacing and size must be positive, got {shape}, {sp}, {size}.")
    if len(shape) == 2:
        rows, cols = 0, 1
    else:
        if not -3 <= axis < 3:
            raise InvalidInput(f"axis must index one of 3 axes, got {axis}.")
        rows, cols = (a for a in range(3) if a != axis % 3)
    side = max(shape[rows], shape[cols])
    return sp[rows] * side / size, sp[cols] * side / size


def _entry(scans: Mapping[str, Any], scan_id: str) -> tuple[Any, Any] | None:
    entry = scans.get(scan_id)
    if entry is None:
        return None
    return tuple(entry[k] if isinstance(entry, Mapping) else getattr(entry, k) for k in ("shape", "spacing"))  # type: ignore[return-value]


def view_slice_spacing(view: Mapping[str, Any], scans: Mapping[str, Any], item_scans: Sequence[str]) -> np.ndarray | None:
    """Per-item distance in mm between a ``slices2d`` view item and the next slice of its scan.

    Args: as :func:`view_pixel_spacing`.

    Returns:
        ``(N,)`` float64: the scan's voxel spacing along the view's axis, NaN for the slice of a 2D
        scan (no axis between slices); ``None`` when :func:`view_pixel_spacing` would be ``None``.
    """
    spec = view.get("spec") or {}
    if spec.get("mode") != "slices2d" or "axis" not in spec:
        return None
    cache: dict[str, float] = {}
    out = np.empty(len(item_scans), dtype=np.float64)
    for i, scan_id in enumerate(np.asarray(item_scans).astype(str)):
        if scan_id not in cache:
            entry = _entry(scans, scan_id)
            if entry is None:
                return None
            shape, spacing = entry
            if len(shape) == 2:
                cache[scan_id] = float("nan")
            else:
                slice_pixel_spacing(shape, spacing, int(spec["axis"]), 1)  # checks shape, spacing and axis
                cache[scan_id] = float(spacing[int(spec["axis"]) % 3])
        out[i] = cache[scan_id]
    return out


def view_pixel_spacing(view: Mapping[str, Any], scans: Mapping[str, Any], item_scans: Sequence[str]) -> np.ndarray | None:
    """Per-item (row, col) pixel spacing in mm of a ``slices2d`` view's items, or ``None``.

    Args:
        view: the view record (``view.json``): its ``spec`` gives ``mode``, ``axis`` and ``size``.
        scans: scan id → manifest entry (anything with ``shape`` and ``spacing``, attributes or keys).
        item_scans: the scan id of each item (a split's ``scans`` array).

    Returns:
        ``(N, 2)`` float64, or ``None`` when the view is not a 2D slice view, lacks its spec, or an
        item's scan is not in ``scans`` (callers then report distances in view pixels).
    """
    spec = view.get("spec") or {}
    if spec.get("mode") != "slices2d" or "size" not in spec or "axis" not in spec:
        return None
    cache: dict[str, tuple[float, float]] = {}
    out = np.empty((len(item_scans), 2), dtype=np.float64)
    for i, scan_id in enumerate(np.asarray(item_scans).astype(str)):
        if scan_id not in cache:
            entry = _entry(scans, scan_id)
            if entry is None:
                return None
            shape, spacing = entry
            cache[scan_id] = slice_pixel_spacing(shape, spacing, int(spec["axis"]), int(spec["size"]))
        out[i] = cache[scan_id]
    return out
