"""train-generator: a prepared view → a trained joint image + mask GAN, registered with its
TorchServe archive. A redelivered job resumes from its last checkpoint in the store."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from medsynth.core.clock import utcnow
from medsynth.handlers.artifacts import view_splits
from medsynth.jobs.worker import JobContext
from medsynth.sampling.archive import build_model_archive, weights_fingerprint
from medsynth.telemetry import TRAIN_LOSS, TRAIN_STEP, TRAIN_STEPS_PER_S
from medsynth.training.config import TrainConfig
from medsynth.training.gan_loop import train_gan
from medsynth.v1 import jobs_pb2

ARCHIVE_VERSION = "1.0"


def train_generator(spec: jobs_pb2.TrainGenerator, ctx: JobContext) -> Mapping[str, str]:
    config = TrainConfig.from_dict(json.loads(spec.config_json))
    view, splits = view_splits(ctx.store, spec.dataset, spec.view_id, splits=("train",))
    prefix = f"generators/{ctx.job_id}/"

    def on_progress(step: int, metrics: dict[str, float]) -> None:
        TRAIN_STEP.set(step)
        TRAIN_STEPS_PER_S.set(metrics.get("steps_per_s", 0.0))
        for net in ("g", "d"):
            TRAIN_LOSS.labels(net).set(metrics.get(f"loss_{net}", float("nan")))
        ctx.progress(step / config.steps, f"step {step}/{config.steps} loss_d {metrics['loss_d']:.3f} loss_g {metrics['loss_g']:.3f}")

    result = train_gan(config, splits["train"]["images"], splits["train"]["masks"], store=ctx.store, prefix=prefix, on_progress=on_progress)
    ema = result.checkpoint.generator_ema
    with tempfile.TemporaryDirectory() as tmp:
        mar = build_model_archive(ema, config.generator.to_dict(), model_name=_model_name(ctx.job_id), version=ARCHIVE_VERSION, out_dir=Path(tmp))
        archive_key = f"{prefix}{mar.name}"
        ctx.store.put_file(archive_key, mar)
    curves_key = f"{prefix}curves.json"
    ctx.store.put_json(curves_key, result.curves)
    registry = {
        "generator_id": ctx.job_id,
        "family": "joint-gan",
        "dataset": spec.dataset,
        "dataset_version": view["dataset_version"],
        "view_id": spec.view_id,
        "config": config.to_dict(),
        "checkpoint_key": result.final_key,
        "archive_key": archive_key,
        "model_name": _model_name(ctx.job_id),
        "weights_fingerprint": weights_fingerprint(ema),
        "resumed_from": result.resumed_from,
        "metrics": {k: v[-1] for k, v in result.curves.items() if v},
        "curves_key": curves_key,
        "registered_at": utcnow().isoformat(),
    }
    key = f"{prefix}generator.json"
    ctx.store.put_json(key, registry)
    return {"generator": key, "checkpoint": result.final_key, "archive": archive_key, "curves": curves_key}


def _model_name(job_id: str) -> str:
    """TorchServe model names allow letters, digits, '-' and '_' only."""
    return job_id.replace(".", "_")
