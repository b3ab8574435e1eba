"""Write a synthetic cohort to the object store, and regenerate any of its samples bit for bit.

Layout under ``prefix`` (which ends with ``/``)::

    samples/00000/image.nii.gz     2D NIfTI-1, float32 in [0, 1], the view's geometry as affine (below)
    samples/00000/label.nii.gz     2D NIfTI-1, uint8 class ids, same affine
    samples/00000/image.dcm        with format "dicom": the image as a DICOM instance (synthetic identity)
    samples/00000/seg.dcm          and its mask as a DICOM-SEG referencing it (:mod:`medsynth.dicom.export`)
    ...
    contact_sheet.png              the first samples in a grid, masks as colour overlay + contours
    manifest.json                  written last: a cohort is complete iff its manifest exists

NIfTI arrays keep the generator's axes: array axis 0 (image rows) is voxel axis i, axis 1 is j.

Geometry: a generator draws slices shaped like its training view's, so a cohort's samples carry that
view's geometry (:class:`~medsynth.io.geometry.SliceGeometry`, passed as ``geometry``): one affine,
:func:`~medsynth.io.geometry.slice_affine`, places the sample's axes as the view's slices were cut from
the RAS volume with the view's median pixel spacing and slice thickness. The NIfTI image and label
carry it as qform and sform (``get_zooms()`` is the pixel spacing), the DICOM image and SEG as
PixelSpacing, ImageOrientationPatient (LPS) and SliceThickness. Scans of a view differ in spacing, so
the manifest's ``geometry`` section says that it is the view's median and gives the range. Cohorts of a
generator whose view records no geometry (views made before it) keep the identity affine (1 mm), and
the manifest says so.

All or nothing — the choice: samples are written in place and the manifest last; on any failure
(including KeyboardInterrupt) every object this call wrote is deleted again before the error
propagates. The store has no rename, so a staging prefix would mean writing every object twice and
still a non-atomic "move" phase. To keep concurrent writers apart, the call first claims the prefix
with ``put_if_absent(<prefix>.writing.json)`` and then checks that nothing else is there; the claim is
removed after the manifest. A process killed outright (SIGKILL, power loss) can leave objects
without a manifest next to its claim: :func:`discard_incomplete` removes such leftovers.

Reproducibility: the manifest records the seed, the batch layout, the latent scheme, the sampler
(generator config, weights fingerprint, the versions and device that computed the pixels) and, per
sample, the SHA-256 of the NIfTI files and of the raw pixel/mask arrays. :func:`regenerate` replays
the original batches (outputs can depend on the batch a sample was drawn in, see
:mod:`medsynth.sampling.generate`) and so reproduces the pixels exactly on the same device model (the
CPU, or one GPU model) and software versions; the NIfTI bytes are then identical too (same
nibabel/zlib; written with the manifest's geometry, :func:`cohort_geometry`). Not across devices: a
GPU's TF32 and cuDNN convolutions differ from the CPU's by about 1e-3, enough to move pixels and mask
boundaries (regenerating on another device or build warns, naming what changed).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from medsynth.core.errors import Conflict, InvalidInput, MedsynthError
from medsynth.dicom.export import CohortIdentity, sample_files
from medsynth.io.geometry import UNKNOWN_THICKNESS_MM, SliceGeometry, slice_affine
from medsynth.io.nifti import to_nifti_bytes
from medsynth.sampling.backends import Sampler
from medsynth.sampling.gate import ReleaseGate
from medsynth.sampling.generate import MAX_BATCH, MAX_INDEX, check_indices, check_seed, latent_seed, runtime_info
from medsynth.store.base import ObjectStore, check_prefix

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "medsynth/cohort/v2"
READABLE_FORMATS = ("medsynth/cohort/v1", MANIFEST_FORMAT)  # v1: before generator families
MANIFEST_NAME = "manifest.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
CLAIM_NAME = ".writing.json"
SAMPLE_DIR = "samples/{index:05d}/"
FORMATS = ("nifti", "png")  # the default; "dicom" on request
ALL_FORMATS = ("nifti", "png", "dicom")
SHEET_MAX_TILES = 64
SHEET_TILE_PX = 64
SHEET_GAP_PX = 2
SHEET_OVERLAY_ALPHA = 0.3
# Overlay colours of mask classes 1..15 (class 0, background, is not drawn).
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    ],
    dtype=np.float32,
)  # fmt: skip

Progress = Callable[[int, int], None]


# --- writing ---------------------------------------------------------------------------------------


def write_cohort(
    store: ObjectStore,
    prefix: str,
    sampler: Sampler,
    *,
    count: int,
    seed: int,
    batch_size: int,
    formats: Sequence[str] = FORMATS,
    provenance: Mapping[str, Any],
    progress: Progress | None = None,
    sheet_tiles: int = SHEET_MAX_TILES,
    gate: ReleaseGate | None = None,
    audit_key: str | None = None,
    dicom: CohortIdentity | None = None,
    geometry: SliceGeometry | None = None,
) -> str:
    """Draw samples ``0..count-1`` of ``seed`` in batches of ``batch_size`` and write them under
    ``prefix``; return the manifest key.

    With a ``gate`` (:mod:`medsynth.sampling.gate`; the cohort job always passes one) each batch is
    audited before anything of it is written, and the gate's policy decides which draws are
    released: under ``filter`` flagged draws are skipped and later sample indices drawn instead, so
    the released samples' indices need not be contiguous. The manifest's ``release`` section
    records the audit; ``audit_key`` (outside ``prefix``: it shows training images) receives the
    closest-pairs figure.

    ``formats``: ``"nifti"`` writes the per-sample image/label files, ``"png"`` the contact sheet of
    the first ``sheet_tiles`` samples, ``"dicom"`` each sample as a DICOM image and DICOM-SEG with the
    synthetic identity ``dicom`` describes. ``geometry`` (the generator's view's; None for a view made
    before views recorded it) places the samples in millimetres (see the module docstring); the
    sampler's images must then be of its ``size``. ``provenance`` (generator id, checkpoint key/sha, dataset
    version, ...) is copied into the manifest as given; it must be JSON-serialisable. ``progress``
    is called with ``(done, count)`` after every batch. Raises :class:`Conflict` if ``prefix`` holds
    anything; on failure nothing is left under ``prefix`` (see the module docstring).
    """
    _check_prefix(prefix)
    fmts = _check_formats(formats)
    if "dicom" in fmts and dicom is None:
        raise InvalidInput("the dicom format needs the cohort's DICOM identity (CohortIdentity).")
    seed = check_seed(seed)
    count = _check_positive(count, "count", MAX_INDEX + 1)
    batch_size = _check_positive(batch_size, "batch_size", MAX_BATCH)
    sheet_tiles = _check_positive(sheet_tiles, "sheet_tiles")
    provenance = _check_provenance(provenance)
    description = sampler.describe()  # fails before anything is written if the backend is down
    layout: list[tuple[int, int]] = []
    plan = iter(batch_layout(count, batch_size)) if gate is None else _gated(gate, count, batch_size)

    writes = _Writes(store, prefix)
    writes.claim()
    try:
        samples, tiles = _write_samples(writes, sampler, seed, plan, layout, count, fmts, sheet_tiles, progress, gate, dicom, geometry)
        sheet = _write_sheet(writes, *tiles) if "png" in fmts else None
        release = _release(writes, gate, count, audit_key)
        manifest = _manifest(
            seed=seed, count=count, batch_size=batch_size, layout=layout, formats=fmts,
            provenance=provenance, sampler=description, samples=samples, sheet=sheet,
            image_size=int(tiles[0].shape[-1]), release=release, geometry=geometry,
        )  # fmt: skip
        key = writes.put(MANIFEST_NAME, _dump(manifest), "application/json")
    except BaseException as exc:
        log.warning("cohort %r failed (%s: %s); removing the %d objects it wrote", prefix, type(exc).__name__, exc, len(writes.keys))
        writes.rollback()
        raise
    writes.release()
    log.info("wrote cohort %r: %d samples of seed %d in %d batches", prefix, count, seed, len(layout))
    return key


def batch_layout(count: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` half-open index ranges covering ``0..count-1`` in order."""
    return [(a, min(a + batch_size, count)) for a in range(0, count, batch_size)]


def _gated(gate: ReleaseGate, count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """The gate's draws: asked one batch at a time, after the previous one was audited."""
    while (batch := gate.next_batch(count, batch_size)) is not None:
        yield batch


def _write_samples(
    writes: _Writes,
    sampler: Sampler,
    seed: int,
    plan: Iterator[tuple[int, int]],
    layout: list[tuple[int, int]],
    count: int,
    formats: list[str],
    sheet_tiles: int,
    progress: Progress | None,
    gate: ReleaseGate | None,
    dicom: CohortIdentity | None = None,
    geometry: SliceGeometry | None = None,
) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """Draw the planned batches (appending each to ``layout``) and write the released samples."""
    samples: list[dict[str, Any]] = []
    tile_images: list[np.ndarray] = []
    tile_masks: list[np.ndarray] = []
    for batch, (start, stop) in enumerate(plan):
        layout.append((start, stop))
        images, masks = sampler.draw(seed, range(start, stop))
        _check_batch(images, masks, stop - start, tile_images[0].shape if tile_images else None)
        if geometry is not None and images.shape[-1] != geometry.size:
            raise InvalidInput(f"the sampler draws {images.shape[-1]}-pixel images, but the geometry given is that of "
                               f"{geometry.size}-pixel view slices: the generator was not trained on that view.")
        released = gate.check(start, batch, images, count, masks=masks) if gate is not None else [True] * (stop - start)
        kept = [k for k in range(stop - start) if released[k]]
        for k in kept:
            index = start + k
            entry = {"index": index, "batch": batch, "latent_seed": latent_seed(seed, index), **sample_digests(images[k], masks[k])}
            if gate is not None:
                entry["memorization"] = gate.sample_entry(index)
            if "nifti" in formats:
                entry.update(_write_nifti_pair(writes, index, images[k], masks[k], geometry))
            if "dicom" in formats:
                entry["dicom"] = _write_dicom_pair(writes, index, images[k], masks[k], dicom, geometry)
            samples.append(entry)
        take = kept[: max(0, sheet_tiles - len(tile_images))]
        tile_images.extend(images[take].copy())
        tile_masks.extend(masks[take].copy())
        if progress is not None:
            progress(len(samples), count)
    return samples, (np.stack(tile_images), np.stack(tile_masks))


def _release(writes: _Writes, gate: ReleaseGate | None, count: int, audit_key: str | None) -> dict[str, Any] | None:
    """The manifest's ``release`` section, and the closest-pairs figure at ``audit_key``."""
    if gate is None:
        return None
    release = gate.summary(count)
    if audit_key is not None:
        release["closest_pairs"] = {"key": writes.put_key(audit_key, gate.closest_pairs_png(), "image/png"),
                                    "layout": "rows of (synthetic, nearest training image flipped as it matched), two pairs per row"}  # fmt: skip
    return release


def sample_nifti_bytes(image: np.ndarray, mask: np.ndarray, geometry: SliceGeometry | None = None) -> tuple[bytes, bytes]:
    """One sample as the cohort stores it: ``(image.nii.gz, label.nii.gz)`` bytes (deterministic)
    from its image ``(1, S, S)`` and mask ``(S, S)``, both with the affine of ``geometry`` (the
    cohort's: :func:`cohort_geometry` of its manifest)."""
    affine = slice_affine(geometry)
    image_bytes = to_nifti_bytes(np.asarray(image[0], dtype=np.float32), affine)
    label_bytes = to_nifti_bytes(np.asarray(mask, dtype=np.uint8), affine)
    return image_bytes, label_bytes


def _write_nifti_pair(writes: _Writes, index: int, image: np.ndarray, mask: np.ndarray,
                      geometry: SliceGeometry | None) -> dict[str, Any]:
    folder = SAMPLE_DIR.format(index=index)
    image_bytes, label_bytes = sample_nifti_bytes(image, mask, geometry)
    return {
        "image": {"key": writes.put(folder + "image.nii.gz", image_bytes), "sha256": _sha(image_bytes)},
        "label": {"key": writes.put(folder + "label.nii.gz", label_bytes), "sha256": _sha(label_bytes)},
    }


def _write_dicom_pair(writes: _Writes, index: int, image: np.ndarray, mask: np.ndarray, who: CohortIdentity,
                      geometry: SliceGeometry | None) -> dict[str, Any]:
    folder = SAMPLE_DIR.format(index=index)
    image_bytes, seg_bytes = sample_files(image, mask, index, who, geometry)
    return {
        "image": {"key": writes.put(folder + "image.dcm", image_bytes, "application/dicom"), "sha256": _sha(image_bytes)},
        "seg": {"key": writes.put(folder + "seg.dcm", seg_bytes, "application/dicom"), "sha256": _sha(seg_bytes)},
    }


def _write_sheet(writes: _Writes, images: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    png = contact_sheet(images, masks)
    key = writes.put(CONTACT_SHEET_NAME, png, "image/png")
    return {"key": key, "sha256": _sha(png), "tiles": int(len(images)), **sheet_layout(len(images), images.shape[-1])}


def sample_digests(image: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    """SHA-256 of one sample's raw arrays (image float32, mask uint8, C order, little-endian):
    independent of file formats and compression, so pixels can be compared anywhere."""
    img = np.ascontiguousarray(image, dtype="<f4")
    msk = np.ascontiguousarray(mask, dtype=np.uint8)
    return {"pixels_sha256": _sha(img.tobytes()), "mask_sha256": _sha(msk.tobytes())}


# --- the manifest ----------------------------------------------------------------------------------


def _manifest(
    *,
    seed: int,
    count: int,
    batch_size: int,
    layout: list[tuple[int, int]],
    formats: list[str],
    provenance: dict[str, Any],
    sampler: dict[str, Any],
    samples: list[dict[str, Any]],
    sheet: dict[str, Any] | None,
    image_size: int,
    release: dict[str, Any] | None,
    geometry: SliceGeometry | None,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "seed": seed,
        "count": count,
        "draws": layout[-1][1],
        "batch_size": batch_size,
        "batches": [[a, b] for a, b in layout],
        "release": release,
        "family": (sampler.get("generator") or {}).get("family"),
        "mode": sampler.get("mode"),
        "masks": _mask_provenance((sampler.get("mode") or {}).get("mask_source")),
        "latent": {
            "scheme": sampler.get("latent_scheme"),
            "rule": "sample i draws one torch.randn(shape) per entry of noise_shapes, in order, from "
            "torch.Generator(cpu).manual_seed(latent_seed), latent_seed = first 8 bytes (big-endian) of "
            "sha256('<scheme>:<seed>:<i>') with the top bit cleared",
            "noise_shapes": sampler.get("noise_shapes"),
        },
        "image_size": image_size,
        "geometry": geometry_section(geometry),
        "encoding": {
            "image": "NIfTI-1 .nii.gz, float32 in [0, 1], shape (S, S), affine geometry.affine (qform and sform)",
            "label": "NIfTI-1 .nii.gz, uint8 class ids (0 = background), same shape and affine",
            "pixels_sha256": "sha256 of the float32 little-endian C-order image array (1, S, S)",
            "mask_sha256": "sha256 of the uint8 C-order mask array (S, S)",
        },
        "formats": formats,
        "provenance": provenance,
        "sampler": sampler,
        "software": _software(),
        "samples": samples,
        "contact_sheet": sheet,
    }


def geometry_section(geometry: SliceGeometry | None) -> dict[str, Any]:
    """The manifest's ``geometry``: the affine every sample file carries, the view geometry it came
    from (``view``, None for a view made before views recorded one) and what that means."""
    affine = slice_affine(geometry).tolist()
    if geometry is None:
        return {"view": None, "affine": affine, "pixel_spacing_mm": [1.0, 1.0], "slice_thickness_mm": None,
                "note": "the generator's view records no slice geometry (made before views recorded it, or its training scans' slices "
                        "do not share one orientation): identity affine, 1 mm pixels, not the training scans' spacing"}
    spacing = geometry.pixel_spacing
    thickness = "" if geometry.slice_thickness is not None else (
        f"; the view's scans are 2D and have no slice thickness: the affine's normal is {UNKNOWN_THICKNESS_MM:g} mm")
    return {"view": geometry.model_dump(mode="json"), "affine": affine, "pixel_spacing_mm": list(spacing.median),
            "slice_thickness_mm": geometry.slice_thickness,
            "note": f"the median over the {geometry.scans} training scans of the generator's view: their view slices' pixel "
                    f"spacing ranges from {list(spacing.min)} to {list(spacing.max)} mm along array axes 0 and 1, so a sample's "
                    f"millimetres are the view's typical ones, not one scan's. Array axis 0 points {geometry.in_plane[0]}, axis 1 "
                    f"{geometry.in_plane[1]}, the slice normal {geometry.normal} (RAS; DICOM gives the same in LPS){thickness}"}


def cohort_geometry(manifest: Mapping[str, Any]) -> SliceGeometry | None:
    """The geometry a cohort's sample files were written with (None: the identity; manifests written
    before cohorts carried geometry have none)."""
    view = (manifest.get("geometry") or {}).get("view")
    return SliceGeometry.model_validate(view) if view is not None else None


def _mask_provenance(source: str | None) -> dict[str, Any]:
    if source == "real-deformed":
        return {"source": source, "derived_from_training_patients": True,
                "note": "each mask is a training patient's mask under a random affine + elastic deformation"}
    return {"source": source, "derived_from_training_patients": False,
            "note": "masks drawn by the trained generator from noise; no real mask is used at sampling time"}


def read_manifest(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """The manifest of the cohort at ``prefix``. Raises :class:`~medsynth.core.errors.NotFound` if
    there is none (no cohort, or an incomplete one), :class:`InvalidInput` if it is not a cohort's."""
    manifest = store.get_json(_check_prefix(prefix) + MANIFEST_NAME)
    _check_manifest(manifest)
    return manifest


def _software() -> dict[str, str]:
    import nibabel
    import PIL

    return {**runtime_info(), "nibabel": nibabel.__version__, "pillow": PIL.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION}


# --- regeneration ----------------------------------------------------------------------------------


def regenerate(
    manifest: Mapping[str, Any],
    sampler: Sampler,
    indices: Iterable[int],
    *,
    verify: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Reproduce samples ``indices`` of a written cohort: ``(images, masks)`` in the order asked.

    Each original batch holding a requested index is drawn again whole (with the same sampler
    weights, the outputs then equal the originals bit for bit on the same device model and software).
    Raises :class:`InvalidInput` if ``sampler`` has another generator config or weights than the
    manifest records, or an index is outside the cohort; with ``verify``, :class:`MedsynthError` if
    a regenerated sample's digests differ from the manifest's.
    """
    _check_manifest(manifest)
    _check_same_generator(manifest["sampler"], sampler.describe())
    wanted = _check_cohort_indices(indices, [s["index"] for s in manifest["samples"]])
    batches = [tuple(b) for b in manifest["batches"]]
    drawn: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in sorted({_batch_of(i, batches) for i in wanted}):
        start, stop = batches[b]
        images, masks = sampler.draw(manifest["seed"], range(start, stop))
        _check_batch(images, masks, stop - start, None)
        for k, index in enumerate(range(start, stop)):
            drawn[index] = (images[k], masks[k])
    images = np.stack([drawn[i][0] for i in wanted])
    masks = np.stack([drawn[i][1] for i in wanted])
    if verify:
        _verify(manifest, wanted, images, masks)
    return images, masks


def _check_same_generator(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    for field in ("generator", "mode", "weights_fingerprint", "latent_scheme"):
        if recorded.get(field) is not None and recorded.get(field) != current.get(field):
            raise InvalidInput(
                f"sampler cannot regenerate this cohort: its {field} is {current.get(field)!r}, "
                f"the manifest records {recorded.get(field)!r}."
            )
    was, now = recorded.get("software") or {}, current.get("software") or {}
    for field in ("torch", "device", "device_name", "cuda"):  # bit for bit only on the same device model and build
        if was.get(field) != now.get(field):
            log.warning(
                "regenerating with %s %r, the cohort was drawn with %r: pixels may differ in the last bits",
                field, now.get(field), was.get(field),
            )  # fmt: skip


def _batch_of(index: int, batches: list[tuple[int, int]]) -> int:
    lo, hi = 0, len(batches) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        start, stop = batches[mid]
        if index < start:
            hi = mid - 1
        elif index >= stop:
            lo = mid + 1
        else:
            return mid
    raise InvalidInput(f"sample index {index} is in no batch of the manifest's layout.")


def _verify(manifest: Mapping[str, Any], wanted: list[int], images: np.ndarray, masks: np.ndarray) -> None:
    by_index = {s["index"]: s for s in manifest["samples"]}
    for k, index in enumerate(wanted):
        got = sample_digests(images[k], masks[k])
        want = {name: by_index[index][name] for name in got}
        if got != want:
            raise MedsynthError(f"regenerated sample {index} differs from the manifest: {got} != {want}.")


# --- the contact sheet -----------------------------------------------------------------------------


def sheet_layout(tiles: int, image_size: int) -> dict[str, int]:
    """Geometry of a contact sheet of ``tiles`` samples of ``image_size`` pixels: a near-square grid
    of tiles upscaled (nearest) to at least :data:`SHEET_TILE_PX`, :data:`SHEET_GAP_PX` apart."""
    columns = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / columns)
    scale = max(1, SHEET_TILE_PX // image_size)
    tile = image_size * scale
    return {
        "columns": columns,
        "rows": rows,
        "scale": scale,
        "width": columns * tile + (columns + 1) * SHEET_GAP_PX,
        "height": rows * tile + (rows + 1) * SHEET_GAP_PX,
    }


def contact_sheet(images: np.ndarray, masks: np.ndarray) -> bytes:
    """PNG bytes (RGB): each image in grey with its mask's classes as translucent colour and solid
    outlines. ``images`` ``(N, 1, S, S)`` in [0, 1], ``masks`` ``(N, S, S)``."""
    from PIL import Image

    n, size = len(images), images.shape[-1]
    geo = sheet_layout(n, size)
    tile = size * geo["scale"]
    sheet = np.full((geo["height"], geo["width"], 3), 32, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, geo["columns"])
        y = SHEET_GAP_PX + r * (tile + SHEET_GAP_PX)
        x = SHEET_GAP_PX + c * (tile + SHEET_GAP_PX)
        sheet[y : y + tile, x : x + tile] = _render_tile(images[k, 0], masks[k], geo["scale"])
    buf = io.BytesIO()
    Image.fromarray(sheet, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _render_tile(image: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
    image = np.repeat(np.repeat(np.clip(image, 0.0, 1.0), scale, 0), scale, 1)
    mask = np.repeat(np.repeat(mask.astype(np.int64), scale, 0), scale, 1)
    rgb = np.repeat(image[..., None] * 255.0, 3, axis=2)
    colour = PALETTE[(np.maximum(mask, 1) - 1) % len(PALETTE)]
    inside = (mask > 0)[..., None]
    rgb = np.where(inside, (1 - SHEET_OVERLAY_ALPHA) * rgb + SHEET_OVERLAY_ALPHA * colour, rgb)
    edge = _edges(mask) & (mask > 0)
    rgb[edge] = colour[edge]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another class (the tile border counts as background)."""
    padded = np.pad(mask, 1, constant_values=0)
    centre = padded[1:-1, 1:-1]
    return (
        (padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre) | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre)
    )


# --- leftovers -------------------------------------------------------------------------------------


def discard_incomplete(store: ObjectStore, prefix: str) -> list[str]:
    """Delete everything under ``prefix`` if it holds no manifest (what a killed writer leaves);
    return the deleted keys. Raises :class:`Conflict` if a manifest is there (a complete cohort).

    Do not call it while a writer may still be running: its claim is deleted too.
    """
    _check_prefix(prefix)
    keys = list(store.list(prefix))
    if prefix + MANIFEST_NAME in keys:
        raise Conflict(f"cohort {prefix!r} is complete (it has a manifest); refusing to discard it.")
    for key in sorted(keys, reverse=True):
        store.delete(key)
    if keys:
        log.warning("discarded %d objects of an incomplete cohort at %r", len(keys), prefix)
    return keys


class _Writes:
    """The objects one :func:`write_cohort` call creates, so that a failure can remove them all."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.keys: list[str] = []

    def claim(self) -> None:
        """Claim ``prefix`` atomically, then make sure nothing else is there."""
        claim_key = self.prefix + CLAIM_NAME
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": datetime.now(timezone.utc).isoformat()}
        if not self.store.put_if_absent(claim_key, _dump(record), content_type="application/json"):
            raise Conflict(f"cohort prefix {self.prefix!r} is being written by another process (claim {claim_key!r} exists).")
        others = [k for k in self.store.list(self.prefix) if k != claim_key]
        if others:
            self.store.delete(claim_key)
            raise Conflict(
                f"cohort prefix {self.prefix!r} already holds {len(others)} objects (first {others[0]!r}); "
                "cohorts are write-once: pick a new prefix (or discard_incomplete() a crashed write)."
            )

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return self.put_key(self.prefix + name, data, content_type)

    def put_key(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write ``key`` (under the prefix, or an artifact of the cohort kept elsewhere)."""
        self.keys.append(key)  # recorded first: a put that fails after landing is still rolled back
        self.store.put_bytes(key, data, content_type=content_type)
        return key

    def release(self) -> None:
        """Drop the claim of a finished cohort (best effort: a leftover claim next to a manifest is harmless)."""
        try:
            self.store.delete(self.prefix + CLAIM_NAME)
        except Exception:  # noqa: BLE001
            log.exception("cohort %r is complete but its claim could not be removed", self.prefix)

    def rollback(self) -> None:
        for key in [*reversed(self.keys), self.prefix + CLAIM_NAME]:
            try:
                self.store.delete(key)
            except Exception:  # noqa: BLE001 - keep removing the rest; the original error matters more
                log.exception("could not remove %r while rolling back cohort %r", key, self.prefix)


# --- validation and small helpers -------------------------------------------------------------------


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix.endswith("/") or prefix == "/":
        raise InvalidInput(f"cohort prefix must be a non-empty store prefix ending with '/', got {prefix!r}.")
    return check_prefix(prefix)


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = (formats,)
    chosen = list(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in ALL_FORMATS]
    if unknown or not chosen:
        raise InvalidInput(f"formats must be a non-empty subset of {ALL_FORMATS}, got {tuple(formats)!r}.")
    return chosen


def _check_positive(value: object, what: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidInput(f"{what} must be a positive integer{bound}, got {value!r}.")
    return value


def _check_provenance(provenance: object) -> dict[str, Any]:
    if not isinstance(provenance, Mapping):
        raise InvalidInput(f"provenance must be a mapping, got {type(provenance).__name__}.")
    try:
        return json.loads(json.dumps(dict(provenance), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"provenance must be JSON-serialisable: {exc}") from exc


def _check_batch(images: np.ndarray, masks: np.ndarray, n: int, tile_shape: tuple[int, ...] | None) -> None:
    shape_ok = images.ndim == 4 and images.shape[:2] == (n, 1) and masks.shape == (n, *images.shape[2:])
    if not shape_ok or images.dtype != np.float32 or masks.dtype != np.uint8:
        raise MedsynthError(
            f"sampler returned images {images.dtype}{images.shape} and masks {masks.dtype}{masks.shape} "
            f"for {n} samples; expected float32 ({n}, 1, S, S) and uint8 ({n}, S, S)."
        )
    if tile_shape is not None and images.shape[1:] != tile_shape:
        raise MedsynthError(f"sampler changed image shape mid-cohort: {images.shape[1:]} after {tile_shape}.")


def _check_manifest(manifest: object) -> None:
    if not isinstance(manifest, Mapping) or manifest.get("format") not in READABLE_FORMATS:
        found = manifest.get("format") if isinstance(manifest, Mapping) else type(manifest).__name__
        raise InvalidInput(f"not a {MANIFEST_FORMAT!r} cohort manifest (format {found!r}).")


def _check_cohort_indices(indices: Iterable[int], released: list[int]) -> list[int]:
    wanted = check_indices(indices)
    outside = sorted(set(wanted) - set(released))
    if outside:
        raise InvalidInput(
            f"samples {outside[:5]} are not in the cohort (never drawn, or withheld by the memorization gate); "
            f"it holds {len(released)} samples."
        )
    return wanted


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()
