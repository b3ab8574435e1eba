"""evaluate: how faithful (FID/KID with named extractors, each beside a real-versus-real baseline),
diverse (a mode-collapse check), useful (segmentation utility, Dice per class, HD95 with its unit,
validation curves) and safe (memorization audit) a cohort is, as an HTML report and the same
numbers as JSON.

``evaluate_cohort`` reads the inputs from the store; :func:`evaluation_results` computes every
number from arrays and segmentation-run metrics, with no store access.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.entry import GeneratorEntry
from medsynth.jobs.artifacts import cohort_arrays, generator_entry, view_splits
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecords
from medsynth.jobs.worker import JobContext
from medsynth.bus.messages import JobKind
from medsynth.metrics.diversity import diversity_check
from medsynth.metrics.fidelity import (
    EncoderExtractor,
    FeatureExtractor,
    InceptionExtractor,
    extract_features,
    fidelity_from_features,
    real_baseline,
    split_halves,
)
from medsynth.metrics.embedding import tsne
from medsynth.metrics.manifold import ManifoldMetric
from medsynth.metrics.reference import cached_features, images_digest, reference_key
from medsynth.metrics.registry import metric_name
from medsynth.metrics.memorization import memorization_audit
from medsynth.metrics.report import curve_series, grid_png, render_html
from medsynth.segmentation.io import load_segmenter
from medsynth.segmentation.models import encoder
from medsynth.v1 import jobs_pb2

FIDELITY_METRICS = ("fid", "kid")
DEFAULT_MAX_SAMPLES = 2000  # images a side when the command leaves max_samples unset (as EvaluationCreate's default)


def evaluate_cohort(spec: jobs_pb2.Evaluate, ctx: JobContext) -> Mapping[str, str]:
    limit = spec.max_samples or DEFAULT_MAX_SAMPLES
    records = ctx.records
    manifest, fake, fake_masks = cohort_arrays(ctx.store, records, spec.cohort_id, limit=limit)
    view, splits = view_splits(ctx.store, spec.dataset, spec.view_id, splits=("train",))
    train = splits["train"]
    if not train:
        raise InvalidInput(f"reference view {spec.view_id} has no training images; need at least 2")
    real, real_masks, real_patients = _subsample(train["images"], train["masks"], train.get("patients"), limit)
    if len(real) < 2:
        raise InvalidInput(f"reference view {spec.view_id} has {len(real)} training images; need at least 2")
    runs = [ctx.store.get_json(finished(records, r, JobKind.train_segmenter).result_keys["metrics"]) for r in spec.segmentation_run_ids]
    ctx.progress(0.1, "fidelity")
    extractors = _extractors(ctx, records, runs)
    digest, reference = images_digest(real), {}

    def real_features(extractor: FeatureExtractor) -> np.ndarray:
        key = reference_key(extractor.name, extractor.preprocessing, digest)
        feats, cached = cached_features(ctx.store, key, lambda: extract_features(torch.from_numpy(np.ascontiguousarray(real)), extractor))
        reference[extractor.name] = {"key": key, "cached": cached}
        return feats

    numbers = evaluation_results(real, fake, runs, extractors, real_patients=real_patients, progress=ctx.progress,
                                 real_features=real_features)
    numbers["reference_features"] = reference
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
    worst = [(p["synthetic"], p["train"]) for p in numbers["memorization"]["worst_pairs"]]
    for pair in numbers["memorization"]["worst_pairs"]:  # the cases behind each pair, for a reader of the report
        pair["synthetic_sample"] = manifest["samples"][pair["synthetic"]].get("index", pair["synthetic"])
        pair["train_patient"] = str(real_patients[pair["train"]]) if real_patients is not None else None
    figures = {
        "synthetic": contact_sheet(fake[:32], fake_masks[:32]),
        "real": contact_sheet(real[:32], real_masks[:32]),
        "memorization": grid_png(np.stack([x for s, t in worst for x in (fake[s], real[t])]), columns=4) if worst else b"",
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
) -> dict[str, Any]:
    """Every number of the report from the arrays: ``fidelity``, ``manifold`` (precision, recall,
    density, coverage), ``diversity``, ``memorization``,
    ``utility``, ``relative_dice`` and ``segmentation_curves``.

    Args:
        real: the real reference images (N, 1, S, S) in [0, 1] (the view's training split).
        fake: the synthetic images, same size.
        runs: the segmentation runs' ``metrics.json`` contents.
        extractors: feature extractors for FID/KID; the first in-domain encoder also gives the
            feature space of the memorization audit and the diversity check.
        real_patients: patient id of each real image: the real-versus-real baseline then splits
            by patient.
        real_features: the real images' features for an extractor (e.g. from the reference cache);
            default: extracted here.
    """
    real_t, fake_t = torch.from_numpy(np.ascontiguousarray(real)), torch.from_numpy(np.ascontiguousarray(fake))
    halves = _halves(len(real), real_patients, seed)
    fidelity, features = [], {}
    for extractor in extractors:
        f_real = real_features(extractor) if real_features is not None else extract_features(real_t, extractor)
        f_fake = extract_features(fake_t, extractor)
        features[extractor.name] = (f_real, f_fake)
        fidelity += _fidelity_rows(extractor, f_real, f_fake, real_patients, seed)
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
    audit = memorization_audit(fake, real, **feats)
    memorization = audit.summary() | {
        "feature_extractor": in_domain.name if in_domain else None,
        "worst_pairs": [{"synthetic": s, "train": t, "distance": d} for s, t, d in audit.worst_pairs(8)],
    }
    utility = [utility_row(run) for run in runs]
    by_source = {row["source"]: row["mean_dice"] for row in utility}
    real_dice, syn_dice = by_source.get("real"), by_source.get("synthetic")
    relative = syn_dice / real_dice if real_dice and syn_dice is not None else math.nan
    return {
        "fidelity": fidelity,
        "manifold": manifold,
        "embedding": embedding,
        "diversity": diversity,
        "utility": utility,
        "relative_dice": relative,
        "memorization": memorization,
        "segmentation_curves": {run["source"]: _curve(run) for run in runs},
    }


def _halves(n: int, patients: Any, seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    try:
        return split_halves(n, patients, seed=seed)
    except InvalidInput:  # fewer than 4 real images: no baseline
        return None


def _fidelity_rows(extractor: FeatureExtractor, f_real: np.ndarray, f_fake: np.ndarray, patients: Any, seed: int) -> list[dict[str, Any]]:
    """One row per metric: the score on all images, the real-versus-real baseline (half A vs half B)
    and the synthetic score at the baseline's counts (half A vs as many synthetic as half B)."""
    scores = fidelity_from_features(f_real, f_fake, seed=seed)
    base = real_baseline(f_real, f_fake, groups=patients, seed=seed) if len(f_real) >= 4 else None
    rows = []
    for metric in FIDELITY_METRICS:
        row = {"metric": metric, "value": scores[metric], "extractor": extractor.name, "preprocessing": extractor.preprocessing,
               "n_real": scores["n_real"], "n_fake": scores["n_fake"]}  # fmt: skip
        if base is None:
            row |= {"real_baseline": None, "baseline_split": "none: fewer than 4 real images"}
        else:
            row |= {
                "real_baseline": base["real_vs_real"][metric], "baseline_split": base["split"],
                "baseline_n_a": base["n_a"], "baseline_n_b": base["n_b"],
                "value_at_baseline_counts": base["synthetic_vs_real"][metric],
                "n_fake_at_baseline_counts": base["synthetic_vs_real"]["n_fake"],
            }  # fmt: skip
        rows.append(row)
    return rows


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


def _extractors(ctx: JobContext, records: JobRecords, runs: list[dict]) -> list[FeatureExtractor]:
    """The in-domain encoder of the real-only segmentation run (no download needed), and ImageNet
    Inception when ``MEDSYNTH_INCEPTION_WEIGHTS`` names a local file."""
    out: list[FeatureExtractor] = []
    real_run = next((r for r in runs if r["source"] == "real"), None)
    if real_run is not None:
        model_key = finished(records, real_run["run_id"], JobKind.train_segmenter).result_keys["model"]
        model = load_segmenter(ctx.store.get_bytes(model_key)).model
        name = f"in-domain {real_run['spec']['model']} encoder (segmentation run {real_run['run_id']}, real train split)"
        out.append(EncoderExtractor(encoder(model), name))
    if ctx.settings.inception_weights is not None:
        out.append(InceptionExtractor(ctx.settings.inception_weights))
    if not out:
        raise InvalidInput("no feature extractor: pass a real-only segmentation run or set MEDSYNTH_INCEPTION_WEIGHTS")
    return out


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
