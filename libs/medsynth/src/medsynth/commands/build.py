"""From a request body to the job it asks for: the checks and the command of each job kind, in one
place for the REST routes and the study runner (:mod:`medsynth.studies`), which submits the same jobs.

Each function checks the body against the store (views, finished upstream jobs) and returns the
command's spec; ``InvalidInput`` (422), ``NotFound`` (404) and ``Conflict`` (409) name what is wrong.
"""

from __future__ import annotations

from google.protobuf.message import Message

from medsynth.commands.requests import (
    CohortCreate,
    ConditionOn,
    EvaluationCreate,
    GeneratorCreate,
    PrepareDatasetCreate,
    SegmentationCreate,
    ViewMode,
)
from medsynth.bus.messages import JobKind
from medsynth.core.errors import InvalidInput
from medsynth.datasets.conditions import CONDITION_SOURCES
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.split import SPLITS
from medsynth.datasets.views import load_view
from medsynth.generators.base import DataSpec
from medsynth.generators.proto import to_proto
from medsynth.generators.registry import GeneratorSpec
from medsynth.jobs.artifacts import generator_entry
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecord, JobRecords
from medsynth.metrics.reference import reference_run_problem
from medsynth.sampling.gate import gate_to_proto
from medsynth.sampling.modes import sample_mode
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2


def prepare_dataset_command(dataset: str, body: PrepareDatasetCreate, store: ObjectStore) -> jobs_pb2.PrepareDataset:
    """404 for a dataset (or version) with no manifest, now rather than as a failed job later."""
    manifest = load_manifest(store, dataset, body.version or None)
    return jobs_pb2.PrepareDataset(
        dataset=dataset,
        version=manifest.version,
        mode=jobs_pb2.PATCHES_3D if body.mode is ViewMode.patches3d else jobs_pb2.SLICES_2D,
        size=body.size,
        axis=body.axis,
        val_fraction=body.val_fraction,
        test_fraction=body.test_fraction,
        seed=body.seed,
        keep_empty=body.keep_empty,
        keep_empty_eval=body.keep_empty_eval,
        unlabeled=body.unlabeled,
    )


def generator_command(body: GeneratorCreate, store: ObjectStore) -> Message:
    """422 for options the family does not have or cannot use with this view (image size, conditioning)."""
    view = load_view(store, body.dataset, body.view_id)
    if view.counts["train"] == 0:
        raise InvalidInput(f"view {body.view_id} has no training items to learn from")
    if view.spec.mode != "slices2d":
        raise InvalidInput(f"generators train on 2D slices; view {body.view_id} holds {view.spec.mode}")
    if problem := view.unlabeled_problem(("train",), f"a {body.generator.family} generator (it learns images with their masks)"):
        raise InvalidInput(problem)
    manifest = load_manifest(store, body.dataset, view.dataset_version)
    labels = {v for s in manifest.scans for v in s.label_values}
    condition_on = "" if body.condition_on is ConditionOn.none else body.condition_on.value
    data = DataSpec(
        image_size=view.spec.size,
        num_classes=max(2, max(labels, default=0) + 1),
        num_conditions=CONDITION_SOURCES.get(condition_on, 0),
    )
    spec = GeneratorSpec(options=body.generator, training=body.training, data=data)
    if condition_on and not spec.family.conditional(spec.options):
        raise InvalidInput(f"condition_on={condition_on!r} needs a class-conditioned generator; these {spec.options.family} options are not.")
    return to_proto(spec, dataset=body.dataset, view_id=body.view_id, condition_on=condition_on)


def cohort_command(body: CohortCreate, store: ObjectStore, records: JobRecords) -> Message:
    """404 for an unknown generator, 409 for one that is still training (or failed), 422 for a mask
    source or condition the generator cannot serve."""
    sample_mode(generator_entry(store, records, body.generator_id), body.mask_source.value, body.condition,
                body.sample_steps, body.eta)
    return jobs_pb2.SampleCohort(
        generator_id=body.generator_id,
        count=body.count,
        seed=body.seed,
        formats=[f.value for f in body.formats],
        batch_size=body.batch_size,
        mask_source=body.mask_source.value,
        condition=body.condition,
        sample_steps=body.sample_steps,
        eta=body.eta,
        release=gate_to_proto(body.release),
    )


def segmentation_command(body: SegmentationCreate, store: ObjectStore, records: JobRecords) -> Message:
    view = load_view(store, body.dataset, body.view_id)
    for split in ("val", "test"):
        if view.counts[split] == 0:
            raise InvalidInput(f"view {body.view_id} has no {split} items; prepare it with a non-zero {split} fraction")
    if problem := view.unlabeled_problem(SPLITS, "a segmenter (trained, selected and tested against masks)"):
        raise InvalidInput(problem)
    if body.source != "real":
        if not body.cohort_id:
            raise InvalidInput(f"{body.source.value} training needs a cohort_id")
        finished(records, body.cohort_id, JobKind.sample_cohort)
    return segmenter_message(body)


def segmenter_message(body: SegmentationCreate) -> jobs_pb2.TrainSegmenter:
    """The command body of a checked request: every field of ``body``, typed."""
    return jobs_pb2.TrainSegmenter(
        dataset=body.dataset,
        view_id=body.view_id,
        cohort_id=body.cohort_id or "",
        source=body.source.value,
        synthetic_ratio=body.synthetic_ratio,
        synthetic_patients=body.synthetic_patients,
        augment=body.augment,
        model=body.model,
        steps=body.steps,
        batch_size=body.batch_size,
        seed=body.seed,
        early_stopping=body.early_stopping,
        val_every=body.val_every or 0,  # 0: the worker's default (medsynth.segmentation.config.default_val_every)
        patience=body.patience or 0,  # 0: the default patience
        min_steps=body.min_steps,
        min_delta=body.min_delta,
    )


def evaluation_command(body: EvaluationCreate, store: ObjectStore, records: JobRecords) -> Message:
    """404/409 for a cohort, segmentation run or reference run that is unknown or not finished; 422 for a
    reference extractor that is not a real-only run on the cohort's generator's dataset and view (the
    reference run when given, else the real-only run among the segmentation runs)."""
    cohort = finished(records, body.cohort_id, JobKind.sample_cohort)
    generator = finished(records, cohort.spec["generator_id"], JobKind.train_generator)
    dataset, view_id = generator.spec["dataset"], generator.spec["view_id"]
    if load_view(store, dataset, view_id).counts["train"] == 0:
        raise InvalidInput(f"reference view {view_id} of dataset {dataset!r} is empty")
    runs = {run: finished(records, run, JobKind.train_segmenter) for run in body.segmentation_run_ids}
    if body.reference_run_id:
        reference = finished(records, body.reference_run_id, JobKind.train_segmenter)
        candidates = [(body.reference_run_id, reference)]
    else:  # the default extractor: the first real-only run listed (as the evaluation picks it)
        first = next(((run, record) for run, record in runs.items() if _run_fields(store, record).get("source") == "real"), None)
        candidates = [first] if first else []
    for run, record in candidates:
        problem = reference_run_problem(_run_fields(store, record), run, dataset, view_id)
        if problem:
            raise InvalidInput(problem)
    return jobs_pb2.Evaluate(
        cohort_id=body.cohort_id,
        view_id=view_id,
        dataset=dataset,
        segmentation_run_ids=body.segmentation_run_ids,
        max_samples=body.max_samples,
        reference_run_id=body.reference_run_id or "",
    )


def _run_fields(store: ObjectStore, record: JobRecord) -> dict:
    """A finished segmentation run's source, dataset and view: from its metrics.json (what the run
    did), else its command."""
    key = record.result_keys.get("metrics")
    metrics = store.get_json(key) if key and store.exists(key) else {}
    return {name: metrics.get(name, record.spec.get(name)) for name in ("source", "dataset", "view_id")}


#: Each job kind a client (or a study) can ask for: its request body and how it becomes a command.
SUBMISSIONS = {
    JobKind.train_generator: (GeneratorCreate, lambda body, store, records: generator_command(body, store)),
    JobKind.sample_cohort: (CohortCreate, cohort_command),
    JobKind.train_segmenter: (SegmentationCreate, segmentation_command),
    JobKind.evaluate: (EvaluationCreate, evaluation_command),
}
