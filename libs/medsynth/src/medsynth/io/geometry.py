"""Where a training view's pixels sit in the world, and the one affine its cohorts' files carry.

A view records its geometry (:class:`SliceGeometry` for 2D slices, :class:`PatchGeometry` for 3D
patches; :mod:`medsynth.datasets.views` computes it), so that a synthetic sample drawn by a generator
trained on the view can be written with millimetres a viewer measures: :func:`slice_affine` turns a
slice geometry into the voxel → world (RAS+, mm) affine that both the NIfTI and the DICOM writers of
cohorts use (:mod:`medsynth.sampling.cohort`, :mod:`medsynth.dicom.export`).

Directions are the axis codes of nibabel (``"R"`` = +x, ``"L"`` = −x, ``"A"`` = +y, ``"P"`` = −y,
``"S"`` = +z, ``"I"`` = −z): a canonical 3D volume's array axes 0, 1, 2 point R, A, S.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["R", "L", "A", "P", "S", "I"]
UNIT: dict[str, tuple[float, float, float]] = {
    "R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}  # fmt: skip
#: Decimals (mm) geometry keeps: NIfTI headers hold float32, whose last bits say nothing (0.800000011920929).
DECIMALS = 6
#: The normal a sample's affine gets when its view knows no slice thickness (views of 2D scans only).
UNKNOWN_THICKNESS_MM = 1.0


class SpacingRange(BaseModel):
    """Spacing in mm, one value per array axis: the median over a view's training scans, and the
    smallest and largest of them (to :data:`DECIMALS`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    median: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]

    @classmethod
    def of(cls, values: list[tuple[float, ...]]) -> SpacingRange:
        """The median, min and max per axis of one spacing tuple per scan (not empty)."""
        array = np.asarray(values, dtype=np.float64)
        return cls(median=mm(np.median(array, axis=0)), min=mm(array.min(axis=0)), max=mm(array.max(axis=0)))


def mm(values: np.ndarray) -> tuple[float, ...]:
    """``values`` as plain floats to :data:`DECIMALS`."""
    return tuple(round(float(v), DECIMALS) for v in values)


class SliceGeometry(BaseModel):
    """The geometry of a ``slices2d`` view's items.

    Attributes:
        axis: the axis of the canonical volume the slices were cut along (0..2; 2 for 2D scans).
        normal: its world direction.
        in_plane: the world directions of a slice's array axes 0 and 1 (the volume's other axes, in order).
        size: the side of a view slice in pixels (the view's ``size``), which ``pixel_spacing`` is per.
        pixel_spacing: mm per pixel along array axes 0 and 1 of a view slice (the scan's spacing
            × its padded side / ``size``), over the training split's scans.
        slice_thickness: median spacing along ``axis`` over those scans (mm); None when they are all
            2D scans, which have none.
        scans: how many training scans the medians are over.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["slices2d"] = "slices2d"
    axis: int = Field(ge=0, le=2)
    normal: Direction
    in_plane: tuple[Direction, Direction]
    size: int
    pixel_spacing: SpacingRange
    slice_thickness: float | None
    scans: int


class PatchGeometry(BaseModel):
    """The geometry of a ``patches3d`` view's items (patches are not resampled: a patch voxel is a scan
    voxel). ``axes``: the world directions of a patch's array axes; ``voxel_spacing``: over the training
    split's ``scans``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["patches3d"] = "patches3d"
    axes: tuple[Direction, Direction, Direction]
    voxel_spacing: SpacingRange
    scans: int


ViewGeometry = Annotated[SliceGeometry | PatchGeometry, Field(discriminator="mode")]


def slice_affine(geometry: SliceGeometry | None) -> np.ndarray:
    """The voxel → world (RAS+, mm) affine of a 2D sample shaped like a view slice.

    Column 0 steps along ``in_plane[0]`` by the median pixel spacing of array axis 0, column 1 along
    ``in_plane[1]`` by that of axis 1, column 2 along the slice normal by the median slice thickness
    (:data:`UNKNOWN_THICKNESS_MM` when unknown); the origin is pixel (0, 0) at the world origin.
    Without a geometry (views made before they recorded one): the identity, 1 mm pixels.
    """
    affine = np.eye(4)
    if geometry is None:
        return affine
    steps = (*geometry.pixel_spacing.median, geometry.slice_thickness or UNKNOWN_THICKNESS_MM)
    for column, (direction, step) in enumerate(zip((*geometry.in_plane, geometry.normal), steps)):
        affine[:3, column] = np.asarray(UNIT[direction]) * step
    return affine
