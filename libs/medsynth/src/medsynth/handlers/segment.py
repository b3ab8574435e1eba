"""train-segmenter: a 2D segmenter trained on real, synthetic or mixed data, selected on the real
validation patients and tested on the held-out real test patients."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from medsynth.handlers.artifacts import cohort_arrays, view_splits
from medsynth.jobs.records import JobRecords
from medsynth.jobs.worker import JobContext
from medsynth.segmentation.config import SegmentationSpec
from medsynth.segmentation.evaluate import evaluate_segmenter
from medsynth.segmentation.io import save_segmenter
from medsynth.segmentation.train import train_segmenter
from medsynth.v1 import jobs_pb2


def train_segmentation(spec: jobs_pb2.TrainSegmenter, ctx: JobContext) -> Mapping[str, str]:
    options = json.loads(spec.config_json)
    _, splits = view_splits(ctx.store, spec.dataset, spec.view_id)
    num_classes = int(max(s["masks"].max() for s in splits.values() if len(s)) + 1)
    seg_spec = SegmentationSpec.from_dict(
        {**options, "num_classes": max(num_classes, 2), "val_every": max(1, options["steps"] // 10)}
    )
    synthetic = None
    if seg_spec.source != "real":
        _, images, masks = cohort_arrays(ctx.store, JobRecords(ctx.store), spec.cohort_id)
        synthetic = (images, np.minimum(masks, seg_spec.num_classes - 1))
    result = train_segmenter(seg_spec, splits["train"], splits["val"], synthetic, on_progress=lambda f, m: ctx.progress(0.95 * f, m))
    ctx.progress(0.95, "testing on held-out real patients")
    metrics = evaluate_segmenter(result.model, splits["test"], seg_spec.num_classes)
    prefix = f"segmentations/{ctx.job_id}/"
    model_key, metrics_key = f"{prefix}model.pt", f"{prefix}metrics.json"
    ctx.store.put_bytes(model_key, save_segmenter(result))
    ctx.store.put_json(metrics_key, {
        "run_id": ctx.job_id, "source": seg_spec.source, "cohort_id": spec.cohort_id or None,
        "dataset": spec.dataset, "view_id": spec.view_id, "spec": seg_spec.to_dict(),
        "best_step": result.best_step, "best_val_dice": result.best_val_dice, "seconds": result.seconds,
        "test": metrics, "curves": {k: v for k, v in result.curves.items() if k != "train_loss"},
    })  # fmt: skip
    return {"model": model_key, "metrics": metrics_key}
