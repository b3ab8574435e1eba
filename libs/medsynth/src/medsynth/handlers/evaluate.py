"""evaluate: how faithful (FID/KID with named extractors), useful (segmentation utility) and safe
(memorization audit) a cohort is, as an HTML report and the same numbers as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medsynth.core.errors import InvalidInput
from medsynth.handlers.artifacts import cohort_arrays, generator_of, view_splits
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecords
from medsynth.jobs.worker import JobContext
from medsynth.messages import JobKind
from medsynth.metrics.fidelity import EncoderExtractor, FeatureExtractor, InceptionExtractor, extract_features, fidelity_scores
from medsynth.metrics.memorization import memorization_audit
from medsynth.report import grid_png, render_html
from medsynth.sampling.cohort import contact_sheet
from medsynth.segmentation.io import load_segmenter
from medsynth.segmentation.models import encoder
from medsynth.v1 import jobs_pb2


def evaluate_cohort(spec: jobs_pb2.Evaluate, ctx: JobContext) -> Mapping[str, str]:
    options = json.loads(spec.config_json or "{}")
    records = JobRecords(ctx.store)
    manifest, fake, fake_masks = cohort_arrays(ctx.store, records, spec.cohort_id, limit=options.get("max_samples"))
    view, splits = view_splits(ctx.store, spec.dataset, spec.view_id, splits=("train",))
    real, real_masks = _subsample(splits["train"]["images"], splits["train"]["masks"], options.get("max_samples", 2000))
    if len(real) < 2:
        raise InvalidInput(f"reference view {spec.view_id} has {len(real)} training images; need at least 2")
    runs = [ctx.store.get_json(finished(records, r, JobKind.train_segmenter).result_keys["metrics"]) for r in spec.segmentation_run_ids]
    ctx.progress(0.1, "fidelity")

    extractors = _extractors(ctx, records, runs)
    fidelity = []
    for extractor in extractors:
        scores = fidelity_scores(torch.from_numpy(real), torch.from_numpy(fake), extractor)
        fidelity += [{"metric": m, "value": scores[m], "extractor": scores["extractor"], "preprocessing": scores["preprocessing"],
                      "n_real": scores["n_real"], "n_fake": scores["n_fake"]} for m in ("fid", "kid")]  # fmt: skip
    ctx.progress(0.5, "memorization audit")
    in_domain = extractors[0] if extractors and isinstance(extractors[0], EncoderExtractor) else None
    feats = {}
    if in_domain is not None:
        feats = {"features_synth": extract_features(torch.from_numpy(fake), in_domain),
                 "features_train": extract_features(torch.from_numpy(real), in_domain)}  # fmt: skip
    audit = memorization_audit(fake, real, **feats)
    worst = audit.worst_pairs(8)
    memorization = audit.summary() | {"feature_extractor": in_domain.name if in_domain else None,
                                      "worst_pairs": [{"synthetic": s, "train": t, "distance": d} for s, t, d in worst]}  # fmt: skip

    utility = [_utility_row(run) for run in runs]
    by_source = {row["source"]: row["mean_dice"] for row in utility}
    relative = by_source["synthetic"] / by_source["real"] if {"real", "synthetic"} <= by_source.keys() and by_source["real"] else math.nan
    generator = ctx.store.get_json(generator_of(records, manifest["provenance"]["generator_id"]).result_keys["generator"])
    results: dict[str, Any] = {
        "evaluation_id": ctx.job_id, "cohort_id": spec.cohort_id, "generator_id": generator["generator_id"],
        "dataset": spec.dataset, "dataset_version": view["dataset_version"], "view_id": spec.view_id,
        "fidelity": fidelity, "utility": utility, "relative_dice": relative, "memorization": memorization,
        "generator": {"config": generator["config"], "metrics": generator["metrics"]},
    }  # fmt: skip
    ctx.progress(0.9, "report")
    curves = ctx.store.get_json(generator["curves_key"])
    figures = {
        "synthetic": contact_sheet(fake[:32], fake_masks[:32]),
        "real": contact_sheet(real[:32], real_masks[:32]),
        "memorization": grid_png(np.stack([x for s, t, _ in worst for x in (fake[s], real[t])]), columns=4) if worst else b"",
    }
    html = render_html(results, {k: v for k, v in figures.items() if v},
                       {name: list(zip(curves["step"], curves[name])) for name in ("loss_d", "loss_g") if name in curves})  # fmt: skip
    prefix = f"evaluations/{ctx.job_id}/"
    ctx.store.put_json(f"{prefix}report.json", results)
    ctx.store.put_bytes(f"{prefix}report.html", html.encode(), content_type="text/html")
    return {"report_json": f"{prefix}report.json", "report_html": f"{prefix}report.html"}


def _subsample(images: np.ndarray, masks: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if len(images) <= limit:
        return images, masks
    keep = np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False))
    return images[keep], masks[keep]


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


def _utility_row(run: dict) -> dict[str, Any]:
    test = run["test"]
    hd95 = [v["mean"] for v in test["hd95"].values() if v.get("mean") is not None]
    return {
        "source": run["source"], "run_id": run["run_id"], "mean_dice": test["mean_dice"]["mean"],
        "dice_ci_low": test["mean_dice"]["ci_low"], "dice_ci_high": test["mean_dice"]["ci_high"],
        "mean_hd95": float(np.mean(hd95)) if hd95 else math.nan, "n_cases": test["n_cases"],
    }  # fmt: skip
