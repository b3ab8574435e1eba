"""Siemens mosaics: several slices of one volume tiled in one image.

A Siemens EPI (fMRI, DWI) instance with ``MOSAIC`` in its ImageType holds a whole volume: its slices
are tiles of a square grid (``ceil(sqrt(n))`` tiles a side, filled row by row, the last ones blank).
How many there are, and which way they run, are only in the Siemens CSA image header, a private
attribute (0029,xx10) under the creator ``SIEMENS CSA HEADER``:

* ``NumberOfImagesInMosaic``: the number of tiles that hold a slice;
* ``SliceNormalVector``: the direction in which the tiles' slices advance (parallel or anti-parallel
  to the cross product of ImageOrientationPatient's row and column directions).

The mosaic's ImagePositionPatient is that of the whole mosaic image, as if it were one big slice
centred on the first tile's centre; the first slice's position is corrected by half the difference
between the mosaic's and a tile's size (as dcm2niix and nibabel do). The slices are SpacingBetweenSlices
apart (else SliceThickness). :func:`mosaic_info` reads all of this and names the problem as
:class:`~medsynth.core.errors.InvalidInput` when it cannot.

De-identification removes private attributes, the CSA header with them (it can hold protocol text).
:func:`safe_csa_header` rebuilds a CSA image header holding only :data:`SAFE_CSA_TAGS`, each value
checked to be a number, which the de-identifier keeps (the Retain Safe Private Option of PS3.15): a
stored mosaic stays one that medsynth, dcm2niix and nibabel can unpack.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medsynth.core.errors import InvalidInput

CSA_GROUP = 0x0029
CSA_CREATOR = "SIEMENS CSA HEADER"
#: The private creator elements searched for CSA_CREATOR, and the tags a geometry-only read must parse.
CREATOR_ELEMENTS = range(0x10, 0x20)
CSA_TAGS = [*(CSA_GROUP << 16 | e for e in CREATOR_ELEMENTS), *(CSA_GROUP << 16 | e << 8 | 0x10 for e in CREATOR_ELEMENTS)]
#: CSA image header fields kept through de-identification: numbers only (acquisition geometry, slice
#: timing, diffusion weighting), each value checked to be one.
SAFE_CSA_TAGS = {
    "NumberOfImagesInMosaic": "US",
    "SliceNormalVector": "FD",
    "ProtocolSliceNumber": "IS",
    "MosaicRefAcqTimes": "FD",
    "B_value": "IS",
    "DiffusionGradientDirection": "FD",
}
_SYNGODT = {"US": 10, "FD": 4, "IS": 6}
# The layouts of a CSA header: its field count, a field's header, an item's header.
_COUNT, _FIELD, _ITEM = struct.Struct("<2I"), struct.Struct("<64si4s3i"), struct.Struct("<4i")
#: Most fields (and items in one) a CSA header may declare: real ones hold about 100 fields of 6 items.
MAX_CSA_FIELDS = 1000


@dataclass(frozen=True)
class MosaicInfo:
    """What unpacking one mosaic instance needs."""

    images: int  # slices tiled in it
    across: int  # tiles a side of the grid
    tile_rows: int
    tile_columns: int
    slice_normal: np.ndarray  # CSA SliceNormalVector (unit)


def is_mosaic(ds: Dataset) -> bool:
    value = ds.get("ImageType", "")
    values = [value] if isinstance(value, str) else list(value or ())
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


def csa_image_header(ds: Dataset) -> bytes | None:
    """The raw CSA image header (0029,xx10) of ``ds``, None when it has none."""
    for element in CREATOR_ELEMENTS:
        creator = ds.get((CSA_GROUP << 16) | element)
        if creator is None:
            continue
        value = creator.value
        text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value or "")
        if text.strip(" \x00") != CSA_CREATOR:
            continue
        header = ds.get((CSA_GROUP << 16) | (element << 8) | 0x10)
        if header is None or not isinstance(header.value, bytes | bytearray) or not header.value:
            return None
        return bytes(header.value)
    return None


def read_csa(data: bytes) -> dict[str, list[str]]:
    """The fields of a CSA header (CSA2, ``SV10``, or the older CSA1): name → its values as text
    (what the items hold up to their NUL; empty items dropped). The layout is nibabel's reading of
    it (``nibabel.nicom.csareader``), kept as text so that one field's odd value spoils no other.
    Raises ``ValueError`` saying why it cannot be read."""
    csa2 = data[:4] == b"SV10"
    at = 8 if csa2 else 0

    def take(layout: struct.Struct):
        nonlocal at
        if at + layout.size > len(data):
            raise ValueError(f"it ends at byte {len(data)}, inside a field")
        values = layout.unpack_from(data, at)
        at += layout.size
        return values

    count, _ = take(_COUNT)
    if not 0 < count <= MAX_CSA_FIELDS:
        raise ValueError(f"it declares {count} fields")
    fields: dict[str, list[str]] = {}
    first_items = 0
    for number in range(count):
        name, vm, _, _, items, _ = take(_FIELD)
        if not 0 <= items <= MAX_CSA_FIELDS:
            raise ValueError(f"field {number} declares {items} items")
        if number == 1:
            first_items = items
        values = []
        for _ in range(items):
            x0, x1, _, _ = take(_ITEM)
            length = x1 if csa2 else x0 - first_items
            if length < 0 or at + length > len(data):
                if csa2:
                    raise ValueError(f"an item of field {number} runs past the header's end")
                break  # CSA1 pads its last items oddly, as nibabel reads it
            text = data[at:at + length].split(b"\x00", 1)[0].decode("latin-1").strip()
            at += length + (-length % 4)
            if text and (vm == 0 or len(values) < vm):
                values.append(text)
        fields[name.split(b"\x00", 1)[0].decode("latin-1")] = values
    return fields


def mosaic_info(ds: Dataset, rows: int, columns: int, what: str) -> MosaicInfo:
    """The tiling of the mosaic ``ds`` (``rows`` x ``columns`` pixels). ``what`` names the instance
    (and its series) in the :class:`InvalidInput` raised when its CSA image header is missing,
    unreadable or inconsistent with the image."""
    data = csa_image_header(ds)
    if data is None:
        raise InvalidInput(f"{what} is a Siemens mosaic (ImageType MOSAIC: slices tiled in one image) without its CSA image "
                           f"header ((0029,xx10) of private creator {CSA_CREATOR!r}), which says how many slices it holds "
                           "and which way they run: it cannot be unpacked. Send the scanner's export with its private "
                           "attributes, or convert it with dcm2niix and upload the NIfTI.")
    try:
        fields = read_csa(data)
    except ValueError as exc:
        raise InvalidInput(f"{what} is a Siemens mosaic whose CSA image header cannot be read ({exc}): it cannot be unpacked.") from None
    images = _number(fields.get("NumberOfImagesInMosaic"))
    if images is None or images < 1 or images != int(images):
        raise InvalidInput(f"{what} is a Siemens mosaic whose CSA image header gives no usable NumberOfImagesInMosaic "
                           f"({fields.get('NumberOfImagesInMosaic')!r}): it cannot be unpacked.")
    images = int(images)
    across = math.ceil(math.sqrt(images))
    if rows % across or columns % across:
        raise InvalidInput(f"{what}: a mosaic of {images} slices is a grid of {across}x{across} tiles, which its "
                           f"{rows}x{columns} pixels do not divide into.")
    normal = fields.get("SliceNormalVector") or []
    try:
        vector = np.array([float(v) for v in normal], dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.array([])
    if vector.shape != (3,) or not np.all(np.isfinite(vector)) or not 0.9 < np.linalg.norm(vector) < 1.1:
        raise InvalidInput(f"{what} is a Siemens mosaic whose CSA image header gives no usable SliceNormalVector "
                           f"({normal!r}): the order of its slices is unknown.")
    return MosaicInfo(images, across, rows // across, columns // across, vector / np.linalg.norm(vector))


def _number(values: list[str] | None) -> float | None:
    if not values:
        return None
    try:
        number = float(values[0])
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def safe_csa_header(ds: Dataset) -> bytes | None:
    """A CSA image header holding only the :data:`SAFE_CSA_TAGS` of ``ds``'s, their values written
    back as numbers; None when ``ds`` has no readable one or none of those fields has a value."""
    data = csa_image_header(ds)
    if data is None:
        return None
    try:
        fields = read_csa(data)
    except ValueError:
        return None
    kept: dict[str, list[str]] = {}
    for name, vr in SAFE_CSA_TAGS.items():
        values = []
        for value in fields.get(name) or []:
            try:
                number = float(value)
            except (TypeError, ValueError):
                break
            if not math.isfinite(number):
                break
            values.append(str(int(number)) if vr in ("US", "IS") and number.is_integer() else repr(number))
        else:
            if values:
                kept[name] = values
    return write_csa({name: (SAFE_CSA_TAGS[name], values) for name, values in kept.items()}) if kept else None


def write_csa(fields: dict[str, tuple[str, list[str]]]) -> bytes:
    """A CSA2 (``SV10``) header of ``fields`` (name → (VR, values as text)), as Siemens lays it out:
    the readers of dcm2niix and nibabel take it."""
    out = bytearray(b"SV10" + b"\x04\x03\x02\x01" + struct.pack("<2I", len(fields), 77))
    for name, (vr, values) in fields.items():
        out += struct.pack("<64si4s3i", name.encode("ascii"), len(values), vr.encode("ascii"), _SYNGODT.get(vr, 0),
                           len(values), 77)
        for value in values:
            item = value.encode("ascii") + b"\x00"
            out += struct.pack("<4i", len(item), len(item), 77, len(item))
            out += item + b"\x00" * (-len(item) % 4)
    return bytes(out)
