"""train-segmenter: a 2D segmenter trained on real, synthetic or mixed data, selected on the real
validation patients and tested on the held-out real test patients.

``metrics.json`` holds the test metrics (Dice and HD95 per case and per class, bootstrap CIs), the
validation curve used for model selection (``curves.val_step`` / ``curves.val_dice``: pooled Dice
on the real validation patients) and the HD95 unit: ``"mm"`` from the pixel spacing of each test
item (the source scan's voxel spacing in the dataset manifest, scaled by the view's resize — see
:mod:`medsynth.segmentation.spacing`), or ``"px"`` (view pixels) where that spacing is unknown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput, NotFound, PermanentJobError
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import ViewSummary
from medsynth.jobs.artifacts import cohort_arrays, view_splits
from medsynth.jobs.worker import JobContext
from medsynth.segmentation.config import SegmentationSpec
from medsynth.segmentation.evaluate import evaluate_segmenter
from medsynth.segmentation.io import save_segmenter
from medsynth.segmentation.spacing import MM_SOURCE, MM_UNIT, PIXEL_SOURCE, PIXEL_UNIT, view_pixel_spacing
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
               "steps": spec.steps, "batch_size": spec.batch_size, "seed": spec.seed}
    if spec.HasField("synthetic_patients"):
        options["synthetic_patients"] = spec.synthetic_patients
    return options


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
    seg_spec = SegmentationSpec.from_dict(
        {**options, "num_classes": max(num_classes, 2), "val_every": max(1, options["steps"] // 10)}
    )
    result = train_segmenter(seg_spec, splits["train"], splits["val"], synthetic, on_progress=lambda f, m: ctx.progress(0.95 * f, m))
    ctx.progress(0.95, "testing on held-out real patients")
    spacing, unit, spacing_source = hd95_spacing(ctx.store, view, splits["test"])
    metrics = evaluate_segmenter(result.model, splits["test"], seg_spec.num_classes, spacing, spacing_unit=unit)
    metrics["hd95_spacing_source"] = spacing_source
    prefix = f"segmentations/{ctx.job_id}/"
    model_key, metrics_key = f"{prefix}model.pt", f"{prefix}metrics.json"
    ctx.store.put_bytes(model_key, save_segmenter(result))
    ctx.store.put_json(metrics_key, {
        "run_id": ctx.job_id, "source": seg_spec.source, "cohort_id": spec.cohort_id or None,
        "dataset": spec.dataset, "view_id": spec.view_id, "spec": seg_spec.to_dict(),
        "best_step": result.best_step, "best_val_dice": result.best_val_dice, "seconds": result.seconds,
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


def hd95_spacing(store: ObjectStore, view: ViewSummary, test: Mapping[str, np.ndarray]) -> tuple[np.ndarray | tuple[float, float], str, str]:
    """``(spacing, unit, how)`` for HD95 on the test split: per-item mm from the manifest version the
    view was built from, else ``(1, 1)`` view pixels (a 3D-patch view, a missing manifest)."""
    if "scans" in test:
        try:
            manifest = load_manifest(store, view.dataset, view.dataset_version)
        except (NotFound, InvalidInput):
            manifest = None
        if manifest is not None:
            spacing = view_pixel_spacing(view.model_dump(), {s.scan_id: s for s in manifest.scans}, test["scans"])
            if spacing is not None:
                return spacing, MM_UNIT, MM_SOURCE
    return (1.0, 1.0), PIXEL_UNIT, PIXEL_SOURCE
