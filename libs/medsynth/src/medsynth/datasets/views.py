"""Training views of a dataset version: normalised 2D slices or 3D patches at a fixed size, written
as shards per split.

Layout: ``datasets/<name>/views/<view_id>/view.json`` (:class:`ViewSummary`: spec, counts, patients
and shards per split) and
``.../<split>/shard-<NNNNN>.npz`` with ``images`` (N, 1, *size) float32 in [0, 1], ``masks`` (N, *size)
uint8, and per-item ``patients``, ``scans``, ``index`` (slice or patch number) and ``labeled`` (False for
an item of a scan without a label map, whose mask is zeros for want of another value; shards written
before it have no ``labeled``: all their items were treated as labeled). ``view_id`` is a
hash of the source manifest version and the spec as stored, so a redelivered job rewrites the same keys.

Scans without a label map are *unlabeled*, never background, and so are the parts of a scan its label
map does not cover (a DICOM-SEG drawn on some slices: the scan's coverage, ``load_scan`` giving a masked
array, masked where unlabeled); an item (slice or patch) is labeled only where the map covers all of
it. ``unlabeled="include"`` keeps every unlabeled item, flagged, and the summary lists the scans per
split (:attr:`ViewSummary.unlabeled_scans`, :attr:`ViewSummary.partially_labeled_scans`), so that a
job that needs masks can refuse the view (:meth:`ViewSummary.unlabeled_problem`) rather than learn
zeros as "no foreground"; ``unlabeled="exclude"`` leaves them out and lists them
(:attr:`ViewSummary.excluded_scans`, :attr:`ViewSummary.excluded_items`).

Which items a split keeps: every slice (patch) with foreground, and those without where
``keep_empty`` says so, or, for the val and test splits, where ``keep_empty_eval`` does. With
``keep_empty_eval`` the held-out patients are whole: segmenters are selected and tested on every slice
of them, so a false positive on a slice without foreground counts against their Dice and the slices of
a scan stack back into its volume (3D Dice and HD95, :mod:`medsynth.segmentation.evaluate`).

Geometry (:attr:`ViewSummary.geometry`, :mod:`medsynth.io.geometry`): where an item's pixels sit in
millimetres, from the manifest's shape and spacing of the canonical (RAS) scans, no file read. A 2D
slice of a scan is cut along ``axis`` (its array axes are the volume's other two, in order), padded to
a square of side ``max(h, w)`` and resized to ``size``, so its pixel spacing is the scan's spacing
along each in-plane axis × ``max(h, w) / size`` and its thickness the spacing along ``axis``: both
differ between scans. A :class:`~medsynth.io.geometry.SliceGeometry` records the median over the
training split's scans (the ones a generator learns from) with the smallest and largest pixel spacing,
the median thickness, the slicing axis and the world directions of the slice's axes and normal. A
:class:`~medsynth.io.geometry.PatchGeometry` records the median voxel spacing (patches are not
resampled). Cohorts of a generator write their samples with it. None for views made before it, and for
a view whose training scans' slices do not share one orientation (2D scans of different planes, or
of another plane than the 3D scans' slices).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsynth.core.errors import InvalidInput, describe_invalid
from medsynth.core.names import check_name
from medsynth.datasets.manifest import DatasetManifest, ScanEntry, dataset_prefix
from medsynth.datasets.split import SPLITS, split_patients
from medsynth.io.geometry import PatchGeometry, SliceGeometry, SpacingRange, ViewGeometry, mm
from medsynth.store import ObjectStore

SHARD_ITEMS = 2048
EVAL_SPLITS = ("val", "test")  # the splits keep_empty_eval keeps whole
T = TypeVar("T")


class PerSplit(BaseModel, Generic[T]):
    """One value per split; ``summary.counts["train"]`` reads like the JSON it is stored as."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: T
    val: T
    test: T

    def __getitem__(self, split: str) -> T:
        if split not in SPLITS:
            raise KeyError(f"no split {split!r}; splits are {', '.join(SPLITS)}")
        return getattr(self, split)


class ViewSpec(BaseModel):
    """How the view was cut (the prepare-dataset request, resolved); its dump hashed with the manifest
    version is the view id.

    Fields added after the first format default to what views did before them and are left out of
    the dump at that default, so a stored view reads back (and dumps) as it was written and a view cut
    the old way keeps its id.

    Attributes:
        keep_empty: keep slices (patches) without foreground in every split.
        keep_empty_eval: keep them in the val and test splits whatever ``keep_empty`` says (training
            keeps ``keep_empty``'s choice). False in views made before it existed (they dropped empty
            held-out slices too); the prepare-dataset request defaults it to True.
        unlabeled: ``include`` keeps scans without a label map (flagged unlabeled), ``exclude`` leaves
            them out. Views made before it included them, unflagged, with all-zero masks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["slices2d", "patches3d"]
    size: int
    axis: int
    val_fraction: float
    test_fraction: float
    seed: int
    keep_empty: bool
    keep_empty_eval: bool = Field(False, exclude_if=lambda v: v is False)
    unlabeled: Literal["include", "exclude"] = Field("include", exclude_if=lambda v: v == "include")

    def keeps_empty(self, split: str) -> bool:
        """Whether ``split`` holds every slice (patch) of its patients' labelled scans."""
        return self.keep_empty or (self.keep_empty_eval and split in EVAL_SPLITS)


class ViewSummary(BaseModel):
    """A view's ``view.json``. Read with :func:`load_view`; every stored view is one of these (the
    format has gained ``spec.keep_empty_eval``, absent meaning False, and ``spec.unlabeled``,
    ``labeled``, ``unlabeled_scans`` and ``excluded_scans``: absent (None) in views made before them,
    which did not record whether a scan had a label map; then ``geometry``, absent (None) in views made
    before it and left out of the dump when None)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    view_id: str
    dataset: str
    dataset_version: int
    spec: ViewSpec
    normalisation: str
    patients: PerSplit[list[str]]
    counts: PerSplit[int]
    shards: PerSplit[list[str]]
    labeled: PerSplit[int] | None = Field(None, exclude_if=lambda v: v is None,
                                          description="Items cut from scans with a label map, per split.")
    unlabeled_scans: PerSplit[list[str]] | None = Field(None, exclude_if=lambda v: v is None,
                                                        description="Scans without a label map, per split (their items are in the "
                                                                    "view, flagged unlabeled).")
    partially_labeled_scans: PerSplit[list[str]] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Scans whose label map covers part of them (a DICOM-SEG drawn on some slices), per split: their items "
                    "the map does not cover are in the view, flagged unlabeled.")
    excluded_scans: list[str] | None = Field(None, exclude_if=lambda v: v is None,
                                             description="Scans without a label map left out (unlabeled=exclude).")
    excluded_items: int | None = Field(None, exclude_if=lambda v: v is None,
                                       description="Items of partly labeled scans left out as unlabeled (unlabeled=exclude).")
    geometry: ViewGeometry | None = Field(None, exclude_if=lambda v: v is None,
                                          description="Where the items' pixels sit in mm, over the training split's scans "
                                                      "(see the module docstring).")

    def unlabeled_problem(self, splits: tuple[str, ...], need: str) -> str | None:
        """Why a job that needs masks in ``splits`` (``need`` says what for) cannot use this view, or
        None: it holds scans without a label map there, whose all-zero masks would read as "no
        foreground". Views made before the format recorded it say nothing here."""
        if self.unlabeled_scans is None:
            return None
        partial = self.partially_labeled_scans
        found = {split: (len(self.unlabeled_scans[split]), len(partial[split]) if partial is not None else 0) for split in splits}
        found = {split: counts for split, counts in found.items() if any(counts)}
        if not found:
            return None
        where = ", ".join(f"{whole} unlabeled{f' and {part} partly labeled' if part else ''} in its {split} split"
                          if whole else f"{part} partly labeled in its {split} split" for split, (whole, part) in found.items())
        return (f"view {self.view_id} holds scans without a label map, or with one that covers part of them ({where}), "
                f"and {need} needs a mask for every item: "
                f"prepare a view that leaves them out (POST /v1/datasets/{self.dataset}/views with \"unlabeled\": \"exclude\"), "
                "or label them and ingest the labels")
NORMALISATION = "per-volume: clip to [p0.5, p99.5], then min-max to [0, 1]"


def normalise(volume: np.ndarray) -> np.ndarray:
    """Per-volume intensity normalisation (volumes differ wildly in scale between scanners)."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(volume, dtype=np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def resize_square(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad a 2D slice to a square (keeping its aspect ratio), then resize to ``size``×``size``:
    bilinear with antialiasing for the image, nearest for the mask."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    side = max(h, w)
    pad = ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)
    image, mask = np.pad(image, pad), np.pad(mask, pad)
    t_img = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    t_msk = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))[None, None]
    img = F.interpolate(t_img, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
    msk = F.interpolate(t_msk, size=(size, size), mode="nearest-exact")
    return img[0, 0].clamp(0, 1).numpy(), msk[0, 0].numpy().astype(np.uint8)


KeepEmpty = bool | Callable[[int], bool]


def _keeps(keep_empty: KeepEmpty, index: int) -> bool:
    return keep_empty(index) if callable(keep_empty) else keep_empty


def slices_2d(image: np.ndarray, mask: np.ndarray, size: int, axis: int, keep_empty: KeepEmpty) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Each slice along ``axis`` with foreground, or without where ``keep_empty`` (or, called with the
    slice's index, it) says so; resized to ``size``."""
    if image.ndim == 2:
        image, mask, axis = image[..., None], mask[..., None], 2
    if not -image.ndim <= axis < image.ndim:
        raise InvalidInput(f"axis must index one of the volume's {image.ndim} axes, got {axis}.")
    for i in range(image.shape[axis]):
        msk = np.take(mask, i, axis=axis)
        if msk.any() or _keeps(keep_empty, i):
            img, msk = resize_square(np.take(image, i, axis=axis), msk, size)
            yield i, img, msk


def patches_3d(image: np.ndarray, mask: np.ndarray, size: int, keep_empty: KeepEmpty) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Non-overlapping ``size``³ patches tiling the volume (zero-padded up to a multiple of ``size``)."""
    if image.ndim != 3:
        raise InvalidInput(f"3D patches need 3D volumes, got shape {image.shape}.")
    pad = [(0, -n % size) for n in image.shape]
    image, mask = np.pad(image, pad), np.pad(mask, pad)
    grid = [range(0, n, size) for n in image.shape]
    index = 0
    for x in grid[0]:
        for y in grid[1]:
            for z in grid[2]:
                window = np.s_[x : x + size, y : y + size, z : z + size]
                if mask[window].any() or _keeps(keep_empty, index):
                    yield index, image[window], mask[window]
                index += 1


def _item_coverage(known: np.ndarray, mode: str, size: int, axis: int) -> Callable[[int], bool]:
    """index → whether the label map says something about every voxel of that item (slice or patch,
    indexed as :func:`slices_2d` and :func:`patches_3d` index them); ``known`` marks where it does."""
    if known.all():
        return lambda index: True
    if not known.any():
        return lambda index: False
    if mode == "patches3d":
        padded = np.pad(known, [(0, -n % size) for n in known.shape], constant_values=True)  # padding is background
        counts = [n // size for n in padded.shape]

        def patch(index: int) -> bool:
            x, rest = divmod(index, counts[1] * counts[2])
            y, z = divmod(rest, counts[2])
            return bool(padded[x * size:(x + 1) * size, y * size:(y + 1) * size, z * size:(z + 1) * size].all())

        return patch
    if known.ndim == 2:
        known, axis = known[..., None], 2
    return lambda index: bool(np.take(known, index, axis=axis).all())


def view_key(dataset: str, view_id: str) -> str:
    return f"{dataset_prefix(dataset)}views/{check_name(view_id, 'view id')}/view.json"


def view_id_for(manifest: DatasetManifest, spec: dict) -> str:
    blob = json.dumps({"dataset": manifest.dataset, "version": manifest.version, **spec}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_views(
    store: ObjectStore,
    manifest: DatasetManifest,
    *,
    mode: str,
    size: int,
    axis: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    keep_empty: bool,
    keep_empty_eval: bool = False,
    unlabeled: str = "include",
    load_scan: Callable[[ScanEntry], tuple[np.ndarray, np.ndarray | None]],
    progress: Callable[[float, str], None] = lambda f, m: None,
) -> str:
    """Write the views of ``manifest`` and return the key of their ``view.json``.

    ``keep_empty`` keeps slices (patches) without foreground in every split, ``keep_empty_eval`` in
    the val and test splits (see :class:`ViewSpec`); unlabeled scans keep all of theirs, flagged, or
    are left out with ``unlabeled="exclude"``."""
    if mode not in ("slices2d", "patches3d"):
        raise InvalidInput(f"mode must be 'slices2d' or 'patches3d', got {mode!r}.")
    if not 8 <= size <= 1024:
        raise InvalidInput(f"size must be between 8 and 1024 voxels, got {size}.")
    if not manifest.scans:
        raise InvalidInput(f"dataset {manifest.dataset!r} version {manifest.version} has no scans.")
    if unlabeled not in ("include", "exclude"):
        raise InvalidInput(f"unlabeled must be 'include' or 'exclude', got {unlabeled!r}.")
    spec = ViewSpec(mode=mode, size=size, axis=axis, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                    keep_empty=keep_empty, keep_empty_eval=keep_empty_eval, unlabeled=unlabeled)
    view_id = view_id_for(manifest, spec.model_dump(mode="json"))
    root = f"{dataset_prefix(manifest.dataset)}views/{view_id}/"
    assignment = split_patients(manifest.patients, val_fraction, test_fraction, seed)

    items: dict[str, list] = defaultdict(list)
    unlabeled_scans: dict[str, list[str]] = {split: [] for split in SPLITS}
    partial_scans: dict[str, list[str]] = {split: [] for split in SPLITS}
    excluded: list[str] = []
    excluded_items = 0
    # canonical order, not upload order: concurrent uploads land in any order, views must not differ
    scans = sorted(manifest.scans, key=lambda s: (s.patient_id, s.scan_id))
    for n, scan in enumerate(scans):
        split = assignment[scan.patient_id]
        if scan.label_key is None and unlabeled == "exclude":
            excluded.append(scan.scan_id)
            progress((n + 1) / len(scans), f"{n + 1}/{len(scans)} scans")
            continue
        image, mask = load_scan(scan)
        image = normalise(image)
        if mask is None:
            unlabeled_scans[split].append(scan.scan_id)
            known, mask = np.zeros(image.shape, bool), np.zeros(image.shape, np.uint8)
        else:  # a masked array where the label map covers part of the scan: masked = unlabeled
            known, mask = ~np.ma.getmaskarray(mask), np.ma.filled(mask, 0).astype(np.uint8)
        labeled_item = _item_coverage(known, mode, size, axis)
        # an item without foreground is kept where the split keeps them, or where nothing says it has none (unlabeled: then
        # flagged, or with unlabeled=exclude counted and left out)
        keep = spec.keeps_empty(split) or (lambda index: not labeled_item(index))
        views = patches_3d(image, mask, size, keep) if mode == "patches3d" else slices_2d(image, mask, size, axis, keep)
        for index, img, msk in views:
            if labeled_item(index):
                items[split].append((scan.patient_id, scan.scan_id, index, img, msk, True))
            elif unlabeled == "include":
                items[split].append((scan.patient_id, scan.scan_id, index, img, msk, False))
            else:
                excluded_items += 1
        if known.any() and not known.all() and unlabeled == "include":
            partial_scans[split].append(scan.scan_id)
        progress((n + 1) / len(scans), f"{n + 1}/{len(scans)} scans")
    if excluded and len(excluded) == len(scans):
        raise InvalidInput(f"dataset {manifest.dataset!r} version {manifest.version}: none of its {len(scans)} scans has a label "
                           "map, and unlabeled=exclude leaves the view empty")

    shards = {split: _write_shards(store, f"{root}{split}/", items[split]) for split in SPLITS}
    view = ViewSummary(
        view_id=view_id,
        dataset=manifest.dataset,
        dataset_version=manifest.version,
        spec=spec,
        normalisation=NORMALISATION,
        patients=PerSplit[list[str]](**{s: sorted(p for p, v in assignment.items() if v == s) for s in SPLITS}),
        counts=PerSplit[int](**{s: len(items[s]) for s in SPLITS}),
        shards=PerSplit[list[str]](**shards),
        labeled=PerSplit[int](**{s: sum(item[5] for item in items[s]) for s in SPLITS}),
        unlabeled_scans=PerSplit[list[str]](**unlabeled_scans),
        partially_labeled_scans=PerSplit[list[str]](**partial_scans),
        excluded_scans=excluded,
        excluded_items=excluded_items,
        geometry=view_geometry(spec, [s for s in scans if assignment[s.patient_id] == "train" and s.scan_id not in excluded]),
    )
    key = view_key(manifest.dataset, view_id)
    store.put_json(key, view.model_dump(mode="json"))
    return key


def view_geometry(spec: ViewSpec, scans: list[ScanEntry]) -> SliceGeometry | PatchGeometry | None:
    """The geometry of the items ``spec`` cuts from ``scans`` (a view's training scans), from their
    manifest shape, spacing and orientation; None without scans or, for slices, when the scans' slices
    do not share one orientation (see the module docstring)."""
    if not scans:
        return None
    if spec.mode == "patches3d":
        return PatchGeometry(axes=tuple(scans[0].orientation[:3]), voxel_spacing=SpacingRange.of([tuple(s.spacing) for s in scans]),
                             scans=len(scans))
    planes, pixels, thicknesses = set(), [], []
    for scan in scans:
        axis = spec.axis % 3 if len(scan.shape) == 3 else 2  # slices_2d cuts a 2D scan as one slice
        in_plane = [a for a in range(3) if a != axis]
        side = max(scan.shape[a] for a in in_plane)
        planes.add((axis, scan.orientation[axis], *(scan.orientation[a] for a in in_plane)))
        pixels.append(tuple(scan.spacing[a] * side / spec.size for a in in_plane))
        if axis < len(scan.spacing):
            thicknesses.append(scan.spacing[axis])
    if len(planes) > 1:
        return None
    ((axis, normal, *in_plane),) = planes
    return SliceGeometry(axis=axis, normal=normal, in_plane=tuple(in_plane), size=spec.size, pixel_spacing=SpacingRange.of(pixels),
                         slice_thickness=mm([np.median(thicknesses)])[0] if thicknesses else None, scans=len(scans))


def _write_shards(store: ObjectStore, prefix: str, items: list) -> list[str]:
    keys = []
    for start in range(0, len(items), SHARD_ITEMS):
        chunk = items[start : start + SHARD_ITEMS]
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            images=np.stack([c[3] for c in chunk])[:, None].astype(np.float32),
            masks=np.stack([c[4] for c in chunk]).astype(np.uint8),
            patients=np.array([c[0] for c in chunk]),
            scans=np.array([c[1] for c in chunk]),
            index=np.array([c[2] for c in chunk], dtype=np.int32),
            labeled=np.array([c[5] for c in chunk], dtype=bool),
        )
        key = f"{prefix}shard-{len(keys):05d}.npz"
        store.put_bytes(key, buf.getvalue())
        keys.append(key)
    return keys


def parse_view(raw: Any, where: str) -> ViewSummary:
    """``raw`` as a view summary; :class:`InvalidInput` naming ``where`` and each field at fault."""
    try:
        return ViewSummary.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"view {where} is not valid: {describe_invalid(exc, whole='view')}") from None


def load_view(store: ObjectStore, dataset: str, view_id: str) -> ViewSummary:
    """The view's summary (``NotFound`` for a view that was never prepared)."""
    key = view_key(dataset, view_id)
    return parse_view(store.get_json(key), key)


def load_view_split(store: ObjectStore, view: ViewSummary, split: str) -> dict[str, np.ndarray]:
    """Concatenate a split's shards into arrays (``images``, ``masks``, ``patients``, ``scans``, ``index``)."""
    parts = [np.load(io.BytesIO(store.get_bytes(k))) for k in view.shards[split]]
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0].files}
