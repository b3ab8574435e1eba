"""A study's statistics from its runs (per seed, per patient Dice), as results.json holds them and the report
shows them: Wilcoxon per seed and the pooled seeds × patients test against real data only, the Friedman test
with the p that decides named, Spearman's FID-Dice correlation, the warning below five seeds, and a reason
wherever a number is missing (issue 22, item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from medsynth.metrics.statistics import MIN_SEEDS, holm, two_level_paired_test
from medsynth.studies.record import StudyRecord
from medsynth.studies.report import render_study_report
from medsynth.studies.results import _finite, _fid_vs_dice, arm_id, compute_results

FAMILIES = ("joint-gan", "spade", "stylegan2")
PATIENTS = [f"p{i:02d}" for i in range(12)]
SPEC = {"dataset": "hippocampus-msd", "view_id": "v64", "seeds": [0, 1, 2], "cohort_size": 200,
        "families": [{"generator": {"family": f}, "training": {"steps": 600}} for f in FAMILIES],
        "arms": {"synthetic": True, "ratios": [], "augmentation": [False]},
        "segmentation": {"models": ["unet"], "steps": 300, "batch_size": 16}}


def _runs(seeds=(0, 1, 2), failed: tuple[str, int] | None = None) -> dict[str, list[dict]]:
    """Real data only and each family's synthetic-only arm, one run per seed with per-patient Dice."""
    rng = np.random.default_rng(0)
    patient_level = rng.uniform(0.6, 0.9, len(PATIENTS))
    runs: dict[str, list[dict]] = {}
    for family, shift in ((None, 0.0), *zip(FAMILIES, (-0.02, -0.05, -0.10))):
        labels = {"family": family, "arm": "real" if family is None else "synthetic", "model": "unet", "augment": False}
        entries = []
        for seed in seeds:
            entry = {"labels": {**labels, "seed": seed}, "state": "succeeded", "run_id": f"run-{family}-{seed}", "error": None}
            if (family, seed) == failed:
                entry.update(state="failed", error="out of memory")
            else:
                dice = np.clip(patient_level + shift + rng.normal(0, 0.01) + rng.normal(0, 0.02, len(PATIENTS)), 0, 1)
                entry["dice"] = dict(zip(PATIENTS, dice.tolist()))
                entry["hd95"] = dict(zip(PATIENTS, (10 * (1 - dice)).tolist()))
            entries.append(entry)
        runs[arm_id(labels)] = entries
    return runs


def _results(runs: dict[str, list[dict]]) -> dict:
    record = StudyRecord(study_id="study-0123456789abcdef", name="small", spec=SPEC, nodes={})  # no evaluations: no store read
    return _finite(compute_results(record, None, None, runs))


def test_each_arm_against_real_data_per_seed_and_pooled() -> None:
    runs = _runs()
    results = _results(runs)
    json.dumps(results, allow_nan=False)  # results.json: plain JSON
    (group,) = results["comparisons"]
    real = arm_id({"family": None, "arm": "real", "model": "unet", "augment": False})
    assert group["against"] == real and len(group["rows"]) == 3
    for row in group["rows"]:
        assert row["seeds"] == [0, 1, 2] and row["n_seeds"] == 3 and row["n"] == len(PATIENTS)
        a = np.array([[e["dice"][p] for p in PATIENTS] for e in runs[row["a"]]])
        b = np.array([[e["dice"][p] for p in PATIENTS] for e in runs[real]])
        for i, test in enumerate(row["per_seed"]):  # each seed on its own: scipy's exact Wilcoxon
            assert test["seed"] == i and test["p"] == pytest.approx(stats.wilcoxon(a[i], b[i], method="exact").pvalue)
        assert row["pooled"]["p"] == pytest.approx(two_level_paired_test(a - b)["p"])
        assert row["decided_by"].startswith("pooled") and row["p"] == row["pooled"]["p"]
        assert any(f"fewer than {MIN_SEEDS}" in w for w in row["warnings"])
    assert [r["p_holm"] for r in group["rows"]] == pytest.approx(holm([r["p"] for r in group["rows"]]))


def test_a_failed_seed_leaves_the_seeds_both_arms_ran() -> None:
    results = _results(_runs(failed=("spade", 1)))
    rows = {r["a"]: r for r in results["comparisons"][0]["rows"]}
    spade = rows[arm_id({"family": "spade", "arm": "synthetic", "model": "unet", "augment": False})]
    assert spade["seeds"] == [0, 2] and [t["seed"] for t in spade["per_seed"]] == [0, 2] and spade["pooled"]["n_seeds"] == 2


def test_friedman_over_three_seeds_decides_exactly_and_warns() -> None:
    friedman = _results(_runs())["friedman"]
    assert friedman["n_blocks"] == 3 and friedman["decided_by"] == "exact" and friedman["p"] == friedman["p_exact"]
    assert {"p_chi2", "p_iman_davenport", "iman_davenport_f"} <= set(friedman)
    assert friedman["average_ranks"]["joint-gan"] < friedman["average_ranks"]["stylegan2"]
    assert any("fewer than 5" in w for w in friedman["warnings"])


def test_too_few_cases_give_reasons_not_numbers_in_results_and_report() -> None:
    # one seed: each comparison rests on that seed's Wilcoxon (12 patients: it can decide) with a warning;
    # the Friedman test over one block cannot decide; Spearman over three generators cannot either
    runs = _runs(seeds=(0,))
    results = _results(runs)
    row = results["comparisons"][0]["rows"][0]
    assert row["decided_by"] == "Wilcoxon signed-rank, seed 0 only" and row["pooled"]["p"] is None
    assert any("conditional on that training run" in w for w in row["warnings"])
    friedman = results["friedman"]
    assert friedman["p"] is None and "cannot decide" in friedman["refused"]
    generators = [{"family": f, "seed": 0, "fid": fid} for f, fid in zip(FAMILIES, (0.1, 0.2, 0.3))]
    results["fid_vs_dice"] = _finite(_fid_vs_dice(generators, runs))
    corr = results["fid_vs_dice"]
    assert corr["n"] == 3 and corr["rho"] == pytest.approx(-1.0) and corr["p"] is None and "0.333" in corr["refused"]
    html = render_study_report(results)
    for text in ("Decided by", "Wilcoxon signed-rank, seed 0 only", "conditional on that training run", "No p-value decides",
                 "cannot decide", "no p-value: n = 3: the smallest two-sided p an exact test can give is 0.333",
                 "Spearman ρ = -1.00", "fewer than 5", "Iman–Davenport", "– (1 seed(s): the spread between training runs"):
        assert text in html, text
    assert "p = 0.0000" not in html and "p = 0.000," not in html


def test_the_report_shows_which_test_decides() -> None:
    html = render_study_report(_results(_runs()))
    for text in ("Wilcoxon p per seed", "Pooled p (seeds × patients)", "pooled two-level test", "df)", "exact permutation",
                 "decides", "Friedman χ² (approximation)", "Iman–Davenport F (2, 4 df)"):
        assert text in html, text


def test_how_each_run_stopped_is_in_the_results_and_the_csv() -> None:
    from medsynth.studies.results import results_csv

    runs = _runs()
    for k, entry in enumerate(runs[arm_id({"family": None, "arm": "real", "model": "unet", "augment": False})]):
        entry["stopping"] = {"stopped_step": 1200 + 100 * k, "best_step": 700 + 100 * k, "stop_reason": "plateau"}
    real = next(a for a in _results(runs)["arms"] if a["arm"] == "real")
    assert [(s["stopped_step"], s["best_step"], s["stop_reason"]) for s in real["per_seed"]] == [
        (1200, 700, "plateau"), (1300, 800, "plateau"), (1400, 900, "plateau")]
    rows = results_csv(runs).splitlines()
    assert rows[0].endswith(",stopped_step,best_step,stop_reason")
    assert any(r.endswith(",1200,700,plateau") for r in rows) and any(r.endswith(",,,") for r in rows)  # runs without it: blank


def test_the_results_name_the_extractor_of_every_evaluation(tmp_path) -> None:
    """Each generator row carries its evaluation's reference run and hash and the FID at the baseline's n;
    ``fid_extractor`` says whether one extractor measured them all (a study recorded now: it did)."""
    from medsynth.bus.messages import JobKind
    from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
    from medsynth.store.local import LocalStore
    from medsynth.studies.record import NodeState

    store = LocalStore(tmp_path / "store")
    records = JobRecords(store)
    nodes = {}
    for family in FAMILIES[:2]:
        for seed in (0, 1):
            job_id = new_job_id(JobKind.evaluate)
            store.put_json(f"evaluations/{job_id}/report.json", {
                "generator_id": "g", "cohort_id": "c",
                "fidelity": [{"metric": "fid", "value": 0.3, "extractor": "enc", "n_real": 100, "n_fake": 80, "real_baseline": 0.05,
                              "baseline_n": 60, "value_at_baseline_counts": 0.32}],
                "reference_extractor": {"run_id": "train-segmenter-ref", "sha256": "ab" * 32}})
            records.put(JobRecord(job_id=job_id, kind=JobKind.evaluate, spec={}, state=JobState.succeeded,
                                  result_keys={"report_json": f"evaluations/{job_id}/report.json"}))
            nodes[f"evaluate/{family}/s{seed}"] = NodeState(kind="evaluate", key=job_id, labels={"family": family, "seed": seed},
                                                            state="succeeded", job_id=job_id)
    record = StudyRecord(study_id="study-0123456789abcdef", name="x", spec=SPEC | {"fid_extractor": "study"}, nodes=nodes)
    results = compute_results(record, store, records, _runs())
    assert {(g["extractor_run_id"], g["extractor_sha256"], g["fid_at_baseline_n"], g["baseline_n"]) for g in results["generators"]} == {
        ("train-segmenter-ref", "ab" * 32, 0.32, 60)}
    assert results["fid_extractor"] == {"rule": "study", "extractors": [{"run_id": "train-segmenter-ref", "sha256": "ab" * 32}],
                                        "comparable": True}
    assert _results(_runs())["fid_extractor"]["rule"] == "per-seed"  # SPEC as recorded before the field


def test_the_real_only_baseline_comes_first_in_results_and_report() -> None:
    """Arm ids sort "joint-gan …" < "real …" < "spade …": the baseline every other arm is read against
    used to land in the middle of the table (issue 26, item 5)."""
    results = _results(_runs())
    assert [a["arm"] for a in results["arms"]] == ["real", "synthetic", "synthetic", "synthetic"]
    assert [a["family"] for a in results["arms"][1:]] == list(FAMILIES)  # the rest keep their order
    html = render_study_report(results)
    arms_table = html.split("<h2>Arms</h2>")[1].split("</table>")[0]
    assert arms_table.index("real · unet") < arms_table.index("joint-gan · synthetic")


def test_each_generator_row_keeps_the_diversity_check_and_the_report_flags_collapse() -> None:
    from medsynth.studies.results import _diversity

    check = {"pixel": {"ratio": 0.9, "real_baseline_ratio": 1.01}, "feature": {"ratio": 0.31, "real_baseline_ratio": 0.98},
             "mode_collapse": True, "warning": "possible mode collapse: the cohort is far less diverse than the real data"}
    row = _diversity(check)
    assert row == {"diversity_ratio": 0.31, "diversity_real_ratio": 0.98, "diversity_space": "feature", "mode_collapse": True,
                   "diversity_warning": check["warning"]}  # the extractor's space decides where there is one
    assert _diversity({"pixel": {"ratio": 0.9, "real_baseline_ratio": None}, "feature": None, "mode_collapse": False,
                       "warning": None})["diversity_space"] == "pixel"
    assert set(_diversity(None).values()) == {None}  # evaluations without the check: nothing invented
    results = _results(_runs())
    results["generators"] = [{"family": "spade", "seed": 0, "fid": 0.2, "fid_real_baseline": 0.01, "kid": 0.001, "memorized_fraction": 0.0,
                              "extractor": "enc", "n_real": 100, "n_fake": 100, **row}]
    html = render_study_report(results)
    assert "Diversity (real halves)" in html and "0.31 (0.98) collapse?" in html
    assert "spade seed 0: possible mode collapse" in html


def test_fid_against_dice_keeps_its_points_and_the_report_draws_them() -> None:
    runs = _runs()
    generators = [{"family": f, "seed": s, "fid": 0.1 * (i + 1) + 0.01 * s} for i, f in enumerate(FAMILIES) for s in (0, 1, 2)]
    corr = _fid_vs_dice(generators, runs)
    assert len(corr["points"]) == 9 and {p["family"] for p in corr["points"]} == set(FAMILIES)
    spade0 = next(p for p in corr["points"] if p["family"] == "spade" and p["seed"] == 0)
    dice = np.mean(list(next(e for e in runs[arm_id({"family": "spade", "arm": "synthetic", "model": "unet", "augment": False})]
                             if e["labels"]["seed"] == 0)["dice"].values()))
    assert spade0["fid"] == pytest.approx(0.2) and spade0["dice"] == pytest.approx(dice)
    results = _results(runs)
    results["fid_vs_dice"] = corr
    html = render_study_report(results)
    figure = html.split('aria-label="synthetic-only Dice against FID')[1].split("</svg>")[0]
    assert figure.count("<circle") == 9 and "spade seed 0: FID 0.2, Dice" in figure
