"""Job handlers, and which worker service runs which (the services' only wiring)."""

from __future__ import annotations

from collections.abc import Mapping

from medsynth.jobs.worker import Handler
from medsynth.bus.messages import JobKind


def handlers_for(worker: str) -> Mapping[JobKind, Handler]:
    """The handlers one worker service runs. Imports lazily: a worker loads only its own stack."""
    if worker == "trainer":
        from medsynth.handlers.generator import train_generator
        from medsynth.handlers.prepare import prepare_dataset

        return {JobKind.prepare_dataset: prepare_dataset, JobKind.train_generator: train_generator}
    if worker == "sampler":
        from medsynth.handlers.sample import sample_cohort

        return {JobKind.sample_cohort: sample_cohort}
    if worker == "segmenter":
        from medsynth.handlers.segment import train_segmentation

        return {JobKind.train_segmenter: train_segmentation}
    if worker == "evaluator":
        from medsynth.handlers.evaluate import evaluate_cohort

        return {JobKind.evaluate: evaluate_cohort}
    raise KeyError(f"unknown worker {worker!r}; known: trainer, sampler, segmenter, evaluator")
