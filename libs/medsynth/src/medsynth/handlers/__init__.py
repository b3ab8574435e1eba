"""Job handlers, and which worker service runs which (the services' only wiring)."""

from __future__ import annotations

from collections.abc import Mapping

from medsynth.jobs.worker import Handler
from medsynth.messages import JobKind


def handlers_for(worker: str) -> Mapping[JobKind, Handler]:
    """The handlers one worker service runs. Imports lazily: a worker loads only its own stack."""
    from medsynth.handlers.not_available import not_available
    from medsynth.handlers.prepare import prepare_dataset

    table: dict[str, dict[JobKind, Handler]] = {
        "trainer": {JobKind.prepare_dataset: prepare_dataset, JobKind.train_generator: not_available},
        "sampler": {JobKind.sample_cohort: not_available},
        "segmenter": {JobKind.train_segmenter: not_available},
        "evaluator": {JobKind.evaluate: not_available},
    }
    if worker not in table:
        raise KeyError(f"unknown worker {worker!r}; known: {sorted(table)}")
    return table[worker]
