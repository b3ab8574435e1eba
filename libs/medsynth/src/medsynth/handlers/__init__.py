"""Job handlers, and which worker service runs which (the services' only wiring)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from medsynth.jobs.worker import Handler
from medsynth.bus.messages import JobKind


def handlers_for(worker: str, kinds: Iterable[str] | None = None) -> Mapping[JobKind, Handler]:
    """The handlers one worker service runs. Imports lazily: a worker loads only its own stack.

    ``kinds`` (``MEDSYNTH_WORKER_KINDS``): only these of the worker's job kinds, e.g. the trainer without
    ``prepare-dataset`` where the CPU ``preparer`` service consumes it (two workers on one kind would each
    run every job of it); a kind the worker does not run is an error."""
    handlers = _all_handlers(worker)
    if kinds is None:
        return handlers
    wanted = list(kinds)
    unknown = [kind for kind in wanted if kind not in {k.value for k in handlers}]
    if unknown or not wanted:
        runs = ", ".join(k.value for k in handlers)
        raise ValueError(f"MEDSYNTH_WORKER_KINDS: the {worker} runs {runs}; not {', '.join(unknown) or 'nothing'}")
    return {kind: handler for kind, handler in handlers.items() if kind.value in wanted}


def _all_handlers(worker: str) -> Mapping[JobKind, Handler]:
    if worker == "trainer":
        from medsynth.handlers.generator import train_generator
        from medsynth.handlers.prepare import prepare_dataset

        return {JobKind.prepare_dataset: prepare_dataset, JobKind.train_generator: train_generator}
    if worker == "preparer":  # prepare-dataset alone, on CPU nodes, where the trainer is on a GPU pool
        from medsynth.handlers.prepare import prepare_dataset

        return {JobKind.prepare_dataset: prepare_dataset}
    if worker == "sampler":
        from medsynth.handlers.sample import sample_cohort

        return {JobKind.sample_cohort: sample_cohort}
    if worker == "segmenter":
        from medsynth.handlers.segment import train_segmentation

        return {JobKind.train_segmenter: train_segmentation}
    if worker == "evaluator":
        from medsynth.handlers.evaluate import evaluate_cohort

        return {JobKind.evaluate: evaluate_cohort}
    raise KeyError(f"unknown worker {worker!r}; known: trainer, preparer, sampler, segmenter, evaluator")
