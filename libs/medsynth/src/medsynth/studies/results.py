"""A finished study's numbers: per arm, Dice and HD95 over test patients and seeds with bootstrap
intervals and relative Dice; paired tests of each arm against real data only (Wilcoxon per seed and a
pooled test over seeds × patients); the Friedman test (exact where it can be) with Nemenyi's critical
difference across families; the rank correlation of FID and Dice across generators. A test that cannot
decide on the cases it has says why instead of giving a number, and a result resting on fewer than
five seeds carries a warning. Written as ``results.json``, ``results.csv`` (one row per arm and seed)
and the report."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

from medsynth.studies.record import StudyRecord
from medsynth.core.clock import utcnow
from medsynth.core.errors import InvalidInput
from medsynth.jobs.records import JobRecords
from medsynth.metrics.statistics import (
    bootstrap_over_seeds_and_patients,
    friedman_nemenyi,
    holm,
    paired_over_seeds,
    rank_correlation,
    seed_warning,
)
from medsynth.store import ObjectStore

CSV_FIELDS = ["arm_id", "family", "arm", "ratio", "synthetic_patients", "model", "augment", "seed", "state", "mean_dice", "mean_hd95", "n_patients",
              "run_id", "stopped_step", "best_step", "stop_reason"]


def arm_id(labels: dict[str, Any]) -> str:
    """``<family or real> · <arm> · <model> · aug on|off``: one arm of the grid across its seeds."""
    return " · ".join([labels.get("family") or "real", labels["arm"], labels["model"], "aug on" if labels["augment"] else "aug off"])


def _case_hd95(case: dict[str, Any]) -> float:
    values = [v for v in (case.get("hd95") or {}).values() if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _runs(record: StudyRecord, store: ObjectStore, records: JobRecords) -> dict[str, list[dict[str, Any]]]:
    """arm id → one entry per seed: its labels, state, and per-patient scores when it succeeded."""
    arms: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for state in record.nodes.values():
        if state.kind != "train-segmenter":
            continue
        entry: dict[str, Any] = {"labels": state.labels, "state": state.state, "run_id": state.job_id, "error": state.error}
        if state.state == "succeeded":
            metrics = store.get_json(records.get(state.job_id).result_keys["metrics"])
            cases = metrics["test"]["per_case"]
            entry["dice"] = {str(c["patient"]): float(c["mean_dice"]) for c in cases}
            entry["hd95"] = {str(c["patient"]): _case_hd95(c) for c in cases}
            entry["hd95_unit"] = metrics["test"].get("hd95_unit") or metrics.get("hd95_unit")
            # how the run stopped (runs from before early stopping: all their steps, reason unrecorded)
            entry["stopping"] = {"stopped_step": metrics.get("stopped_step"), "best_step": metrics.get("best_step"),
                                 "stop_reason": metrics.get("stop_reason")}
        arms[arm_id(state.labels)].append(entry)
    return arms


def _table(entries: list[dict[str, Any]], metric: str, patients: list[str]) -> np.ndarray:
    done = [e for e in entries if metric in e]
    return np.array([[e[metric].get(p, np.nan) for p in patients] for e in done]) if done else np.empty((0, len(patients)))


def _generators(record: StudyRecord, store: ObjectStore, records: JobRecords) -> list[dict[str, Any]]:
    out = []
    for node_id, state in record.nodes.items():
        if state.kind != "evaluate" or state.state != "succeeded":
            continue
        report = store.get_json(records.get(state.job_id).result_keys["report_json"])
        fid = next((r for r in report.get("fidelity", []) if r["metric"] == "fid"), None)
        kid = next((r for r in report.get("fidelity", []) if r["metric"] == "kid"), None)
        reference = report.get("reference_extractor") or {}  # evaluations from before recipes: none recorded
        out.append({"family": state.labels["family"], "seed": state.labels["seed"], "evaluation_id": state.job_id,
                    "extractor_run_id": reference.get("run_id"), "extractor_sha256": reference.get("sha256"),
                    "fid_at_baseline_n": fid and fid.get("value_at_baseline_counts"), "baseline_n": fid and fid.get("baseline_n"),
                    "generator_id": report.get("generator_id"), "cohort_id": report.get("cohort_id"),
                    "fid": fid and fid["value"], "fid_real_baseline": fid and fid.get("real_baseline"),
                    "kid": kid and kid["value"], "extractor": fid and fid["extractor"],
                    "n_real": fid and fid["n_real"], "n_fake": fid and fid["n_fake"],
                    "memorized_fraction": (report.get("memorization") or {}).get("fraction_flagged"),
                    **_diversity(report.get("diversity")),
                    "figures": report.get("figures", {}),
                    "embedding": report.get("embedding"),
                    "closest_pairs": [{k: p.get(k) for k in ("synthetic_sample", "train_patient", "distance")}
                                      for p in (report.get("memorization") or {}).get("worst_pairs", [])[:4]],
                    **{r["metric"]: r["value"] for r in report.get("manifold", []) if fid and r["extractor"] == fid["extractor"]}})
    return sorted(out, key=lambda g: (g["family"], g["seed"]))


def _diversity(check: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation's mode-collapse check, as a generator row keeps it: the synthetic/real mean pairwise
    distance ratio in the extractor's feature space (pixel space where it has none), the real data's own
    half-against-half ratio beside it, and the warning; all None for an evaluation without the check."""
    space = (check or {}).get("feature") or (check or {}).get("pixel") or {}
    return {"diversity_ratio": space.get("ratio"), "diversity_real_ratio": space.get("real_baseline_ratio"),
            "diversity_space": ("feature" if (check or {}).get("feature") else "pixel") if space else None,
            "mode_collapse": (check or {}).get("mode_collapse"), "diversity_warning": (check or {}).get("warning")}


def compute_results(record: StudyRecord, store: ObjectStore, records: JobRecords, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``runs``: :func:`_runs` of the record (read once, for these numbers and the CSV)."""
    patients = sorted({p for entries in runs.values() for e in entries for p in e.get("dice", {})})
    arms, failed = [], []
    for aid, entries in sorted(runs.items(), key=lambda item: (item[1][0]["labels"]["arm"] != "real", item[0])):  # the baseline first
        labels = dict(entries[0]["labels"])
        labels.pop("seed", None)
        bad = [{"seed": e["labels"]["seed"], "state": e["state"], "error": e["error"]} for e in entries if e["state"] != "succeeded"]
        row: dict[str, Any] = {"arm_id": aid, **labels, "seeds_succeeded": len(entries) - len(bad), "seeds_failed": bad}
        dice = _table(entries, "dice", patients)
        if len(dice):
            row["dice"] = bootstrap_over_seeds_and_patients(dice)
            row["hd95"] = bootstrap_over_seeds_and_patients(_table(entries, "hd95", patients))
            row["hd95_unit"] = next((e.get("hd95_unit") for e in entries if "dice" in e), None)
            row["per_seed"] = [{"seed": e["labels"]["seed"], "run_id": e["run_id"], "mean_dice": float(np.nanmean(list(e["dice"].values()))),
                                **e.get("stopping", {})} for e in entries if "dice" in e]
            row["per_patient_dice"] = dict(zip(patients, np.nanmean(dice, axis=0).tolist()))
        else:
            failed.append({"arm_id": aid, "failures": bad})
        arms.append(row)
    by_id = {a["arm_id"]: a for a in arms}
    for arm in arms:  # relative Dice: against real data only with the same segmenter and augmentation
        base = by_id.get(arm_id({"family": None, "arm": "real", "model": arm["model"], "augment": arm["augment"]}))
        if "dice" in arm and base is not None and "dice" in base and base["dice"]["mean"] > 0:
            arm["relative_dice"] = arm["dice"]["mean"] / base["dice"]["mean"]
    generators = _generators(record, store, records)
    return {
        "study_id": record.study_id, "name": record.name, "spec": record.spec, "computed_at": utcnow().isoformat(),
        "test_patients": patients, "arms": arms, "failed_arms": failed,
        "comparisons": _comparisons(arms, runs, patients), "friedman": _friedman(arms, runs), "generators": generators,
        "fid_vs_dice": _fid_vs_dice(generators, runs),
        "fid_extractor": fid_extractor(record.spec.get("fid_extractor", "per-seed"), generators),  # before: per seed
    }


def fid_extractor(rule: str, generators: list[dict[str, Any]]) -> dict[str, Any]:
    """Which encoder(s) measured the study's FIDs: ``rule`` ("study": one for every family and seed;
    "per-seed": each seed's own, studies recorded before), and the distinct (run, SHA-256) pairs the
    evaluations recorded. ``comparable`` is whether every FID of the study went through one extractor."""
    used = sorted({(g.get("extractor_run_id"), g.get("extractor_sha256")) for g in generators}, key=str)
    return {"rule": rule, "extractors": [{"run_id": r, "sha256": h} for r, h in used],
            "comparable": len(used) == 1 and used[0][1] is not None}


def _seed_table(entries: list[dict[str, Any]], seeds: list[Any], patients: list[str]) -> np.ndarray:
    """Per-patient Dice of the given seeds' runs, one row a seed (NaN where a patient has no score)."""
    by_seed = {e["labels"]["seed"]: e for e in entries if "dice" in e}
    return np.array([[by_seed[s]["dice"].get(p, np.nan) for p in patients] for s in seeds], dtype=np.float64).reshape(len(seeds), len(patients))


def _comparisons(arms: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]], patients: list[str]) -> list[dict[str, Any]]:
    """Per segmenter model and augmentation: each arm against real data only, on the seeds both ran and
    the test patients: a Wilcoxon signed-rank test per seed, and the pooled two-level test that counts the
    spread between training runs (:func:`~medsynth.metrics.statistics.paired_over_seeds`); the p that
    decides is Holm-corrected within the group (a test that refused stays out of the family)."""
    out = []
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for arm in arms:
        if "per_patient_dice" in arm:
            groups[(arm["model"], arm["augment"])].append(arm)
    for (model, augment), members in sorted(groups.items()):
        real = next((a for a in members if a["arm"] == "real"), None)
        others = [a for a in members if a is not real]
        if real is None or not others:
            out.append({"model": model, "augment": augment, "skipped": "needs real data only and one other arm scored"})
            continue
        real_seeds = {e["labels"]["seed"] for e in runs[real["arm_id"]] if "dice" in e}
        rows = []
        for other in others:
            entries = runs[other["arm_id"]]
            seeds = sorted(real_seeds & {e["labels"]["seed"] for e in entries if "dice" in e}, key=str)
            test = paired_over_seeds(_seed_table(entries, seeds, patients), _seed_table(runs[real["arm_id"]], seeds, patients), seeds)
            rows.append({"a": other["arm_id"], "b": real["arm_id"], "seeds": seeds, **test})
        for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
            row["p_holm"] = adjusted
        out.append({"model": model, "augment": augment, "against": real["arm_id"], "rows": rows})
    return out


def _synthetic_scores(runs: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, int, str, bool], float]:
    """(family, seed, model, augment) → mean Dice of its synthetic-only run."""
    out = {}
    for entries in runs.values():
        for e in entries:
            lab = e["labels"]
            if lab["arm"] == "synthetic" and "dice" in e:
                out[(lab["family"], lab["seed"], lab["model"], lab["augment"])] = float(np.nanmean(list(e["dice"].values())))
    return out


def _friedman(arms: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Families ranked by synthetic-only Dice within each (seed, model, augmentation) block."""
    scores = _synthetic_scores(runs)
    families = sorted({k[0] for k in scores})
    blocks = sorted({k[1:] for k in scores}, key=str)
    complete = [b for b in blocks if all((f, *b) in scores for f in families)]
    if len(families) < 3 or not complete:
        return {"skipped": f"the Friedman test needs 3 families scored in the same blocks (seed × model × augmentation); "
                           f"this study has {len(families)} families and {len(complete)} complete blocks"}
    table = np.array([[scores[(f, *b)] for f in families] for b in complete])
    try:
        result = friedman_nemenyi(table, families)
    except InvalidInput as exc:
        return {"skipped": str(exc)}
    warning = seed_warning(len({b[0] for b in complete}), "the ranking of the families")
    return {"score": "synthetic-only mean Dice", "blocks": [list(b) for b in complete], **result, "warnings": [warning] if warning else []}


def _fid_vs_dice(generators: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    scores = _synthetic_scores(runs)
    pairs = []
    for g in generators:
        dice = [v for (f, s, _, _), v in scores.items() if f == g["family"] and s == g["seed"]]
        if g["fid"] is not None and dice:
            pairs.append((g["fid"], float(np.mean(dice)), g["seed"], g["family"]))
    if not pairs:
        return {"skipped": "needs generators with FID and synthetic-only Dice, has none"}
    fid, dice, seeds, families = zip(*pairs)
    warning = seed_warning(len(set(seeds)), "the FID–Dice correlation")
    return {"x": "FID (lower is better)", "y": "synthetic-only mean Dice", **rank_correlation(fid, dice),
            "reading": "a negative rho means lower FID went with higher Dice; near zero, FID did not predict usefulness",
            "points": [{"family": f, "seed": s, "fid": x, "dice": y} for x, y, s, f in pairs],
            "warnings": [warning] if warning else []}


def results_csv(runs: dict[str, list[dict[str, Any]]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS)
    writer.writeheader()
    for aid, entries in sorted(runs.items()):
        for e in sorted(entries, key=lambda e: e["labels"]["seed"]):
            lab = e["labels"]
            writer.writerow({"arm_id": aid, "family": lab.get("family") or "", "arm": lab["arm"], "ratio": lab.get("ratio") or "",
                             "synthetic_patients": lab.get("synthetic_patients") or "",
                             "model": lab["model"], "augment": lab["augment"], "seed": lab["seed"], "state": e["state"],
                             "mean_dice": f"{np.nanmean(list(e['dice'].values())):.6f}" if "dice" in e else "",
                             "mean_hd95": f"{np.nanmean(list(e['hd95'].values())):.6f}" if "hd95" in e else "",
                             "n_patients": len(e.get("dice", {})), "run_id": e["run_id"] or "",
                             **{k: "" if v is None else v for k, v in e.get("stopping", {}).items()}})
    return out.getvalue()


def load_figures(results: dict[str, Any], store: ObjectStore) -> dict[str, dict[str, bytes]]:
    """Per family, the first seed's evaluation figures (samples with masks, closest pairs) as PNG bytes."""
    out: dict[str, dict[str, bytes]] = {}
    for g in results.get("generators", []):
        if g["family"] in out:
            continue
        figures = {name: store.get_bytes(key) for name, key in (g.get("figures") or {}).items()
                   if name in ("synthetic", "memorization") and store.exists(key)}
        if figures:
            out[g["family"]] = figures
    return out


def _finite(value: Any) -> Any:
    """NaN and infinities as null: results.json is read by browsers and other languages too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_results(record: StudyRecord, store: ObjectStore, records: JobRecords) -> dict[str, str]:
    from medsynth.studies.report import render_study_report

    runs = _runs(record, store, records)  # every segmentation run's metrics, read once
    results = _finite(compute_results(record, store, records, runs))
    prefix = f"studies/{record.study_id}/"
    keys = {"json": f"{prefix}results.json", "csv": f"{prefix}results.csv", "html": f"{prefix}report.html"}
    store.put_json(keys["json"], results)
    store.put_bytes(keys["csv"], results_csv(runs).encode(), content_type="text/csv")
    store.put_bytes(keys["html"], render_study_report(results, load_figures(results, store)).encode(), content_type="text/html")
    return keys
