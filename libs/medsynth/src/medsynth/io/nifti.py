"""Validation and canonicalisation of uploaded NIfTI scans.

The ingest service hands this module the raw bytes of an upload. Everything wrong with them is
reported as :class:`~medsynth.core.errors.InvalidInput` (or :class:`~medsynth.core.errors.TooLarge`)
with a message that names the problem; no parsing exception from nibabel, zlib or numpy escapes.

* :func:`load_nifti` reads ``.nii`` or ``.nii.gz`` bytes (NIfTI-1 or NIfTI-2), defending against
  gzip bombs and oversized volumes before any voxel data is decoded.
* :func:`validate_scan` checks an image (and an optional label map) and returns a
  :class:`CanonicalScan`: RAS-oriented arrays, the canonical affine, spacing and label values.
* :func:`canonicalise` turns checked arrays and an affine into that :class:`CanonicalScan`.
* :func:`scrub_free_text` clears the header's free-text fields and extensions of a stored original.
* :func:`to_nifti_bytes` serialises an array and its affine as deterministic ``.nii.gz`` bytes.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from medsynth.core.errors import InvalidInput, MedsynthError, TooLarge

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
# Decompressed bytes allowed beyond the size the header declares (header + extensions + voxels).
GZIP_SLACK_BYTES = 1 << 20
# Largest voxel-data offset accepted (header + extensions), so a header cannot lift the gzip cap.
MAX_VOX_OFFSET = 16 << 20
_INFLATE_CHUNK = 1 << 20
AFFINE_ATOL = 1e-3
# Label values within this distance of an integer count as integers (float label maps, scaled ints).
LABEL_INTEGER_ATOL = 1e-3


@dataclass(frozen=True, eq=False)
class CanonicalScan:
    """A validated scan in canonical RAS orientation.

    ``image`` is float32; ``label`` (None without a label map) is uint8 when its largest value is below
    256, else int16 or int32. Both are C-contiguous arrays of ``shape`` (2D or 3D) that the scan owns.
    ``affine`` maps their voxel indices to world (RAS+ mm) coordinates; ``spacing`` holds one voxel
    size per array axis; ``orientation`` is the axis-code string of ``affine`` (``"RAS"`` for 3D
    scans); ``label_values`` are the sorted distinct values present in ``label``.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    orientation: str
    label_values: tuple[int, ...]


# --- reading -------------------------------------------------------------------------------------


def load_nifti(data: bytes, *, what: str, max_voxels: int) -> nib.Nifti1Image:
    """Parse ``.nii`` or ``.nii.gz`` bytes (gzip is detected by its magic bytes) into an image.

    All voxel data is decoded once here, so truncated or damaged files fail here and not later.
    NIfTI-2 files come back as :class:`nibabel.Nifti2Image`. Raises :class:`TooLarge` when the header
    declares more than ``max_voxels`` voxels (checked before any voxel is decoded) or when gzip data
    inflates beyond what the header declares; :class:`InvalidInput` naming ``what`` for anything else
    unreadable.
    """
    return _read(data, what, max_voxels)[0]


def _read(data: bytes, what: str, max_voxels: int) -> tuple[nib.Nifti1Image, np.ndarray]:
    """:func:`load_nifti`, also returning the decoded voxels (scaled by the header's slope/intercept)."""
    raw = bytes(data)
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip_capped(raw, what, max_voxels)
    image_class, _ = _peek_header(raw, what, max_voxels)
    try:
        img = image_class.from_bytes(raw)
        _check_voxel_count(tuple(img.shape), what, max_voxels)
        return img, np.asanyarray(img.dataobj)
    except MedsynthError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many unrelated types for bad files
        raise _unreadable(what, _describe(exc)) from exc


def _unreadable(what: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{what} is not a readable NIfTI file: {reason}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_voxel_count(shape: tuple[int, ...], what: str, max_voxels: int) -> None:
    voxels = 1
    for n in shape:
        voxels *= int(n)
    if voxels > max_voxels:
        raise TooLarge(f"{what} has {voxels} voxels (shape {shape}), more than the limit of {max_voxels}.")


def check_header(head: bytes, what: str, max_voxels: int) -> None:
    """Check a file's first (inflated) bytes — at least the header — before the rest is read:
    :class:`InvalidInput` for no NIfTI header, :class:`TooLarge` for too many voxels declared."""
    _peek_header(head, what, max_voxels)


def _peek_header(raw: bytes, what: str, max_voxels: int) -> tuple[type[nib.Nifti1Image], int]:
    """The image class for ``raw`` and the byte size its header declares (offset + voxel data).

    Raises :class:`TooLarge` for too many voxels, :class:`InvalidInput` for a missing or bad header.
    """
    if len(raw) < NIFTI1_HEADER_SIZE:
        raise _unreadable(what, f"{len(raw)} bytes is too short for a NIfTI header ({NIFTI1_HEADER_SIZE} bytes).")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if NIFTI1_HEADER_SIZE in sizes:
        header_class, image_class, size, magics = nib.Nifti1Header, nib.Nifti1Image, NIFTI1_HEADER_SIZE, (b"n+1",)
    elif NIFTI2_HEADER_SIZE in sizes:
        header_class, image_class, size, magics = nib.Nifti2Header, nib.Nifti2Image, NIFTI2_HEADER_SIZE, (b"n+2",)
    else:
        raise _unreadable(what, f"no NIfTI-1 or NIfTI-2 header (the first 4 bytes are {raw[:4]!r}).")
    if len(raw) < size:
        raise _unreadable(what, f"{len(raw)} bytes is too short for a NIfTI-2 header ({size} bytes).")
    try:
        header = header_class(binaryblock=raw[:size], check=False)
        magic = bytes(header["magic"]).rstrip(b"\x00")
        if magic not in magics:
            raise _unreadable(what, f"header magic is {magic!r}, expected a single-file NIfTI ({magics[0]!r}).")
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = header.get_data_dtype().itemsize
        offset = max(int(header["vox_offset"]), size + 4)
    except MedsynthError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(what, _describe(exc)) from exc
    _check_voxel_count(shape, what, max_voxels)
    if offset > MAX_VOX_OFFSET:
        raise TooLarge(f"{what} declares {offset} bytes of header extensions, more than the limit of {MAX_VOX_OFFSET}.")
    return image_class, offset + int(np.prod(shape, dtype=object)) * itemsize


def _gunzip_capped(raw: bytes, what: str, max_voxels: int) -> bytes:
    """Inflate gzip ``raw`` but stop with :class:`TooLarge` once the output exceeds the size the
    NIfTI header (the first bytes inflated) declares, plus :data:`GZIP_SLACK_BYTES`."""
    out = bytearray()
    limit: int | None = None
    for chunk in _inflate(raw, what):
        out += chunk
        if limit is None and len(out) >= NIFTI2_HEADER_SIZE + 4:
            _, declared = _peek_header(bytes(out[: NIFTI2_HEADER_SIZE + 4]), what, max_voxels)
            limit = declared + GZIP_SLACK_BYTES
        if limit is not None and len(out) > limit:
            raise TooLarge(
                f"{what} decompresses to more than {limit} bytes, beyond the {limit - GZIP_SLACK_BYTES} bytes its "
                "NIfTI header declares (a gzip bomb?)."
            )
    return bytes(out)


def _inflate(raw: bytes, what: str) -> Iterator[bytes]:
    """Decompressed chunks of (possibly multi-member) gzip ``raw``, at most 1 MiB each."""
    pending = raw
    while pending[:2] == GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not inflater.eof:
            try:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            except zlib.error as exc:
                raise _unreadable(what, f"corrupt gzip data ({exc}).") from exc
            pending = inflater.unconsumed_tail
            if chunk:
                yield chunk
            elif not pending:
                if not inflater.eof:
                    raise _unreadable(what, "the gzip stream is truncated.")
        pending = inflater.unused_data


# --- validation ----------------------------------------------------------------------------------


def validate_scan(image_bytes: bytes, label_bytes: bytes | None, *, max_voxels: int) -> CanonicalScan:
    """Check an uploaded image (and optional label map) and return it in canonical RAS orientation.

    A 4D (or 5D) file whose extra axes are all 1 is read as 3D, and a 3D file whose third axis is 1 as
    2D. A 2D image keeps its two in-plane axes, flipped and/or swapped into RAS order. Raises
    :class:`InvalidInput` (or :class:`TooLarge`) naming the first problem found.
    """
    img, raw_image = _read(image_bytes, "image", max_voxels)
    image = _squeeze(raw_image, "image")
    affine = _check_affine(np.asarray(img.affine, dtype=np.float64), image.ndim)
    image = _check_image_values(image)

    label = None
    if label_bytes is not None:
        lbl, raw_label = _read(label_bytes, "label map", max_voxels)
        label = _squeeze(raw_label, "label map")
        if label.shape != image.shape:
            raise InvalidInput(f"label map must have the image's shape {raw_image.shape}, got {raw_label.shape}.")
        _check_label_affine(affine, np.asarray(lbl.affine, dtype=np.float64), image.ndim)
        label = check_label_values(label)

    return canonicalise(image, affine, label)


def canonicalise(image: np.ndarray, affine: np.ndarray, label: np.ndarray | None = None) -> CanonicalScan:
    """Reorient a checked float32 image (2D or 3D; 4D for a time series, whose last axis stays last)
    and its optional checked label map into RAS order. Every reader of scans (NIfTI, DICOM) ends here."""
    spatial = min(image.ndim, 3)
    ornt = _canonical_ornt(affine, spatial)
    canonical_affine = _full_rank(affine @ inv_ornt_aff(ornt, _as3d(image).shape[:3]), spatial)
    image = _reorient(image, ornt)
    label = _reorient(label, ornt) if label is not None else None
    return CanonicalScan(
        image=image,
        label=label,
        affine=canonical_affine,
        spacing=_spacing(canonical_affine, spatial),
        shape=tuple(int(n) for n in image.shape),
        orientation="".join(nib.aff2axcodes(canonical_affine)),
        label_values=tuple(int(v) for v in np.unique(label)) if label is not None else (),
    )


def _squeeze(array: np.ndarray, what: str) -> np.ndarray:
    """Drop trailing size-1 axes beyond the second; the result must be 2D or 3D and non-empty."""
    shape = tuple(array.shape)
    squeezed = shape
    while len(squeezed) > 2 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if array.size == 0:
        raise InvalidInput(f"{what} must not be empty, got shape {shape}.")
    if len(squeezed) not in (2, 3):
        raise InvalidInput(f"{what} must be 2D or 3D, got shape {shape}.")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"{what} must hold real numbers, got data type {array.dtype}.")
    return array.reshape(squeezed)


def _check_affine(affine: np.ndarray, ndim: int) -> np.ndarray:
    if not np.all(np.isfinite(affine)):
        raise InvalidInput(f"image affine must be finite, got {_fmt(affine)}.")
    spacing = np.linalg.norm(affine[:3, :ndim], axis=0)
    if not np.all(spacing > 0):
        raise InvalidInput(f"image voxel spacing must be positive, got {tuple(float(s) for s in spacing)}.")
    if np.linalg.matrix_rank(affine[:3, :ndim], tol=1e-6 * float(spacing.max())) < ndim:
        raise InvalidInput(f"image affine must have independent axes, got {_fmt(affine)}.")
    return affine


def _check_label_affine(image_affine: np.ndarray, label_affine: np.ndarray, ndim: int) -> None:
    """Compare the columns that place the array's axes, and the origin."""
    columns = [*range(ndim), 3]
    if not np.allclose(label_affine[:3, columns], image_affine[:3, columns], atol=AFFINE_ATOL):
        raise InvalidInput(f"label map must have the image's affine {_fmt(image_affine)}, got {_fmt(label_affine)}.")


def _fmt(affine: np.ndarray) -> str:
    rows = np.round(np.asarray(affine, dtype=np.float64)[:3], 4) + 0.0  # + 0.0 turns -0.0 into 0.0
    return str(rows.tolist())


def _check_image_values(image: np.ndarray) -> np.ndarray:
    if image.dtype.kind == "f":
        _check_finite(image, "image", "")
    with np.errstate(over="ignore"):
        out = image.astype(np.float32)
    if image.dtype.kind == "f" and image.dtype.itemsize > 4:
        _check_finite(out, "image", " after conversion to float32 (values beyond ±3.4e38)")
    return out


def _check_finite(array: np.ndarray, what: str, context: str) -> None:
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    if nan or inf:
        found = " and ".join(f"{n} {name} voxel{'s' if n != 1 else ''}" for n, name in ((nan, "NaN"), (inf, "inf")) if n)
        raise InvalidInput(f"{what} must contain only finite values{context}, got {found}.")


def check_label_values(label: np.ndarray) -> np.ndarray:
    if label.dtype.kind == "f":
        _check_finite(label, "label map", "")
        rounded = np.rint(label)
        off = np.abs(label - rounded) > LABEL_INTEGER_ATOL
        if off.any():
            index = tuple(int(i) for i in np.argwhere(off)[0])
            count = int(np.count_nonzero(off))
            raise InvalidInput(
                f"label map must contain integer values, got {label[index]:g} at voxel {index} "
                f"({count} non-integer voxel{'s' if count != 1 else ''})."
            )
        label = rounded
    low, high = label.min(), label.max()
    if low < 0:
        raise InvalidInput(f"label map values must be non-negative, got minimum {low:g}.")
    if high > np.iinfo(np.int32).max:
        raise InvalidInput(f"label map values must be below 2**31, got maximum {high:g}.")
    dtype = np.uint8 if high < 256 else np.int16 if high <= np.iinfo(np.int16).max else np.int32
    return label.astype(dtype)


# --- orientation ---------------------------------------------------------------------------------


def _as3d(array: np.ndarray) -> np.ndarray:
    return array if array.ndim >= 3 else array[..., np.newaxis]


def _full_rank(affine: np.ndarray, ndim: int) -> np.ndarray:
    """``affine``, with the slice column of a 2D affine replaced by the unit in-plane normal if the
    three columns are not independent (2D files may carry a zero third column)."""
    if ndim != 2 or abs(np.linalg.det(affine[:3, :3])) > 1e-6 * np.prod(np.linalg.norm(affine[:3, :2], axis=0)):
        return affine
    out = affine.copy()
    out[:3, 2] = np.cross(affine[:3, 0], affine[:3, 1])
    out[:3, 2] /= np.linalg.norm(out[:3, 2])
    return out


def _canonical_ornt(affine: np.ndarray, ndim: int) -> np.ndarray:
    """Orientation transform (nibabel ``ornt``, 3 rows) taking the array to RAS order.

    3D: nibabel's closest canonical. 2D: only the two in-plane axes move (flips, and a swap when the
    second one points along an earlier world axis); the slice axis stays last.
    """
    ornt = io_orientation(_full_rank(affine, ndim))
    if ndim == 3:
        return ornt
    (w0, f0), (w1, f1) = ornt[0], ornt[1]
    first, second = (0, 1) if w0 < w1 else (1, 0)
    return np.array([[first, f0], [second, f1], [2, 1]], dtype=float)


def _reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    out = apply_orientation(_as3d(array), ornt)
    if array.ndim == 2:
        out = out[..., 0]
    return np.array(out, dtype=array.dtype, order="C", copy=True)


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :ndim], axis=0))


# --- writing -------------------------------------------------------------------------------------

#: Header fields where software and people put free text (names, ids, dates); extensions may hold whole
#: DICOM headers. Cleared in every stored original.
FREE_TEXT_FIELDS = ("descrip", "aux_file", "intent_name")


def scrub_free_text(data: bytes) -> bytes:
    """``.nii``/``.nii.gz`` bytes (already validated) with :data:`FREE_TEXT_FIELDS` emptied and header
    extensions dropped; voxels, affine, data type and scaling are unchanged. gzip stays gzip."""
    raw = bytes(data)
    compressed = raw[:2] == GZIP_MAGIC
    if compressed:
        raw = b"".join(_inflate(raw, "image"))
    image_class, _ = _peek_header(raw, "image", 2**62)
    size = NIFTI1_HEADER_SIZE if image_class is nib.Nifti1Image else NIFTI2_HEADER_SIZE
    header_class = nib.Nifti1Header if image_class is nib.Nifti1Image else nib.Nifti2Header
    header = header_class(binaryblock=raw[:size], check=False)
    offset = int(header["vox_offset"])
    for name in FREE_TEXT_FIELDS:
        header[name] = b""
    new_offset = size + 4  # header, then the 4-byte extension flag (all zero: no extensions)
    header["vox_offset"] = new_offset
    out = header.binaryblock + b"\x00\x00\x00\x00" + raw[max(offset, size + 4):]
    return gzip.compress(out, compresslevel=6, mtime=0) if compressed else out



def to_nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """``array`` as NIfTI-1 ``.nii.gz`` bytes with ``affine`` as both qform and sform (scanner
    coordinates, mm). The output is deterministic: the same inputs give the same bytes.

    For a 2D array whose affine has no usable third column, the in-plane normal is stored there.
    """
    array = np.asarray(array)
    affine = _full_rank(np.asarray(affine, dtype=np.float64), min(array.ndim, 3))
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
