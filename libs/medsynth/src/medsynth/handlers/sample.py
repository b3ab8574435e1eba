"""sample-cohort: draw a synthetic cohort from a registered generator — through TorchServe by
default, or in-process (same generation code) when ``MEDSYNTH_SAMPLER_BACKEND=inprocess``."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from medsynth import __version__
from medsynth.core.devices import pick_device
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import SamplerBackend, Settings
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import load_view
from medsynth.dicom.export import CohortIdentity
from medsynth.generators.base import SampleMode
from medsynth.generators.entry import GeneratorEntry
from medsynth.generators.registry import GeneratorSpec
from medsynth.io.geometry import SliceGeometry
from medsynth.jobs.artifacts import generator_entry, view_splits
from medsynth.jobs.worker import JobContext
from medsynth.bus.messages import make_event
from medsynth.sampling.backends import InProcessSampler, Sampler, TorchServeSampler
from medsynth.sampling.cohort import MANIFEST_NAME, discard_incomplete, write_cohort
from medsynth.sampling.generate import configure_determinism
from medsynth.sampling.gate import GateOptions, ReleaseGate, ReleasePolicy, ReleaseRefused, gate_from_proto
from medsynth.sampling.modes import sample_mode
from medsynth.sampling.torchserve import LoadedModels, SamplerUnavailable, TorchServeClient
from medsynth.store import ObjectStore
from medsynth.runtime.telemetry import COHORT_SAMPLES, GATE_REFUSED, GATE_WITHHELD
from medsynth.generators.checkpoint import load_checkpoint, load_sampling_nets
from medsynth.v1 import events_pb2, jobs_pb2


REQUEST_MARGIN_S = 30  # the client waits this much longer than TorchServe lets the handler run


def sample_cohort(spec: jobs_pb2.SampleCohort, ctx: JobContext) -> Mapping[str, str]:
    entry = generator_entry(ctx.store, ctx.records, spec.generator_id)
    prefix = f"cohorts/{ctx.job_id}/"
    manifest_key = prefix + MANIFEST_NAME
    audit_key = f"audits/{ctx.job_id}/closest_pairs.png"  # apart from the cohort: it shows training images
    if not ctx.store.exists(manifest_key):  # else: written by an attempt that died before recording it
        discard_incomplete(ctx.store, prefix)  # what a killed attempt left behind
        ctx.store.delete(audit_key)
        mode = sample_mode(
            entry, spec.mask_source, *(getattr(spec, f) if spec.HasField(f) else None for f in ("condition", "sample_steps", "eta"))
        )
        options = gate_from_proto(spec.release)
        ctx.progress(0.0, f"memorization gate: auditing against the training images of view {entry.view_id}")
        gate = _gate(ctx, entry, options)
        sampler = _sampler(ctx, entry, mode)
        provenance = {
            "cohort_id": ctx.job_id,
            "generator_id": spec.generator_id,
            "family": entry.family,
            "checkpoint_key": entry.checkpoint_key,
            "checkpoint_sha256": ctx.store.stat(entry.checkpoint_key).sha256,
            "archive_key": entry.archive_key,
            "dataset": entry.dataset,
            "dataset_version": entry.dataset_version,
            "view_id": entry.view_id,
        }
        try:
            write_cohort(
                ctx.store, prefix, sampler,
                count=spec.count, seed=spec.seed, batch_size=request_batch(entry.generator_spec(), mode, spec.batch_size or 64, ctx.settings),
                formats=list(spec.formats) or ["nifti", "png"], provenance=provenance,
                progress=lambda done, total: ctx.progress(done / total, _progress_line(done, total, gate)),
                gate=gate, audit_key=audit_key, dicom=_dicom_identity(ctx, entry, spec), geometry=_view_geometry(ctx, entry),
            )  # fmt: skip
        except ReleaseRefused:
            GATE_REFUSED.inc()
            raise
        if gate.options.policy is ReleasePolicy.filter:
            GATE_WITHHELD.inc(gate.n_flagged)
        COHORT_SAMPLES.labels(ctx.settings.sampler_backend.value).inc(spec.count)
    ready = events_pb2.CohortReady(cohort_id=ctx.job_id, generator_id=spec.generator_id, count=spec.count, manifest_key=manifest_key)
    ctx.emit(make_event(ctx.job_id, ctx.record.kind, project=ctx.record.project, cohort_ready=ready))
    return {"manifest": manifest_key}


def _dicom_identity(ctx: JobContext, entry: GeneratorEntry, spec: jobs_pb2.SampleCohort) -> CohortIdentity | None:
    """What the cohort's DICOM files say they are: the training data's modality (MR when it came as
    NIfTI) and its label names, under a synthetic identity."""
    if "dicom" not in spec.formats:
        return None
    manifest = load_manifest(ctx.store, entry.dataset, entry.dataset_version)
    modality = next((s.dicom.modality for s in manifest.scans if s.dicom is not None and s.dicom.modality), "MR")
    names = {v: n for s in manifest.scans for v, n in s.label_names.items()}
    return CohortIdentity(cohort_id=ctx.job_id, generator_id=spec.generator_id, family=entry.family,
                          modality=modality, label_names=tuple(sorted(names.items())), software_version=__version__)


def _view_geometry(ctx: JobContext, entry: GeneratorEntry) -> SliceGeometry | None:
    """Where the generator's view slices sit in mm (None for a view made before views recorded it)."""
    geometry = load_view(ctx.store, entry.dataset, entry.view_id).geometry
    return geometry if isinstance(geometry, SliceGeometry) else None


def request_batch(spec: GeneratorSpec, mode: SampleMode, asked: int, settings: Settings) -> int:
    """The samples per sampling request: ``asked``, cut for an iterative sampler so that samples ×
    network passes per sample stays within ``sampler_passes_per_request`` (one request must finish
    inside TorchServe's response timeout, and progress is reported per request)."""
    passes = spec.family.passes_per_sample(spec.options, mode)
    return max(1, min(asked, settings.sampler_passes_per_request // passes))


def _gate(ctx: JobContext, entry: GeneratorEntry, options: GateOptions) -> ReleaseGate:
    """The gate over the training split the generator learned from: its images and masks, calibrated
    across its patients."""
    _, splits = view_splits(ctx.store, entry.dataset, entry.view_id, splits=("train",))
    train = splits["train"]
    if not train:
        raise InvalidInput(f"view {entry.view_id} has no training images to audit the cohort against.")
    return ReleaseGate.for_training_images(train["images"], options, masks=train.get("masks"), patients=train.get("patients"))


def _progress_line(done: int, total: int, gate: ReleaseGate) -> str:
    line = f"{done}/{total} samples released"
    if gate.n_flagged:
        verb = "withheld" if gate.options.policy is ReleasePolicy.filter else "flagged"
        line += f", {gate.n_flagged} of {len(gate.verdicts)} draws {verb} as near-copies of training images"
    return line


def _sampler(ctx: JobContext, entry: GeneratorEntry, mode: SampleMode) -> Sampler:
    if ctx.settings.sampler_backend is SamplerBackend.inprocess:
        configure_determinism()  # as the TorchServe handler does, before the weights reach the device
        checkpoint = load_checkpoint(ctx.store.get_bytes(entry.checkpoint_key), family=entry.family)
        device = pick_device(ctx.settings.device)
        return InProcessSampler(checkpoint.spec, load_sampling_nets(checkpoint, device=device), mode, device=device)
    if entry.spec is None:
        raise InvalidInput(
            f"generator {entry.generator_id} was registered before generator families: its TorchServe archive "
            "holds the old handler. Sample it with MEDSYNTH_SAMPLER_BACKEND=inprocess, or retrain it."
        )
    request_s = ctx.settings.sampler_request_s
    client = TorchServeClient(ctx.settings.torchserve_inference_url, ctx.settings.torchserve_management_url,
                              timeout_s=request_s + REQUEST_MARGIN_S, key_file=ctx.settings.torchserve_key_file)  # fmt: skip
    _wait_for(client, ctx)
    loaded = _LOADED.setdefault(client.management_url, LoadedModels(ctx.settings.sampler_max_models))
    loaded.capacity = ctx.settings.sampler_max_models
    loaded.use(client, entry.model_name,
               lambda: client.register(_publish_archive(ctx.store, ctx.settings, entry.archive_key), entry.model_name,
                                       response_timeout_s=request_s))  # fmt: skip
    return TorchServeSampler(client, entry.model_name, mode)


#: The generators this sampler process keeps loaded, per TorchServe (management URL).
_LOADED: dict[str, LoadedModels] = {}


def _wait_for(client: TorchServeClient, ctx: JobContext) -> None:
    """Wait up to ``sampler_wait_s`` for TorchServe (cancellation honoured); the worker then retries
    the job ``max_attempts`` times before failing it with this error."""
    deadline = time.monotonic() + ctx.settings.sampler_wait_s
    while not client.ping():
        if time.monotonic() > deadline:
            raise SamplerUnavailable(
                f"TorchServe at {client.inference_url} did not answer /ping for {ctx.settings.sampler_wait_s:.0f}s"
            )
        ctx.progress(0.0, f"waiting for TorchServe at {client.inference_url}")
        time.sleep(1.0)


def _publish_archive(store: ObjectStore, settings: Settings, archive_key: str) -> str:
    """Put the .mar where TorchServe can load it: into its model store when it shares our disk
    (returns the bare file name), else into a local file (returns its path)."""
    name = Path(archive_key).name
    target_dir = settings.torchserve_model_store or Path(tempfile.mkdtemp(prefix="medsynth-mar-"))
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / f".{name}.partial"
    store.download(archive_key, partial)
    shutil.move(partial, target_dir / name)
    return name if settings.torchserve_model_store else str(target_dir / name)
