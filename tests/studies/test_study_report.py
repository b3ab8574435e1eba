"""The study report from a results document: what a data team reads, checked as HTML and in a real
browser (Debian's Chromium driven by Playwright; the screenshot is kept under test-artifacts/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsynth.studies.report import render_study_report
from medsynth.metrics.statistics import bootstrap_over_seeds_and_patients, friedman_nemenyi, holm, paired_over_seeds, rank_correlation

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
REFERENCE_RUN, REFERENCE_SHA = "train-segmenter-5f0e4c2a9b7d1e63", "c0ffee" * 10 + "beef"
FAMILIES = ("joint-gan", "spade", "stylegan2")


def _arm(family, arm, rng, level, **labels):
    table = np.clip(rng.normal(level, 0.05, (3, 12)), 0, 1)
    return {"arm_id": f"{family or 'real'} · {arm} · unet · aug off", "family": family, "arm": arm, "model": "unet",
            "augment": False, "seeds_succeeded": 3, "seeds_failed": [], "dice": bootstrap_over_seeds_and_patients(table),
            "hd95": bootstrap_over_seeds_and_patients(table * 10), "hd95_unit": "mm", **labels}


@pytest.fixture(scope="module")
def results() -> dict:
    rng = np.random.default_rng(0)
    arms = [_arm(None, "real", rng, 0.80)]
    for i, family in enumerate(FAMILIES):
        arms += [_arm(family, "synthetic", rng, 0.70 - 0.1 * i), _arm(family, "mixed 0.5", rng, 0.78, ratio=0.5),
                 _arm(family, "+5 patients", rng, 0.81, synthetic_patients=5), _arm(family, "+20 patients", rng, 0.82, synthetic_patients=20)]
    for arm in arms:
        arm["relative_dice"] = arm["dice"]["mean"] / arms[0]["dice"]["mean"]
    scores = np.array([[0.7 + rng.normal(0, 0.01) - 0.1 * i for i in range(3)] for _ in range(3)])
    real_dice = rng.uniform(0.6, 0.9, (3, 12))  # per seed and test patient: Wilcoxon per seed, the pooled test
    rows = [{"a": a["arm_id"], "b": arms[0]["arm_id"], "seeds": [0, 1, 2],
             **paired_over_seeds(real_dice + rng.normal(-0.05, 0.03, (3, 12)), real_dice, [0, 1, 2])} for a in arms[1:]]
    rows[-1] = {**rows[-1], **paired_over_seeds(real_dice[:1, :5] + 0.01, real_dice[:1, :5], [0])}  # one that cannot decide
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    spec = {"dataset": "hippocampus-msd", "view_id": "v64", "seeds": [0, 1, 2], "cohort_size": 200,
            "families": [{"generator": {"family": f}, "training": {"steps": 600}} for f in FAMILIES],
            "arms": {"synthetic": True, "ratios": [0.5], "synthetic_patients": [5, 20], "augmentation": [False]},
            "segmentation": {"models": ["unet"], "steps": 300, "batch_size": 16}}
    return {"study_id": "study-0123456789abcdef", "name": "hippocampus <grid>", "spec": spec, "computed_at": "2026-12-04T18:00:00",
            "test_patients": [str(i) for i in range(12)], "arms": arms,
            "failed_arms": [{"arm_id": "stylegan2 · mixed 0.25 · unet · aug off", "failures": [{"seed": 0, "state": "failed", "error": "out of memory"}]}],
            "comparisons": [{"model": "unet", "augment": False, "against": arms[0]["arm_id"], "rows": rows}],
            "friedman": {"score": "synthetic-only mean Dice", **friedman_nemenyi(scores, list(FAMILIES))},
            "generators": [{"family": f, "seed": s, "fid": 0.2, "fid_real_baseline": 0.01, "kid": 0.001, "precision": 0.7, "recall": 0.5,
                            "density": 0.9, "coverage": 0.6, "memorized_fraction": 0.0, "extractor": "in-domain unet encoder",
                            "n_real": 200, "n_fake": 200, "fid_at_baseline_n": 0.234, "baseline_n": 150,
                            "extractor_run_id": REFERENCE_RUN, "extractor_sha256": REFERENCE_SHA} for f in FAMILIES for s in (0, 1, 2)],
            "fid_extractor": {"rule": "study", "extractors": [{"run_id": REFERENCE_RUN, "sha256": REFERENCE_SHA}], "comparable": True},
            "fid_vs_dice": {"x": "FID", "y": "Dice", **rank_correlation([0.2, 0.1, 0.4, 0.3, 0.5, 0.9, 0.7, 0.8, 0.6], [0.5, 0.4, 0.45, 0.6, 0.3, 0.4, 0.35, 0.5, 0.55]),
                            "reading": "near zero: FID did not predict usefulness"}}


def test_the_report_explains_shows_settings_and_warns(results: dict) -> None:
    html = render_study_report(results)
    for text in ("What the numbers mean", "Relative Dice", "Friedman", "CD = ", "Too small for conclusions", "300 steps",
                 "Arms with no result", "out of memory", "real + 20 synthetic patients", "hippocampus &lt;grid&gt;",
                 "Spearman ρ = -0.18 (p = 0.6361, exact permutation (362880 pairings); n = 9)", "Coverage", "seed 001", "Wilcoxon p per seed", "pooled two-level test", "exact permutation",
                 "decides", "fewer than 5", "cannot decide"):
        assert text in html, text
    assert html.count("<svg") == 3  # Dice vs share, Dice vs synthetic patients, the CD diagram
    assert "<grid>" not in html  # names are escaped


def test_the_report_names_the_one_extractor_of_its_fids(results: dict) -> None:
    """One line under the generators table: the run whose encoder measured every FID, and its hash; the
    FID at the baseline's n beside the held-out baseline."""
    html = render_study_report(results)
    assert (f"<p>Extractor of every FID, KID and precision/recall above: the encoder of real-only run {REFERENCE_RUN} "
            f"(SHA-256 {REFERENCE_SHA}).</p>") in html
    assert "<th>FID at baseline n</th>" in html and "<td class=n>0.234</td><td class=n>0.010 (n 150)</td>" in html


def test_the_report_warns_when_a_study_recorded_before_measured_each_seed_with_its_own_extractor(results: dict) -> None:
    from medsynth.studies.results import fid_extractor

    generators = [{k: v for k, v in g.items() if k not in ("fid_at_baseline_n", "baseline_n")}
                  | {"extractor_run_id": f"run-s{g['seed']}", "extractor_sha256": f"{g['seed']}" * 64} for g in results["generators"]]
    summary = fid_extractor("per-seed", generators)
    assert summary["comparable"] is False and [e["run_id"] for e in summary["extractors"]] == ["run-s0", "run-s1", "run-s2"]
    html = render_study_report(results | {"generators": generators, "fid_extractor": summary})
    assert "Extractors differ (this study was recorded before one extractor per study" in html and "run-s2 (SHA-256 2222" in html
    assert fid_extractor("study", results["generators"])["comparable"] is True
    unrecorded = fid_extractor("per-seed", [{"extractor_run_id": None, "extractor_sha256": None}])  # evaluations before recipes
    assert unrecorded["comparable"] is False
    old = render_study_report({k: v for k, v in results.items() if k != "fid_extractor"}
                              | {"generators": [{k: v for k, v in g.items() if not k.startswith(("extractor_", "fid_at", "baseline"))}
                                                for g in results["generators"]]})
    assert "Extractor of every FID" not in old and "<td class=n>0.010</td>" in old  # results.json from before render as they were


def test_the_report_says_how_the_segmenters_stopped(results: dict) -> None:
    """A study before early stopping trained every run for its steps; one with it names the rule and the cap."""
    assert "300 steps each" in render_study_report(results)
    early = {**results, "spec": {**results["spec"], "segmentation": {**results["spec"]["segmentation"], "early_stopping": True,
                                                                      "patience": 4, "val_every": 25}}}
    html = render_study_report(early)
    assert "early-stopped at its validation plateau (4 checks without gain, checked every 25 steps), at most 300 steps" in html
    assert "segmenters capped at 300 steps" in html


def test_the_report_reads_results_written_before_the_exact_tests(results: dict) -> None:
    """results.json written before issue 22 (Wilcoxon on seed-averaged Dice, Friedman's chi2 p, Spearman's
    t-approximation) still renders: the numbers it has, and who decided then."""
    old = dict(results)
    old["comparisons"] = [{"model": "unet", "augment": False, "against": results["arms"][0]["arm_id"],
                           "rows": [{"a": a["arm_id"], "b": results["arms"][0]["arm_id"], "n": 12, "median_difference": -0.1, "p": 0.01,
                                     "p_holm": 0.04} for a in results["arms"][1:]]}]
    old["friedman"] = {"score": "synthetic-only mean Dice", "test": "friedman", "n_blocks": 3, "n_methods": 3, "statistic": 4.667, "p": 0.097,
                       "iman_davenport_f": 7.0, "alpha": 0.05, "critical_difference": 1.91,
                       "average_ranks": {"joint-gan": 1.33, "spade": 1.67, "stylegan2": 3.0}, "groups": [["joint-gan", "spade"]]}
    old["fid_vs_dice"] = {"x": "FID", "y": "Dice", "test": "spearman", "n": 9, "rho": -0.2, "p": 0.6, "reading": "near zero"}
    html = render_study_report(old)
    for text in ("Wilcoxon on seed-averaged Dice", "0.0100", "0.0400", "χ² = 4.67", "0.0970", "F = 7.00", "Spearman ρ = -0.20 (p = 0.6000; n = 9)"):
        assert text in html, text


def test_the_report_in_a_real_browser(results: dict, tmp_path: Path) -> None:
    """Opened from a file (no server) in Chromium: it renders, its tables fit the page, nothing is fetched."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is a test tool: make tools installs it"
    page_file = tmp_path / "report.html"
    page_file.write_text(render_study_report(results))
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                                    "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        assert page.title().startswith("medsynth study")
        assert page.locator("h2").all_inner_texts()[:3] == ["Settings", "What the numbers mean", "Arms"]
        overflow = page.evaluate("() => Array.from(document.querySelectorAll('table')).filter(t => t.scrollWidth > document.body.clientWidth).length")
        assert overflow == 0, "a table is wider than the page"
        assert page.locator("svg").count() == 3 and page.locator("svg circle").count() > 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "study-report.png"), full_page=True)
        browser.close()
    assert all(url.startswith("file://") for url in requests), requests


TRAIN_PATIENT = "patient-TRAIN-0042"
SAMPLES_PNG, PAIRS_PNG = b"family-samples", b"family-closest-pairs"


def test_a_viewer_gets_the_study_report_without_closest_pairs_or_training_patient_ids(results: dict, platform_settings) -> None:
    """A finished study in the store, as the runner leaves it; the viewer's report and results are rendered without the
    closest pairs (figure and case ids), the researcher's are the stored ones."""
    import base64

    from fastapi.testclient import TestClient

    from medsynth.api.app import create_api_app
    from medsynth.studies.results import load_figures
    from medsynth.studies.record import StudyRecord
    from medsynth.studies.runner import study_key
    from medsynth.store.projects import project_store
    from medsynth.store import open_store

    from platform_fixtures import bearer

    store = project_store(open_store(platform_settings), "default")
    for name, png in (("synthetic", SAMPLES_PNG), ("memorization", PAIRS_PNG)):
        store.put_bytes(f"evaluations/e/figures/{name}.png", png)
    generators = [g | {"figures": {"synthetic": "evaluations/e/figures/synthetic.png", "memorization": "evaluations/e/figures/memorization.png"},
                       "closest_pairs": [{"synthetic_sample": 3, "train_patient": TRAIN_PATIENT, "distance": 0.2}]}
                  for g in results["generators"]]
    stored = results | {"generators": generators}
    prefix = f"studies/{results['study_id']}/"
    store.put_json(f"{prefix}results.json", stored)
    store.put_bytes(f"{prefix}report.html", render_study_report(stored, load_figures(stored, store)).encode())
    record = StudyRecord(study_id=results["study_id"], name=results["name"], spec=results["spec"], state="succeeded", nodes={},
                         results_keys={"json": f"{prefix}results.json", "csv": f"{prefix}results.csv", "html": f"{prefix}report.html"})
    store.put_json(study_key(record.study_id), record.model_dump(mode="json"))
    training = [TRAIN_PATIENT, base64.b64encode(PAIRS_PNG).decode(), "closest pairs: synthetic (left), training (right)"]

    with TestClient(create_api_app(platform_settings, reconcile=False)) as api:
        viewer, researcher = bearer(platform_settings, "viewer"), bearer(platform_settings, "researcher")
        page = api.get(f"/v1/studies/{record.study_id}/report", headers=viewer)
        assert page.status_code == 200 and base64.b64encode(SAMPLES_PNG).decode() in page.text
        assert not [t for t in training if t in page.text] and "withheld for this role" in page.text
        numbers = api.get(f"/v1/studies/{record.study_id}/results", headers=viewer).json()
        assert numbers["training_data_withheld"] and TRAIN_PATIENT not in str(numbers) and "memorization.png" not in str(numbers)

        full = api.get(f"/v1/studies/{record.study_id}/report", headers=researcher)
        assert all(t in full.text for t in training) and "withheld for this role" not in full.text
        assert TRAIN_PATIENT in str(api.get(f"/v1/studies/{record.study_id}/results", headers=researcher).json())
