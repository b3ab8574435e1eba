"""train-segmenter: a 2D segmenter trained on real, synthetic or mixed data, selected on the real
validation patients and tested on the held-out real test patients.

Training runs ``steps`` optimiser steps, or with ``early_stopping`` up to ``steps``, stopping at a
plateau of the validation Dice (:class:`medsynth.segmentation.train.EarlyStopping`); the weights
tested are the best-validation ones either way. Validation checks come every ``val_every`` steps (a
command without it: ``max(1, steps // 10)``, as before early stopping existed).

``metrics.json`` holds the test metrics (Dice and HD95 per case and per class, bootstrap CIs;
:mod:`medsynth.segmentation.evaluate`), the validation curve used for model selection
(``curves.val_step`` / ``curves.val_dice``: pooled Dice on the real validation patients), how the
run stopped (``stopping``: the rule, ``stopped_step``, ``best_step``, ``stop_reason`` ``"plateau"`` or
``"cap"``) and the HD95 unit: ``"mm"`` from the pixel spacing of each test item (the source scan's
voxel spacing in the dataset manifest, scaled by the view's resize — see
:mod:`medsynth.segmentation.spacing`), or ``"px"`` (view pixels) where that spacing is unknown.

HD95 is 3D per scan (``test.hd95_mode`` ``"3d-stack"``) where the view holds every slice of its test
patients (``keep_empty_eval`` or ``keep_empty``) and the spacing is known in mm; otherwise per slice.
``test.empty_slices_kept`` says which kind of view it was: with it False, slices without foreground
were not tested and a false positive there went unseen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medsynth.core.devices import pick_device
from medsynth.core.errors import InvalidInput, NotFound, PermanentJobError
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import ViewSummary
from medsynth.jobs.artifacts import cohort_arrays, view_splits
from medsynth.jobs.worker import JobContext
from medsynth.segmentation.config import DEFAULT_PATIENCE, SegmentationSpec, default_val_every
from medsynth.segmentation.evaluate import evaluate_segmenter
from medsynth.segmentation.io import save_segmenter
from medsynth.segmentation.spacing import MM_SOURCE, MM_UNIT, PIXEL_SOURCE, PIXEL_UNIT, view_pixel_spacing, view_slice_spacing
from medsynth.segmentation.train import train_segmenter
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2


def segmentation_options(spec: jobs_pb2.TrainSegmenter) -> dict[str, Any]:
    """The command's :class:`SegmentationSpec` fields; :class:`PermanentJobError` for a command without them
    (one published before they were typed, whose settings were a JSON string this worker no longer reads)."""
    if not spec.source or not spec.steps or not spec.batch_size:
        raise PermanentJobError("this train-segmenter command has no source, steps or batch size (it predates the typed "
                                "fields of medsynth.v1.TrainSegmenter); submit the segmentation again")
    options = {"source": spec.source, "synthetic_ratio": spec.synthetic_ratio, "augment": spec.augment, "model": spec.model or "unet",
               "steps": spec.steps, "batch_size": spec.batch_size, "seed": spec.seed, "early_stopping": spec.early_stopping,
               "val_every": spec.val_every or None, "patience": spec.patience or None, "min_steps": spec.min_steps,
               "min_delta": spec.min_delta}  # 0 for val_every and patience: unset (commands from before them have 0)
    if spec.HasField("synthetic_patients"):
        options["synthetic_patients"] = spec.synthetic_patients
    return options


def spec_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`segmentation_options` with the defaults filled in: the :class:`SegmentationSpec` fields
    (all but ``num_classes``). ``val_every`` defaults to :func:`default_val_every` (``max(1, steps // 10)``,
    as runs before early stopping had), ``patience`` to ``DEFAULT_PATIENCE``."""
    out = dict(options)
    out["val_every"] = options["val_every"] or default_val_every(options["steps"], options["early_stopping"])
    out["patience"] = options["patience"] or DEFAULT_PATIENCE
    return out


def train_segmentation(spec: jobs_pb2.TrainSegmenter, ctx: JobContext) -> Mapping[str, str]:
    options = segmentation_options(spec)
    view, splits = view_splits(ctx.store, spec.dataset, spec.view_id)
    num_classes = int(max(s["masks"].max() for s in splits.values() if len(s)) + 1)
    synthetic = None
    if options["source"] != "real":
        _, images, masks = cohort_arrays(ctx.store, ctx.records, spec.cohort_id)
        if options.get("synthetic_patients"):
            images, masks, options["synthetic_ratio"] = _patients_worth(splits["train"], images, masks, options["synthetic_patients"])
        synthetic = (images, np.minimum(masks, max(num_classes, 2) - 1))
    seg_spec = SegmentationSpec.from_dict({**spec_fields(options), "num_classes": max(num_classes, 2)})
    device = pick_device(ctx.settings.device)  # MEDSYNTH_DEVICE, as the generator trainer's
    result = train_segmenter(seg_spec, splits["train"], splits["val"], synthetic, on_progress=lambda f, m: ctx.progress(0.95 * f, m),
                             device=device)
    ctx.progress(0.95, "testing on held-out real patients")
    spacing, unit, spacing_source = hd95_spacing(ctx.store, view, splits["test"])
    slice_spacing = hd95_slice_spacing(ctx.store, view, splits["test"]) if unit == MM_UNIT else None
    metrics = evaluate_segmenter(result.model, splits["test"], seg_spec.num_classes, spacing, spacing_unit=unit, slice_spacing=slice_spacing)
    metrics["hd95_spacing_source"] = spacing_source
    metrics["empty_slices_kept"] = view.spec.keeps_empty("test")
    stopping = {"early_stopping": seg_spec.early_stopping, "val_every": seg_spec.val_every, "steps_cap": seg_spec.steps,
                "patience": seg_spec.patience if seg_spec.early_stopping else None,
                "min_steps": seg_spec.min_steps, "min_delta": seg_spec.min_delta,
                "stopped_step": result.stopped_step, "best_step": result.best_step, "stop_reason": result.stop_reason,
                "val_split_empty_slices_kept": view.spec.keeps_empty("val")}  # fmt: skip
    prefix = f"segmentations/{ctx.job_id}/"
    model_key, metrics_key = f"{prefix}model.pt", f"{prefix}metrics.json"
    ctx.store.put_bytes(model_key, save_segmenter(result))
    ctx.store.put_json(metrics_key, {
        "run_id": ctx.job_id, "source": seg_spec.source, "cohort_id": spec.cohort_id or None,
        "dataset": spec.dataset, "view_id": spec.view_id, "spec": seg_spec.to_dict(),
        "best_step": result.best_step, "best_val_dice": result.best_val_dice, "seconds": result.seconds, "device": str(device),
        "stopped_step": result.stopped_step, "stop_reason": result.stop_reason, "stopping": stopping,
        "test": metrics, "curves": {k: v for k, v in result.curves.items() if k != "train_loss"},
        "curves_note": "val_dice: pooled mean foreground Dice on the real validation patients at each val_step",
    })  # fmt: skip
    return {"model": model_key, "metrics": metrics_key}


def _patients_worth(train: Mapping[str, np.ndarray], images: np.ndarray, masks: np.ndarray, patients: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The cohort's first ``patients`` x (training slices per real patient) samples, and their share of
    the pool they join (the batch ratio that samples real and synthetic slices uniformly)."""
    n_real = len(train["images"])
    per_patient = n_real / max(1, len(np.unique(train["patients"]))) if "patients" in train else 1.0
    wanted = max(1, round(patients * per_patient))
    if wanted > len(images):
        raise PermanentJobError(f"{patients} synthetic patients are {wanted} slices ({per_patient:.1f} per real training patient); "
                                f"the cohort has {len(images)}")
    return images[:wanted], masks[:wanted], wanted / (n_real + wanted)


def _manifest_scans(store: ObjectStore, view: ViewSummary) -> dict[str, Any] | None:
    try:
        manifest = load_manifest(store, view.dataset, view.dataset_version)
    except (NotFound, InvalidInput):
        return None
    return {s.scan_id: s for s in manifest.scans}


def hd95_spacing(store: ObjectStore, view: ViewSummary, test: Mapping[str, np.ndarray]) -> tuple[np.ndarray | tuple[float, float], str, str]:
    """``(spacing, unit, how)`` for HD95 on the test split: per-item mm from the manifest version the
    view was built from, else ``(1, 1)`` view pixels (a 3D-patch view, a missing manifest)."""
    if "scans" in test:
        scans = _manifest_scans(store, view)
        if scans is not None:
            spacing = view_pixel_spacing(view.model_dump(), scans, test["scans"])
            if spacing is not None:
                return spacing, MM_UNIT, MM_SOURCE
    return (1.0, 1.0), PIXEL_UNIT, PIXEL_SOURCE


def hd95_slice_spacing(store: ObjectStore, view: ViewSummary, test: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Per-item slice spacing in mm for 3D HD95 on the test split, or ``None`` (per-slice HD95): only
    a 2D-slice view that holds every slice of its test patients stacks them back into volumes."""
    if view.spec.mode != "slices2d" or not view.spec.keeps_empty("test") or "scans" not in test or "index" not in test:
        return None
    scans = _manifest_scans(store, view)
    return None if scans is None else view_slice_spacing(view.model_dump(), scans, test["scans"])
