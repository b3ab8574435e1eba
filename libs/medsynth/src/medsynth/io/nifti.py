"""Validation and canonicalisation of uploaded NIfTI scans.

The ingest service hands this module an upload: its bytes, or (as the service streams uploads to
disk) its file, which is then read from disk as it is needed — never held whole in memory, inflated
into memory or serialised into memory. Everything wrong with it is reported as
:class:`~medsynth.core.errors.InvalidInput` (or :class:`~medsynth.core.errors.TooLarge`) with a message
that names the problem; no parsing exception from nibabel, zlib or numpy escapes.

* :func:`load_nifti` reads ``.nii`` or ``.nii.gz`` bytes (NIfTI-1 or NIfTI-2), defending against
  gzip bombs and oversized volumes before any voxel data is decoded.
* :func:`validate_scan` checks an image (and an optional label map) and returns a
  :class:`CanonicalScan`: RAS-oriented arrays, the canonical affine, spacing and label values.
* :func:`canonicalise` turns checked arrays and an affine into that :class:`CanonicalScan`.
* :func:`scrub_free_text` clears the header's free-text fields and extensions of a stored original
  (:func:`scrub_free_text_file`: file to file, a chunk at a time).
* :func:`to_nifti_bytes` serialises an array and its affine as deterministic ``.nii.gz`` bytes
  (:func:`write_nifti`: into a file, a slab at a time).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    256, else int16 or int32. Both are arrays of ``shape`` (2D or 3D): C-contiguous ones the scan owns
    from :func:`canonicalise`, RAS-ordered views of the arrays read from :func:`validate_scan`.
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


def load_nifti(data: bytes | Path, *, what: str, max_voxels: int) -> nib.Nifti1Image:
    """Parse ``.nii`` or ``.nii.gz`` bytes, or such a file, (gzip is detected by its magic bytes) into an image.

    All voxel data is decoded once here, so truncated or damaged files fail here and not later.
    NIfTI-2 files come back as :class:`nibabel.Nifti2Image`. Raises :class:`TooLarge` when the header
    declares more than ``max_voxels`` voxels (checked before any voxel is decoded) or when gzip data
    inflates beyond what the header declares; :class:`InvalidInput` naming ``what`` for anything else
    unreadable.
    """
    img, _, _ = _read(data, what, max_voxels)
    return img


def _read(data: bytes | Path, what: str, max_voxels: int) -> tuple[nib.Nifti1Image, np.ndarray, nib.Nifti1Header]:
    """:func:`load_nifti`, also returning the decoded voxels (scaled by the header's slope/intercept)
    and the header as the file has it (nibabel repairs some fields of the image's own header as it loads)."""
    if isinstance(data, Path):
        return _read_file(data, what, max_voxels)
    raw = bytes(data)
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip_capped(raw, what, max_voxels)
    image_class, _ = _peek_header(raw, what, max_voxels)
    try:
        header_class = image_class.header_class
        as_written = header_class(binaryblock=raw[: header_class.sizeof_hdr], check=False)
        img = image_class.from_bytes(raw)
        _check_voxel_count(tuple(img.shape), what, max_voxels)
        return img, np.asanyarray(img.dataobj), as_written
    except MedsynthError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many unrelated types for bad files
        raise _unreadable(what, _describe(exc)) from exc


def _read_file(path: Path, what: str, max_voxels: int) -> tuple[nib.Nifti1Image, np.ndarray, nib.Nifti1Header]:
    """:func:`_read` of a file: the voxels are read from disk straight into the one array returned
    (a ``.nii.gz`` is first inflated, capped, into a temporary file beside it)."""
    with _plain_file(path, what, max_voxels) as plain, open(plain, "rb") as f:
        head = f.read(NIFTI2_HEADER_SIZE + 4)
        image_class, _ = _peek_header(head, what, max_voxels)
        try:
            header_class = image_class.header_class
            as_written = header_class(binaryblock=head[: header_class.sizeof_hdr], check=False)
            img = image_class.from_file_map({"image": nib.FileHolder(fileobj=f)}, mmap=False)  # no path in its messages
            _check_voxel_count(tuple(img.shape), what, max_voxels)
            return img, np.asanyarray(img.dataobj), as_written
        except MedsynthError:
            raise
        except Exception as exc:  # noqa: BLE001 - nibabel raises many unrelated types for bad files
            raise _unreadable(what, _describe(exc).replace(str(plain), "object")) from exc  # no server path in it


@contextmanager
def _plain_file(path: Path, what: str, max_voxels: int) -> Iterator[Path]:
    """``path`` itself when it is not gzip; else its content inflated (capped as in
    :func:`_gunzip_capped`) into a temporary file in its folder, removed afterwards."""
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    if not compressed:
        yield path
        return
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".nii", dir=path.parent)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            for chunk in _inflate_capped(_file_chunks(src), what, max_voxels):
                out.write(chunk)
        yield Path(name)
    finally:
        os.unlink(name)


def _file_chunks(f) -> Iterator[bytes]:
    while chunk := f.read(_INFLATE_CHUNK):
        yield chunk


def _slices(raw: bytes) -> Iterator[memoryview]:
    """``raw`` in :data:`_INFLATE_CHUNK` pieces, uncopied: zlib then never copies the unread rest of
    a large input (its ``unconsumed_tail``) once per output chunk."""
    view = memoryview(raw)
    for start in range(0, len(view), _INFLATE_CHUNK):
        yield view[start:start + _INFLATE_CHUNK]


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
    if 0 in shape:
        raise InvalidInput(f"{what} has a zero-length axis: its header's dim declares shape {shape}.")
    _check_voxel_count(shape, what, max_voxels)
    if offset > MAX_VOX_OFFSET:
        raise TooLarge(f"{what} declares {offset} bytes of header extensions, more than the limit of {MAX_VOX_OFFSET}.")
    return image_class, offset + int(np.prod(shape, dtype=object)) * itemsize


def _gunzip_capped(raw: bytes, what: str, max_voxels: int) -> bytes:
    """Inflate gzip ``raw`` in memory, capped as :func:`_inflate_capped`."""
    out = bytearray()
    for chunk in _inflate_capped(_slices(raw), what, max_voxels):
        out += chunk
    return bytes(out)


def _inflate_capped(compressed: Iterable[bytes], what: str, max_voxels: int) -> Iterator[bytes]:
    """:func:`_inflate`, stopped with :class:`TooLarge` once the output exceeds the size the NIfTI
    header (the first bytes inflated) declares, plus :data:`GZIP_SLACK_BYTES`."""
    head = bytearray()
    size = 0
    limit: int | None = None
    for chunk in _inflate(compressed, what):
        size += len(chunk)
        if limit is None:
            head += chunk[: NIFTI2_HEADER_SIZE + 4 - len(head)]
            if len(head) >= NIFTI2_HEADER_SIZE + 4:
                _, declared = _peek_header(bytes(head), what, max_voxels)
                limit = declared + GZIP_SLACK_BYTES
        if limit is not None and size > limit:
            raise TooLarge(
                f"{what} decompresses to more than {limit} bytes, beyond the {limit - GZIP_SLACK_BYTES} bytes its "
                "NIfTI header declares (a gzip bomb?)."
            )
        yield chunk


def _inflate(compressed: Iterable[bytes], what: str) -> Iterator[bytes]:
    """Decompressed chunks, at most 1 MiB each, of (possibly multi-member) gzip data arriving in
    ``compressed`` pieces; bytes after the last member that do not start another are ignored."""
    source = iter(compressed)
    pending: bytes = b""
    inflater = None
    while True:
        if inflater is None:  # at the start of a member, or after the last one
            while len(pending) < 2 and (more := next(source, None)) is not None:
                pending = bytes(pending) + bytes(more)
            if bytes(pending[:2]) != GZIP_MAGIC:
                return
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        exhausted = False
        if not pending:
            pending = next(source, b"")
            exhausted = not pending
        try:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
        except zlib.error as exc:
            raise _unreadable(what, f"corrupt gzip data ({exc}).") from exc
        pending = inflater.unconsumed_tail
        if chunk:
            yield chunk
        if inflater.eof:
            pending, inflater = inflater.unused_data, None
        elif exhausted and not chunk:
            raise _unreadable(what, "the gzip stream is truncated.")


# --- validation ----------------------------------------------------------------------------------


def validate_scan(image_data: bytes | Path, label_data: bytes | Path | None, *, max_voxels: int,
                  time_series: str = "refuse") -> CanonicalScan:
    """Check an uploaded image (and optional label map), as bytes or as files, and return it in
    canonical RAS orientation.

    A 4D (or 5D) file whose extra axes are all 1 is read as 3D, and a 3D file whose third axis is 1 as
    2D. A 2D image keeps its two in-plane axes, flipped and/or swapped into RAS order. A 4D image is a
    time series (NIfTI's fourth axis is time): ``time_series`` (a project's option) ``"first"`` keeps
    its first time point; otherwise it is refused, the message saying why (a fourth axis that holds
    channels, as in Decathlon multi-modal images, is not supported either). Raises
    :class:`InvalidInput` (or :class:`TooLarge`) naming the first problem found.

    Memory: one array per file (the voxels as read, converted in place of a copy where the type
    already fits); the checks run a slab at a time, and the returned arrays are RAS-ordered views of
    those (no reoriented copy): write them with :func:`write_nifti`, which reads them a slab at a time.
    """
    img, raw_image, header = _read(image_data, "image", max_voxels)
    image = _squeeze(raw_image, "image", time=True)
    if image.ndim == 4:
        image = _first_time_point(image, tuple(raw_image.shape), time_series)
    _check_pixdim(header, "image", image.ndim)
    affine = _check_affine(np.asarray(img.affine, dtype=np.float64), image.ndim)
    image = _check_image_values(image)

    label = None
    if label_data is not None:
        lbl, raw_label, label_header = _read(label_data, "label map", max_voxels)
        label = _squeeze(raw_label, "label map")
        _check_pixdim(label_header, "label map", label.ndim)
        if label.shape != image.shape:
            raise InvalidInput(f"label map must have the image's shape {raw_image.shape}, got {raw_label.shape}.")
        _check_label_affine(affine, np.asarray(lbl.affine, dtype=np.float64), image.ndim)
        label = check_label_values(label)

    return canonicalise(image, affine, label, copy=False)


def canonicalise(image: np.ndarray, affine: np.ndarray, label: np.ndarray | None = None, *, copy: bool = True) -> CanonicalScan:
    """Reorient a checked float32 image (2D or 3D; 4D for a time series, whose last axis stays last)
    and its optional checked label map into RAS order. Every reader of scans (NIfTI, DICOM) ends here.

    With ``copy`` (the default) the scan's arrays are C-contiguous copies it owns; without, they are
    views of ``image`` and ``label`` in RAS order (flipped and transposed strides, no voxel copied)."""
    spatial = min(image.ndim, 3)
    ornt = _canonical_ornt(affine, spatial)
    canonical_affine = _full_rank(affine @ inv_ornt_aff(ornt, _as3d(image).shape[:3]), spatial)
    label_values = _distinct_values(label) if label is not None else ()
    image = _reorient(image, ornt, copy)
    label = _reorient(label, ornt, copy) if label is not None else None
    return CanonicalScan(
        image=image,
        label=label,
        affine=canonical_affine,
        spacing=_spacing(canonical_affine, spatial),
        shape=tuple(int(n) for n in image.shape),
        orientation="".join(nib.aff2axcodes(canonical_affine)),
        label_values=label_values,
    )


#: Voxels one step of a slab-wise pass over a volume handles (a few MB of temporaries, not a volume's worth).
SLAB_VOXELS = 1 << 20


def _slabs(array: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Views of ``array`` along its first axis, about :data:`SLAB_VOXELS` voxels each, with their index."""
    if array.ndim == 0 or array.shape[0] == 0:
        return
    step = max(1, SLAB_VOXELS // max(1, array[0].size))
    for start in range(0, array.shape[0], step):
        index = slice(start, start + step)
        yield index, array[index]


def _distinct_values(label: np.ndarray) -> tuple[int, ...]:
    """The sorted distinct values of an integer ``label``, a slab at a time (``np.unique`` of the whole
    volume sorts a copy of it)."""
    found: set[int] = set()
    for _, slab in _slabs(label):
        found.update(int(v) for v in np.unique(slab))
    return tuple(sorted(found))


def _squeeze(array: np.ndarray, what: str, *, time: bool = False) -> np.ndarray:
    """Drop trailing size-1 axes beyond the second; the result must be 2D or 3D (or, with ``time``,
    4D: a time series, time last) and non-empty."""
    shape = tuple(array.shape)
    squeezed = shape
    while len(squeezed) > 2 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if array.size == 0:
        raise InvalidInput(f"{what} must not be empty, got shape {shape}.")
    if len(squeezed) not in ((2, 3, 4) if time else (2, 3)):
        raise InvalidInput(f"{what} must be 2D or 3D, got shape {shape}.")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"{what} must hold real numbers, got data type {array.dtype}.")
    return array.reshape(squeezed)


def _first_time_point(image: np.ndarray, shape: tuple[int, ...], time_series: str) -> np.ndarray:
    """The first time point of a 4D ``image`` when ``time_series`` is ``"first"``; else the refusal."""
    if time_series == "first":
        return _squeeze(image[..., 0], "image")
    why = ("which this project refuses (its option time_series can keep the 'first' time point)" if time_series != "split" else
           "which one NIfTI upload cannot split into scans (an upload makes one scan: send each time point as its own file, "
           "or keep the 'first' with the project's option time_series)")
    raise InvalidInput(f"image must be 2D or 3D, got shape {shape}: a 4D NIfTI is a time series ({shape[3]} time points: its "
                       f"fourth axis is time), {why}. Images whose fourth axis holds channels (Decathlon multi-modal images) "
                       "are not supported yet.")


def _check_pixdim(header: nib.Nifti1Header, what: str, ndim: int) -> None:
    """Without an sform (sform_code 0) the voxels are placed by pixdim: through the qform, or with
    qform_code 0 too as bare voxel sizes. nibabel silently repairs a zero or negative voxel size there
    (0 becomes 1 mm); refuse it instead, and a non-finite one, naming the header field."""
    if int(header["sform_code"]) != 0:
        return
    why = "sform_code is 0: the qform places the voxels" if int(header["qform_code"]) else \
        "sform_code and qform_code are 0: pixdim places the voxels"
    for axis in range(1, ndim + 1):
        size = float(header["pixdim"][axis])
        if not (np.isfinite(size) and size > 0):
            raise InvalidInput(f"{what} header pixdim[{axis}] must be a positive, finite voxel size ({why}), got {size}.")


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
    """``image`` as float32 (itself when it is float32 already), all of it finite."""
    if image.dtype.kind == "f":
        _check_finite(image, "image", "")
    with np.errstate(over="ignore"):
        out = image.astype(np.float32, copy=False)
    if image.dtype.kind == "f" and image.dtype.itemsize > 4:
        _check_finite(out, "image", " after conversion to float32 (values beyond ±3.4e38)")
    return out


def _check_finite(array: np.ndarray, what: str, context: str) -> None:
    nan = inf = 0
    for _, slab in _slabs(array):
        nan += int(np.count_nonzero(np.isnan(slab)))
        inf += int(np.count_nonzero(np.isinf(slab)))
    if nan or inf:
        found = " and ".join(f"{n} {name} voxel{'s' if n != 1 else ''}" for n, name in ((nan, "NaN"), (inf, "inf")) if n)
        raise InvalidInput(f"{what} must contain only finite values{context}, got {found}.")


def check_label_values(label: np.ndarray) -> np.ndarray:
    """``label`` as the smallest of uint8, int16, int32 holding its values (itself when it has that type
    already), refused unless they are non-negative integers (floats within :data:`LABEL_INTEGER_ATOL`)."""
    is_float = label.dtype.kind == "f"
    if is_float:
        _check_finite(label, "label map", "")
        _check_integer(label)
    low, high = label.min(), label.max()
    if is_float:
        low, high = np.rint(low), np.rint(high)
    if low < 0:
        raise InvalidInput(f"label map values must be non-negative, got minimum {low:g}.")
    if high > np.iinfo(np.int32).max:
        raise InvalidInput(f"label map values must be below 2**31, got maximum {high:g}.")
    dtype = np.uint8 if high < 256 else np.int16 if high <= np.iinfo(np.int16).max else np.int32
    if not is_float:
        return label.astype(dtype, copy=False)
    out = np.empty(label.shape, dtype)
    for index, slab in _slabs(label):
        out[index] = np.rint(slab)
    return out


def _check_integer(label: np.ndarray) -> None:
    """Refuse a float label map with a value farther than :data:`LABEL_INTEGER_ATOL` from an integer,
    naming the first such voxel and how many there are (checked a slab at a time)."""
    first: tuple[int, ...] | None = None
    count = 0
    for index, slab in _slabs(label):
        off = np.abs(slab - np.rint(slab)) > LABEL_INTEGER_ATOL
        n = int(np.count_nonzero(off))
        if n and first is None:
            within = np.argwhere(off)[0]
            first = (int(within[0]) + index.start, *(int(i) for i in within[1:]))
        count += n
    if first is not None:
        raise InvalidInput(
            f"label map must contain integer values, got {label[first]:g} at voxel {first} "
            f"({count} non-integer voxel{'s' if count != 1 else ''})."
        )


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


def _reorient(array: np.ndarray, ornt: np.ndarray, copy: bool = True) -> np.ndarray:
    out = apply_orientation(_as3d(array), ornt)  # a view: flips and transposes move strides only
    if array.ndim == 2:
        out = out[..., 0]
    return np.array(out, dtype=array.dtype, order="C", copy=True) if copy else out


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
    out = b"".join(_scrubbed(_inflate(_slices(raw), "image") if compressed else [raw]))
    return gzip.compress(out, compresslevel=6, mtime=0) if compressed else out


def scrub_free_text_file(src: Path, dst: Path) -> None:
    """:func:`scrub_free_text` from the file ``src`` into the file ``dst`` (the same bytes), read,
    inflated, rewritten and compressed a chunk at a time."""
    with open(src, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    with open(src, "rb") as f, open(dst, "wb") as out:
        sink = _GzipSink(out) if compressed else out
        for chunk in _scrubbed(_inflate(_file_chunks(f), "image") if compressed else _file_chunks(f)):
            sink.write(chunk)
        if compressed:
            sink.finish()


def _scrubbed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of a validated, uncompressed NIfTI file, given in pieces, with its header's free-text
    fields cleared and its extensions (at most :data:`MAX_VOX_OFFSET` bytes) dropped."""
    source = iter(chunks)
    head = b""
    while len(head) < NIFTI2_HEADER_SIZE + 4 and (chunk := next(source, None)) is not None:
        head += chunk
    image_class, _ = _peek_header(head, "image", 2**62)
    size = NIFTI1_HEADER_SIZE if image_class is nib.Nifti1Image else NIFTI2_HEADER_SIZE
    header = image_class.header_class(binaryblock=head[:size], check=False)
    start = max(int(header["vox_offset"]), size + 4)
    for name in FREE_TEXT_FIELDS:
        header[name] = b""
    header["vox_offset"] = size + 4  # header, then the 4-byte extension flag (all zero: no extensions)
    yield header.binaryblock + b"\x00\x00\x00\x00"
    while len(head) < start and (chunk := next(source, None)) is not None:  # the extensions dropped
        head += chunk
    yield head[start:]
    yield from source


class _GzipSink(io.RawIOBase):
    """A file object that gzips what is written to it into ``out`` as ``gzip.compress(data,
    compresslevel=6, mtime=0)`` would (zlib's gzip format, level 6), a piece at a time: a file
    written through it holds the bytes :func:`to_nifti_bytes` returns. ``tell``/``seek`` report and
    accept the position, as nibabel's writer asks."""

    def __init__(self, out) -> None:
        super().__init__()
        self._out = out
        self._packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._out.write(self._packer.compress(data))
        n = memoryview(data).nbytes
        self._position += n
        return n

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) not in ((self._position, os.SEEK_SET), (0, os.SEEK_CUR)):
            raise OSError(f"a gzip stream being written cannot seek to {offset} (whence {whence}) from {self._position}")
        return self._position

    def finish(self) -> None:
        """Write the end of the gzip stream."""
        self._out.write(self._packer.flush())


def to_nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """``array`` as NIfTI-1 ``.nii.gz`` bytes with ``affine`` as both qform and sform (scanner
    coordinates, mm). The output is deterministic: the same inputs give the same bytes.

    For a 2D array whose affine has no usable third column, the in-plane normal is stored there.
    """
    return gzip.compress(_canonical_image(array, affine).to_bytes(), compresslevel=6, mtime=0)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """:func:`to_nifti_bytes` into the file ``path`` (the same bytes), serialised and compressed a slab
    at a time: ``array`` (a view of any strides, e.g. from :func:`validate_scan`) is never copied whole."""
    img = _canonical_image(array, affine)
    with open(path, "wb") as out:
        sink = _GzipSink(out)
        img.to_file_map({"image": nib.FileHolder(fileobj=sink)})
        sink.finish()


def _canonical_image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    array = np.asanyarray(array)
    affine = _full_rank(np.asarray(affine, dtype=np.float64), min(array.ndim, 3))
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img
