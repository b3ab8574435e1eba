"""evaluate: how faithful (FID/KID with named extractors, each beside a real-versus-real baseline),
diverse (a mode-collapse check), useful (segmentation utility, Dice per class, HD95 with its unit,
validation curves) and safe (memorization audit) a cohort is, as an HTML report and the same
numbers as JSON.

``evaluate_cohort`` reads the inputs from the store; :func:`evaluation_results` computes every
number from arrays and segmentation-run metrics, with no store access.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsynth.core.devices import pick_device
from medsynth.core.errors import InvalidInput
from medsynth.generators.entry import GeneratorEntry
from medsynth.jobs.artifacts import cohort_arrays, generator_entry, view_splits
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecords
from medsynth.jobs.worker import JobContext
from medsynth.bus.messages import JobKind
from medsynth.metrics.diversity import diversity_check
from medsynth.metrics.fidelity import (
    HELDOUT_STREAM,
    MIN_BASELINE_IMAGES,
    EncoderExtractor,
    FeatureExtractor,
    InceptionExtractor,
    extract_features,
    fidelity_from_features,
    heldout_baseline,
    inception_score,
    split_halves,
    subsample_indices,
)
from medsynth.metrics.embedding import tsne
from medsynth.metrics.manifold import ManifoldMetric
from medsynth.metrics.reference import cached_features, images_digest, reference_key, reference_run_problem
from medsynth.metrics.registry import metric_name
from medsynth.metrics.memorization import cohort_audit, memorization_audit
from medsynth.metrics.report import curve_series, grid_png, render_html
from medsynth.segmentation.io import load_segmenter
from medsynth.segmentation.models import encoder
from medsynth.v1 import jobs_pb2

FIDELITY_METRICS = ("fid", "kid")
DEFAULT_MAX_SAMPLES = 2000  # images a side when the command leaves max_samples unset (as EvaluationCreate's default)
IS_SPLITS, IS_MIN_PER_SPLIT = 10, 2  # the Inception Score's usual 10 splits, each of at least 2 images
BASELINE = ("held-out real (the view's validation and test patients) against training real, at n = min(synthetic used, "
            "held-out available) a side; the synthetic score at the same n against the same training images beside it")


@dataclass(frozen=True)
class HeldOut:
    """Real images of patients neither the generator nor the reference extractor saw (the view's
    validation and test patients), selected as the training split selects its slices."""

    images: np.ndarray
    description: str


def evaluate_cohort(spec: jobs_pb2.Evaluate, ctx: JobContext) -> Mapping[str, str]:
    limit = spec.max_samples or DEFAULT_MAX_SAMPLES
    records = ctx.records
    manifest, fake, fake_masks = cohort_arrays(ctx.store, records, spec.cohort_id, limit=limit)
    view, splits = view_splits(ctx.store, spec.dataset, spec.view_id)  # val + test: the held-out baseline's patients
    train = splits["train"]
    if not train:
        raise InvalidInput(f"reference view {spec.view_id} has no training images; need at least 2")
    real, real_masks, real_patients = _subsample(train["images"], train["masks"], train.get("patients"), limit)
    if len(real) < 2:
        raise InvalidInput(f"reference view {spec.view_id} has {len(real)} training images; need at least 2")
    runs = [ctx.store.get_json(finished(records, r, JobKind.train_segmenter).result_keys["metrics"]) for r in spec.segmentation_run_ids]
    ctx.progress(0.1, "fidelity")
    extractors = _extractors(ctx, records, runs, spec)
    digest, reference, heldout_reference = images_digest(real), {}, {}

    def real_features(extractor: FeatureExtractor) -> np.ndarray:
        key = reference_key(extractor.name, extractor.preprocessing, digest)
        feats, cached = cached_features(ctx.store, key, lambda: extract_features(torch.from_numpy(np.ascontiguousarray(real)), extractor))
        reference[extractor.name] = {"key": key, "cached": cached}
        return feats

    def heldout_features(extractor: FeatureExtractor, images: np.ndarray) -> np.ndarray:  # cached alike: a study's cohorts share them
        key = reference_key(extractor.name, extractor.preprocessing, images_digest(images))
        feats, cached = cached_features(ctx.store, key, lambda: extract_features(torch.from_numpy(np.ascontiguousarray(images)), extractor))
        heldout_reference[extractor.name] = {"key": key, "cached": cached}
        return feats

    real_index = _subsample(np.arange(len(train["images"])), np.arange(len(train["images"])), None, limit)[0]  # of `real`
    numbers = evaluation_results(real, fake, runs, extractors, real_patients=real_patients, progress=ctx.progress,
                                 real_features=real_features, heldout=_heldout(view, splits), heldout_features=heldout_features,
                                 fake_masks=fake_masks, train=train, real_index=real_index)
    numbers["reference_features"] = reference
    numbers["heldout_features"] = heldout_reference
    generator = generator_entry(ctx.store, records, manifest["provenance"]["generator_id"])
    results: dict[str, Any] = {
        "evaluation_id": ctx.job_id, "cohort_id": spec.cohort_id, "generator_id": generator.generator_id,
        "dataset": spec.dataset, "dataset_version": view.dataset_version, "view_id": spec.view_id,
        "samples": {"real_available": int(len(train["images"])), "real_used": int(len(real)),
                    "synthetic_available": int(manifest.get("count", len(manifest["samples"]))), "synthetic_used": int(len(fake)),
                    "selection": f"real: a seeded random subset of at most {limit} training images; synthetic: the first "
                                 f"{limit} samples"},
        **numbers, "generator": _generator_summary(generator), "release": manifest.get("release"),
    }  # fmt: skip
    ctx.progress(0.9, "report")
    from medsynth.sampling.cohort import contact_sheet  # the report's sample grids are the cohort's own

    curves = ctx.store.get_json(generator.curves_key)
    worst = [(p["synthetic"], p["train"]) for p in numbers["memorization"]["worst_pairs"]]  # `train`: of the whole training split
    train_patients = train.get("patients")
    for pair in numbers["memorization"]["worst_pairs"]:  # the cases behind each pair, for a reader of the report
        pair["synthetic_sample"] = manifest["samples"][pair["synthetic"]].get("index", pair["synthetic"])
        pair["train_patient"] = str(train_patients[pair["train"]]) if train_patients is not None else None
    figures = {
        "synthetic": contact_sheet(fake[:32], fake_masks[:32]),
        "real": contact_sheet(real[:32], real_masks[:32]),
        "memorization": grid_png(np.stack([x for s, t in worst for x in (fake[s], train["images"][t])]), columns=4) if worst else b"",
        "release": ctx.store.get_bytes(results["release"]["closest_pairs"]["key"]) if "closest_pairs" in (results["release"] or {}) else b"",
    }
    html = render_html(results, {k: v for k, v in figures.items() if v}, curve_series(curves))
    prefix = f"evaluations/{ctx.job_id}/"
    results["figures"] = {}
    for name, png in figures.items():  # also apart from the page: a study report shows them per family
        if png and name != "release":  # the release figure is the cohort's own audit file
            ctx.store.put_bytes(f"{prefix}figures/{name}.png", png, content_type="image/png")
            results["figures"][name] = f"{prefix}figures/{name}.png"
    ctx.store.put_json(f"{prefix}report.json", results)
    ctx.store.put_bytes(f"{prefix}report.html", html.encode(), content_type="text/html")
    return {"report_json": f"{prefix}report.json", "report_html": f"{prefix}report.html"}


def _generator_summary(entry: GeneratorEntry) -> dict[str, Any]:
    """What the report says about the generator: family, options, training options, steps reached."""
    return {
        "family": entry.family,
        "options": entry.options(),
        "training": (entry.spec or {}).get("training"),
        "steps_done": entry.steps_done,
        "stopped_by_time_budget": entry.stopped_by_time_budget,
        "device": entry.device,
        "metrics": entry.metrics,
    }


def evaluation_results(
    real: np.ndarray,
    fake: np.ndarray,
    runs: Sequence[Mapping[str, Any]],
    extractors: Sequence[FeatureExtractor],
    *,
    real_patients: Sequence[str] | np.ndarray | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] = lambda f, m: None,
    real_features: Callable[[FeatureExtractor], np.ndarray] | None = None,
    heldout: HeldOut | None = None,
    heldout_features: Callable[[FeatureExtractor, np.ndarray], np.ndarray] | None = None,
    fake_masks: np.ndarray | None = None,
    train: Mapping[str, np.ndarray] | None = None,
    real_index: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of the report from the arrays: ``fidelity`` (FID/KID rows, each with its
    real-versus-real baseline), ``real_baseline`` (how that baseline was made, or why it is missing),
    ``inception_score`` (or why it is not computed), ``extractors`` and ``reference_extractor`` (what
    measured, with recipes and hashes), ``manifold`` (precision, recall, density, coverage),
    ``diversity``, ``memorization``, ``utility``, ``relative_dice`` and ``segmentation_curves``.

    Args:
        real: the real reference images (N, 1, S, S) in [0, 1] (the view's training split).
        fake: the synthetic images, same size.
        runs: the segmentation runs' ``metrics.json`` contents.
        extractors: feature extractors for FID/KID; the first in-domain encoder also gives the
            feature space of the memorization audit and the diversity check; an Inception extractor
            with class probabilities gives the Inception Score.
        real_patients: patient id of each real image: the diversity check's two real halves then
            split by patient.
        real_features: the real images' features for an extractor (e.g. from the reference cache);
            default: extracted here.
        heldout: real images of held-out patients: the real-versus-real baseline scores
            ``min(len(fake), len(heldout.images))`` of them against ``real`` (none: no baseline, and
            ``real_baseline`` says why).
        heldout_features: features of (a subsample of) the held-out images for an extractor;
            default: extracted here.
        fake_masks: the synthetic images' masks (N, S, S): the memorization audit searches them too.
        train, real_index: the whole training split (``images``, ``masks``, ``patients``) and the
            indices of ``real`` in it: the memorization audit searches every training image for
            copies in disguise (:func:`medsynth.metrics.memorization.cohort_audit`); default: ``real``.
    """
    real_t, fake_t = torch.from_numpy(np.ascontiguousarray(real)), torch.from_numpy(np.ascontiguousarray(fake))
    halves = _halves(len(real), real_patients, seed)
    baseline, held = _baseline_plan(heldout, len(fake), seed)
    fidelity, features = [], {}
    for extractor in extractors:
        f_real = real_features(extractor) if real_features is not None else extract_features(real_t, extractor)
        f_fake = extract_features(fake_t, extractor)
        features[extractor.name] = (f_real, f_fake)
        f_held = None
        if held is not None:
            f_held = heldout_features(extractor, held) if heldout_features is not None else extract_features(torch.from_numpy(held), extractor)
        fidelity += _fidelity_rows(extractor, f_real, f_fake, f_held, baseline, seed)
    manifold = [row for name, (f_real, f_fake) in features.items() for row in _manifold_rows(name, f_real, f_fake)]
    for row in [*fidelity, *manifold]:  # the registry's name: the metric and its synthetic sample count (fid2k)
        row["name"] = metric_name(row["metric"], row["n_fake"])
    progress(0.4, "diversity")
    in_domain = next((e for e in extractors if isinstance(e, EncoderExtractor)), None)
    f_real, f_fake = features[in_domain.name] if in_domain is not None else (None, None)
    diversity = diversity_check(fake, real, features_synth=f_fake, features_real=f_real,
                                halves=halves[:2] if halves else None, feature_extractor=in_domain.name if in_domain else None, seed=seed)  # fmt: skip
    if halves:
        diversity["real_baseline_split"] = halves[2]
    embedding = _embedding(in_domain.name, f_real, f_fake, seed) if in_domain is not None else None
    progress(0.5, "memorization audit")
    feats = {"features_synth": f_fake, "features_train": f_real} if in_domain is not None else {}
    split = dict(train) if train is not None else {"images": real, "patients": real_patients}
    memorization = cohort_audit(fake, fake_masks, split["images"], split.get("masks"), split.get("patients"),
                                feature_audit=memorization_audit(fake, real, **feats) if feats else None,
                                feature_train=real_index if train is not None else None,
                                feature_extractor=in_domain.name if in_domain else None,
                                heldout_images=heldout.images if heldout is not None else None)  # fmt: skip
    utility = [utility_row(run) for run in runs]
    by_source = {row["source"]: row["mean_dice"] for row in utility}
    real_dice, syn_dice = by_source.get("real"), by_source.get("synthetic")
    relative = syn_dice / real_dice if real_dice and syn_dice is not None else math.nan
    return {
        "fidelity": fidelity,
        "real_baseline": baseline,
        "inception_score": _inception_score(extractors, features),
        "extractors": [_extractor_summary(e) for e in extractors],
        "reference_extractor": _extractor_summary(in_domain) if in_domain is not None else None,
        "manifold": manifold,
        "embedding": embedding,
        "diversity": diversity,
        "utility": utility,
        "relative_dice": relative,
        "memorization": memorization,
        "segmentation_curves": {run["source"]: _curve(run) for run in runs},
    }


def _halves(n: int, patients: Any, seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Two halves of the training images for the diversity check's real ratio (not a fidelity baseline)."""
    try:
        return split_halves(n, patients, seed=seed)
    except InvalidInput:  # fewer than 4 real images: no halves
        return None


def _heldout(view: Any, splits: Mapping[str, Mapping[str, np.ndarray]]) -> HeldOut | None:
    """The view's validation and test images, as the training split selects slices: a view that keeps
    empty slices only in its evaluation splits (``keep_empty_eval``) has them left out here, so that the
    held-out images are what a generator of new patients would be asked to produce. None without any."""
    parts = [splits[s] for s in ("val", "test") if splits.get(s) and len(splits[s]["images"])]
    if not parts:
        return None
    images = np.concatenate([p["images"] for p in parts])
    masks = np.concatenate([p["masks"] for p in parts])
    patients = np.concatenate([p["patients"] for p in parts]) if all("patients" in p for p in parts) else None
    note = ""
    if not view.spec.keeps_empty("train") and any(view.spec.keeps_empty(s) for s in ("val", "test")):
        keep = masks.reshape(len(masks), -1).any(axis=1)
        note = f"; {int((~keep).sum())} slices without foreground left out, as the training split leaves them out"
        images, patients = images[keep], (patients[keep] if patients is not None else None)
    who = f"{len(np.unique(patients.astype(str)))} patients, " if patients is not None else ""
    return HeldOut(images, f"the validation and test patients of view {view.view_id} ({who}{len(images)} images{note})")


def _baseline_plan(heldout: HeldOut | None, n_fake: int, seed: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """What the real-versus-real baseline is made of (or why there is none) and the held-out images it
    scores: ``n = min(n_fake, held-out available)`` of them, drawn as :func:`heldout_baseline` draws."""
    available = 0 if heldout is None else len(heldout.images)
    n = min(n_fake, available)
    plan: dict[str, Any] = {"kind": BASELINE, "heldout": heldout.description if heldout is not None else None,
                            "n_heldout_available": available, "n_synthetic_available": n_fake, "n": None, "missing": None}
    if heldout is None:
        plan["missing"] = "no baseline: the view has no validation or test images (no held-out patients to compare with)"
    elif n < MIN_BASELINE_IMAGES:
        plan["missing"] = (f"no baseline: n = min({n_fake} synthetic, {available} held-out real images) = {n}, fewer than the "
                           f"{MIN_BASELINE_IMAGES} a side it needs")
    if plan["missing"]:
        return plan, None
    plan["n"] = n
    take = subsample_indices(available, n, seed=seed, stream=HELDOUT_STREAM)
    return plan, np.ascontiguousarray(heldout.images[take])


def _fidelity_rows(extractor: FeatureExtractor, f_real: np.ndarray, f_fake: np.ndarray, f_held: np.ndarray | None,
                   baseline: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """One row per metric: the score on all images; the real-versus-real baseline (n held-out real
    images against the training images) and the synthetic score at the same n against the same
    training images (``value_at_baseline_counts``) — or, with no held-out images to speak of, no
    baseline and why (``baseline_missing``), never one from something else."""
    scores = fidelity_from_features(f_real, f_fake, seed=seed)
    base = heldout_baseline(f_real, f_held, f_fake, seed=seed) if f_held is not None else None
    rows = []
    for metric in FIDELITY_METRICS:
        row = {"metric": metric, "value": scores[metric], "extractor": extractor.name, "preprocessing": extractor.preprocessing,
               "extractor_sha256": (getattr(extractor, "recipe", None) or {}).get("sha256"),
               "n_real": scores["n_real"], "n_fake": scores["n_fake"]}  # fmt: skip
        if base is None:
            row |= {"real_baseline": None, "baseline_missing": baseline["missing"], "value_at_baseline_counts": None}
        else:
            row |= {
                "real_baseline": base["real_vs_real"][metric], "baseline": "held-out patients vs training",
                "baseline_n": base["n"], "baseline_n_train": base["n_train"],
                "baseline_n_heldout_available": base["n_heldout_available"],
                "value_at_baseline_counts": base["synthetic_vs_real"][metric], "n_fake_at_baseline_counts": base["n"],
            }  # fmt: skip
        rows.append(row)
    return rows


def _inception_score(extractors: Sequence[FeatureExtractor], features: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The Inception Score of the synthetic images (10 splits) where an Inception extractor with class
    probabilities is configured; otherwise ``value`` None and ``not_computed`` says why."""
    inception = next((e for e in extractors if callable(getattr(e, "class_probabilities", None))), None)
    if inception is None:
        return {"value": None, "not_computed": "no Inception extractor is configured (MEDSYNTH_INCEPTION_WEIGHTS is unset); the "
                                               "in-domain encoder gives features, not ImageNet class probabilities"}
    if not getattr(inception, "has_classes", True):
        return {"value": None, "extractor": inception.name,
                "not_computed": f"the Inception file {getattr(inception, 'weights_path', '')} has no output layer: no class probabilities"}
    f_fake = features[inception.name][1]
    if len(f_fake) < IS_SPLITS * IS_MIN_PER_SPLIT:
        return {"value": None, "extractor": inception.name, "n": len(f_fake),
                "not_computed": f"{len(f_fake)} synthetic images; the Inception Score's {IS_SPLITS} splits need at least "
                                f"{IS_SPLITS * IS_MIN_PER_SPLIT}"}
    mean, std = inception_score(inception.class_probabilities(f_fake), splits=IS_SPLITS)
    return {"value": mean, "std": std, "splits": IS_SPLITS, "n": len(f_fake), "extractor": inception.name,
            "preprocessing": inception.preprocessing,
            "reading": "exp(E KL(p(y|x) || p(y))) over ImageNet's 1008 classes, without the output bias (as the original "
                       "code); higher means confident and varied ImageNet predictions, which says little about medical "
                       "images: reported for comparison with the literature"}


def _extractor_summary(extractor: FeatureExtractor) -> dict[str, Any]:
    """What measured: the extractor's name, preprocessing, feature size, device and recipe (run, hash…).
    Features from a CUDA device differ from the CPU's in the last bits (TF32 and cuDNN convolutions)."""
    return {"name": extractor.name, "preprocessing": extractor.preprocessing, "dim": int(extractor.dim),
            "device": str(getattr(extractor, "device", "cpu")), **(getattr(extractor, "recipe", None) or {})}


EMBED_POINTS = 200  # a side: an exact t-SNE of 400 points takes a few seconds on a CPU


def _embedding(extractor: str, f_real: np.ndarray, f_fake: np.ndarray, seed: int) -> dict[str, Any] | None:
    """2D t-SNE of (at most EMBED_POINTS a side of) the real and synthetic features, for the reports."""
    rng = np.random.default_rng(seed)
    real = f_real[np.sort(rng.choice(len(f_real), min(EMBED_POINTS, len(f_real)), replace=False))]
    fake = f_fake[np.sort(rng.choice(len(f_fake), min(EMBED_POINTS, len(f_fake)), replace=False))]
    if len(real) + len(fake) < 10:
        return None
    y = tsne(np.concatenate([real, fake]), seed=seed)
    return {"method": f"t-SNE (exact, perplexity {min(30.0, (len(y) - 1) / 3):g}, seed {seed}) of {extractor} features",
            "real": np.round(y[:len(real)], 3).tolist(), "synthetic": np.round(y[len(real):], 3).tolist()}


def _manifold_rows(extractor: str, f_real: np.ndarray, f_fake: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall (k = 3), density and coverage (k = 5) in one extractor's feature space; none
    when either side has too few samples for the neighbourhoods."""
    metric = ManifoldMetric(extractor, k_pr=3, k_dc=5)
    if min(len(f_real), len(f_fake)) <= max(metric.k_pr, metric.k_dc):
        return []
    metric.update(real=f_real, fake=f_fake)
    return metric.aggregate()


def _curve(run: Mapping[str, Any]) -> dict[str, Any]:
    curves = run.get("curves") or {}
    return {"run_id": run.get("run_id"), "val_step": list(curves.get("val_step", [])), "val_dice": list(curves.get("val_dice", [])),
            "best_step": run.get("best_step"), "best_val_dice": run.get("best_val_dice")}  # fmt: skip


def _subsample(images: np.ndarray, masks: np.ndarray, patients: np.ndarray | None, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if len(images) <= limit:
        return images, masks, patients
    keep = np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False))
    return images[keep], masks[keep], (patients[keep] if patients is not None else None)


def _extractors(ctx: JobContext, records: JobRecords, runs: list[dict], spec: jobs_pb2.Evaluate) -> list[FeatureExtractor]:
    """The in-domain encoder of the reference run — ``spec.reference_run_id``, else the real-only run
    among the segmentation runs — (no download needed), with its recipe and the SHA-256 of its weights;
    and ImageNet Inception when ``MEDSYNTH_INCEPTION_WEIGHTS`` names a local file.

    Raises:
        InvalidInput: the reference run is not a real-only run on the evaluated view (a command built
            without the request's check), or there is no extractor at all.
    """
    out: list[FeatureExtractor] = []
    device = pick_device(ctx.settings.device)  # MEDSYNTH_DEVICE: feature extraction is the evaluation's heavy part
    if spec.reference_run_id:
        real_run = ctx.store.get_json(finished(records, spec.reference_run_id, JobKind.train_segmenter).result_keys["metrics"])
        chosen = "the evaluation's reference_run_id"
    else:
        real_run = next((r for r in runs if r["source"] == "real"), None)
        chosen = "the real-only run among segmentation_run_ids (no reference_run_id given)"
    if real_run is not None:
        run_id = spec.reference_run_id or real_run["run_id"]
        problem = reference_run_problem(real_run, run_id, spec.dataset, spec.view_id)
        if problem:
            raise InvalidInput(problem)
        model_key = finished(records, run_id, JobKind.train_segmenter).result_keys["model"]
        weights = ctx.store.get_bytes(model_key)
        model = load_segmenter(weights).model
        name = f"in-domain {real_run['spec']['model']} encoder (segmentation run {run_id}, real train split)"
        out.append(EncoderExtractor(encoder(model), name, device=device, recipe=_run_recipe(real_run, run_id, model_key, weights, chosen)))
    if ctx.settings.inception_weights is not None:
        out.append(InceptionExtractor(ctx.settings.inception_weights, device=device))
    if not out:
        raise InvalidInput("no feature extractor: pass a real-only segmentation run or set MEDSYNTH_INCEPTION_WEIGHTS")
    return out


def _run_recipe(run: Mapping[str, Any], run_id: str, model_key: str, weights: bytes, chosen: str) -> dict[str, Any]:
    """How the reference encoder was made: its segmentation run, the run's training settings, how far it
    trained, and the SHA-256 of the weights read (the model file of the run)."""
    spec = run.get("spec") or {}
    return {
        "run_id": run_id, "chosen": chosen, "layer": "the segmenter's encoder, global-average-pooled",
        "dataset": run.get("dataset"), "view_id": run.get("view_id"), "source": run.get("source"),
        "model": spec.get("model"), "seed": spec.get("seed"), "steps": spec.get("steps"), "batch_size": spec.get("batch_size"),
        "augment": spec.get("augment"), "early_stopping": spec.get("early_stopping"),
        "stopped_step": run.get("stopped_step"), "best_step": run.get("best_step"), "stop_reason": run.get("stop_reason"),
        "model_key": model_key, "sha256": hashlib.sha256(weights).hexdigest(),
    }  # fmt: skip


def utility_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One segmentation run as a row of the utility table: mean Dice with its CI, Dice and HD95 per
    class (summaries with CIs), HD95 with its unit (``"px"`` for runs recorded before units were)."""
    test = run["test"]
    classes = sorted(test["dice"], key=int)
    hd95 = [test["hd95"][c]["mean"] for c in classes if test["hd95"][c].get("mean") is not None]
    return {
        "source": run["source"], "run_id": run["run_id"], "mean_dice": test["mean_dice"]["mean"],
        "dice_ci_low": test["mean_dice"]["ci_low"], "dice_ci_high": test["mean_dice"]["ci_high"],
        "dice_per_class": {c: test["dice"][c] for c in classes},
        "mean_hd95": float(np.mean(hd95)) if hd95 else math.nan,
        "hd95_per_class": {c: test["hd95"][c] for c in classes},
        "hd95_unit": test.get("hd95_unit", "px"),
        "n_cases": test["n_cases"], "best_step": run.get("best_step"), "best_val_dice": run.get("best_val_dice"),
        "steps": (run.get("spec") or {}).get("steps"),
    }  # fmt: skip
