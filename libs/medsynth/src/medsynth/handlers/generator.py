"""train-generator: a prepared view → a trained generator of any family, registered with its
TorchServe archive. A redelivered job resumes from its last checkpoint in the store."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from medsynth.core.clock import utcnow
from medsynth.core.devices import pick_device
from medsynth.datasets.conditions import condition_labels
from medsynth.jobs.artifacts import view_splits
from medsynth.jobs.worker import JobContext
from medsynth.generators.entry import GeneratorEntry, entry_key
from medsynth.generators.proto import from_proto
from medsynth.sampling.archive import build_model_archive, weights_fingerprint
from medsynth.runtime.telemetry import TRAIN_LOSS, TRAIN_STEP, TRAIN_STEPS_PER_S
from medsynth.training.loop import train_generator as train_loop
from medsynth.v1 import jobs_pb2

ARCHIVE_VERSION = "1.0"


def train_generator(message: jobs_pb2.TrainGenerator, ctx: JobContext) -> Mapping[str, str]:
    spec = from_proto(message)
    family, steps = spec.options.family, spec.training.steps
    view, splits = view_splits(ctx.store, message.dataset, message.view_id, splits=("train",))
    train = splits["train"]
    conditions = condition_labels(train, message.condition_on) if message.condition_on else None
    prefix = f"generators/{ctx.job_id}/"
    budget = spec.training.time_budget_s
    started = time.monotonic()

    def on_progress(step: int, metrics: dict[str, float]) -> None:
        TRAIN_STEP.set(step)
        TRAIN_STEPS_PER_S.set(metrics.get("steps_per_s", 0.0))
        losses = {k: v for k, v in metrics.items() if k != "steps_per_s"}
        for name, value in losses.items():
            TRAIN_LOSS.labels(family, name).set(value)
        shown = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        done = step / steps  # with a time budget: whichever ends the run first
        if budget:
            done = max(done, (time.monotonic() - started) / budget)
        limit = f"/{steps}" + (f" or {budget / 60:.1f} min" if budget else "")
        ctx.progress(min(done, 1.0), f"step {step}{limit} {shown} ({metrics.get('steps_per_s', 0.0):.1f} steps/s)")

    device = pick_device(ctx.settings.device)
    result = train_loop(spec, train["images"], train["masks"], conditions=conditions, store=ctx.store,
                        prefix=prefix, on_progress=on_progress, device=device)
    weights = result.checkpoint.sampling_weights()
    with tempfile.TemporaryDirectory() as tmp:
        mar = build_model_archive(spec, weights, model_name=_model_name(ctx.job_id), version=ARCHIVE_VERSION, out_dir=Path(tmp),
                                  handler=ctx.settings.sampler_handler)
        archive_key = f"{prefix}{mar.name}"
        ctx.store.put_file(archive_key, mar)
    curves_key = f"{prefix}curves.json"
    ctx.store.put_json(curves_key, result.curves)
    entry = GeneratorEntry(
        generator_id=ctx.job_id,
        family=family,
        spec=spec.to_dict(),
        mask_sources=spec.family.mask_sources_for(spec.options),
        condition_on=message.condition_on or None,
        dataset=message.dataset,
        dataset_version=view.dataset_version,
        view_id=message.view_id,
        checkpoint_key=result.final_key,
        archive_key=archive_key,
        model_name=_model_name(ctx.job_id),
        weights_fingerprint=weights_fingerprint(weights),
        steps_done=result.step,
        stopped_by_time_budget=result.step < steps,
        resumed_from=result.resumed_from,
        device=str(device),
        metrics=_last_values(result.curves),
        stages=spec.family.stages(spec.options, result.step, result.checkpoint.extra),
        curves_key=curves_key,
        registered_at=utcnow(),
    )
    key = entry_key(ctx.job_id)
    ctx.store.put_json(key, entry.stored())
    return {"generator": key, "checkpoint": result.final_key, "archive": archive_key, "curves": curves_key}


def _last_values(curves: Mapping[str, list[float | None]]) -> dict[str, float]:
    """Each curve's last recorded value (a staged family's curves hold None where a stage did not run)."""
    last = {name: next((v for v in reversed(values) if v is not None), None) for name, values in curves.items()}
    return {name: value for name, value in last.items() if value is not None}


def _model_name(job_id: str) -> str:
    """TorchServe model names allow letters, digits, '-' and '_' only."""
    return job_id.replace(".", "_")
