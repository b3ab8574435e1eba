"""The report page: validation-Dice curves as inline SVG at the right coordinates, per-class Dice
and HD95 with their unit, the fidelity baseline columns and the mode-collapse banner."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from medsynth.handlers.evaluate import utility_row
from medsynth.metrics.report import curve_svg, render_html


SHA = "5e" * 32


def _summary(mean, n=3):
    return {"mean": mean, "ci_low": None if mean is None else mean - 0.1, "ci_high": None if mean is None else mean + 0.1,
            "n": n, "ci_level": 0.95, "n_boot": 100}  # fmt: skip


def _run(source: str, unit: str | None = "mm") -> dict:
    test = {"mean_dice": _summary(0.6), "dice": {"1": _summary(0.8), "2": _summary(0.4)},
            "hd95": {"1": _summary(3.5), "2": _summary(None, 0)}, "n_cases": 3}  # fmt: skip
    if unit is not None:
        test["hd95_unit"] = unit
    return {"source": source, "run_id": f"seg-{source}", "test": test, "best_step": 20, "best_val_dice": 0.7,
            "curves": {"val_step": [10, 20, 30], "val_dice": [0.2, 0.7, 0.5]}}  # fmt: skip


def _results(diversity_warning: str | None = None, unit: str | None = "mm") -> dict:
    runs = [_run("real", unit), _run("synthetic", unit)]
    fidelity = [{"metric": "fid", "value": 0.17, "extractor": "enc", "preprocessing": "none", "n_real": 40, "n_fake": 64,
                 "extractor_sha256": SHA, "real_baseline": 0.05, "baseline": "held-out patients vs training", "baseline_n": 40,
                 "baseline_n_train": 40, "baseline_n_heldout_available": 52, "value_at_baseline_counts": 0.31,
                 "n_fake_at_baseline_counts": 40}]  # fmt: skip
    space = {"distance": "pixel: RMS", "synthetic": 0.05, "real": 0.2, "ratio": 0.25, "n_synthetic": 64, "n_real": 40,
             "real_baseline_ratio": 1.01, "duplicate_fraction": 0.0}  # fmt: skip
    return {
        "evaluation_id": "evaluate-x", "fidelity": fidelity, "utility": [utility_row(r) for r in runs],
        "diversity": {"pixel": space, "feature": None, "threshold": 0.5, "mode_collapse": diversity_warning is not None,
                      "warning": diversity_warning, "rule": "warn if ratio < 0.5"},
        "segmentation_curves": {r["source"]: {"val_step": r["curves"]["val_step"], "val_dice": r["curves"]["val_dice"],
                                              "best_step": 20, "best_val_dice": 0.7} for r in runs},
        "relative_dice": 1.0, "memorization": {"fraction_flagged": 0.0},
        "real_baseline": {"kind": "held-out vs training", "heldout": "the validation and test patients of view v (6 patients, 52 images)",
                          "n_heldout_available": 52, "n_synthetic_available": 64, "n": 40, "missing": None},
        "reference_extractor": {"name": "enc", "run_id": "train-segmenter-abc", "chosen": "the evaluation's reference_run_id",
                                "model": "unet", "seed": 0, "steps": 600, "stopped_step": 450, "view_id": "v", "sha256": SHA, "dim": 256},
        "inception_score": {"value": None, "not_computed": "no Inception extractor is configured (MEDSYNTH_INCEPTION_WEIGHTS is unset)"},
    }  # fmt: skip


def test_curve_svg_places_points_on_the_axes() -> None:
    svg = curve_svg({"real": [(10, 0.0), (20, 0.5), (30, 1.0)], "gone": [(10, float("nan"))]}, width=250, height=130, y_range=(0.0, 1.0), markers=True)
    root = ET.fromstring(svg)  # well-formed XML
    ns = {"s": "http://www.w3.org/2000/svg"}
    lines = root.findall("s:polyline", ns)
    assert [p.get("data-series") for p in lines] == ["real", "gone"]
    points = [tuple(map(float, xy.split(","))) for xy in lines[0].get("points").split()]
    # x: 40 + (x - 10) / 20 * (250 - 50); y: 130 - 20 - y * (130 - 30)
    assert points == [(40.0, 110.0), (140.0, 60.0), (240.0, 10.0)]
    assert lines[1].get("points") == ""  # NaN points are dropped
    assert len(root.findall("s:circle", ns)) == 3


def test_report_plots_validation_dice_of_every_segmenter() -> None:
    page = render_html(_results(), {}, {})
    section = page.split("<h2>Segmenter validation curves</h2>")[1].split("<h2>")[0]
    root = ET.fromstring(section[section.index("<svg"): section.index("</svg>") + 6])
    series = {p.get("data-series"): p.get("points") for p in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert set(series) == {"real", "synthetic"} and len(series["real"].split()) == 3
    assert "real: best 0.7 at step 20" in section


def test_report_shows_dice_per_class_and_hd95_with_its_unit() -> None:
    page = render_html(_results(), {}, {})
    for text in ("Dice class 1", "Dice class 2", "mean HD95 (mm)", "HD95 class 1 (mm)", "HD95 in millimetres",
                 "0.8 [0.7, 0.9] (n=3)", "0.4 [0.3, 0.5] (n=3)"):
        assert text in page, text
    old = render_html(_results(unit=None), {}, {})  # metrics.json written before units were recorded
    assert "mean HD95 (px)" in old and "HD95 in view pixels (px)" in old and "(mm)" not in old


def _fidelity_cells(page: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", page.split("<h2>Fidelity</h2>")[1].split("</table>")[0])


def test_report_puts_the_held_out_baseline_and_counts_beside_each_score() -> None:
    page = render_html(_results(), {}, {})
    assert _fidelity_cells(page) == ["FID", "enc", "0.17", "40 / 64", "0.05", "0.31", "40 / 40 (held-out available 52)"]
    assert "validation and test patients of view v (6 patients, 52 images)" in page and "what a perfect generator of new patients" in page


def test_report_names_the_reference_extractor_and_its_hash() -> None:
    page = render_html(_results(), {}, {})
    section = page.split("<h3>Reference extractor</h3>")[1].split("<h3>")[0]
    for text in ("train-segmenter-abc", "the evaluation&#x27;s reference_run_id", "unet", "450", SHA):
        assert text in section, text


def test_report_says_why_the_inception_score_or_the_baseline_is_missing_and_shows_them_when_there() -> None:
    page = render_html(_results(), {}, {})
    assert "<h3>Inception Score</h3><p>Not computed: no Inception extractor is configured" in page
    scored = render_html(_results() | {"inception_score": {"value": 1.84, "std": 0.12, "splits": 10, "n": 64, "extractor": "inception-v3",
                                                            "reading": "says little about medical images"}}, {}, {})
    assert "IS = <b>1.84</b> ± 0.12 (mean ± std over 10 splits of 64 synthetic images; inception-v3)" in scored
    missing = _results()
    missing["fidelity"] = [{k: v for k, v in missing["fidelity"][0].items() if not k.startswith("baseline") and k != "n_fake_at_baseline_counts"}
                           | {"real_baseline": None, "value_at_baseline_counts": None,
                              "baseline_missing": "no baseline: n = min(64 synthetic, 3 held-out real images) = 3, fewer than the 4 a side it needs"}]
    missing["real_baseline"] = missing["real_baseline"] | {"n": None, "missing": missing["fidelity"][0]["baseline_missing"]}
    page = render_html(missing, {}, {})
    assert _fidelity_cells(page)[4:] == ["no baseline: n = min(64 synthetic, 3 held-out real images) = 3, fewer than the 4 a side it needs", "–", "–"]


def test_a_report_from_before_held_out_baselines_labels_its_training_halves() -> None:
    """report.json written before (re-rendered for a viewer): the halves of the training split, labelled as such."""
    old = _results()
    for key in ("real_baseline", "reference_extractor", "inception_score"):
        del old[key]
    old["fidelity"] = [{"metric": "fid", "value": 0.17, "extractor": "enc", "preprocessing": "none", "n_real": 40, "n_fake": 64,
                        "real_baseline": 0.05, "baseline_split": "by patient (3 | 3 patients)", "baseline_n_a": 20, "baseline_n_b": 20,
                        "value_at_baseline_counts": 0.31, "n_fake_at_baseline_counts": 20}]  # fmt: skip
    page = render_html(old, {}, {})
    assert _fidelity_cells(page) == ["FID", "enc", "0.17", "40 / 64", "0.05 (training half A vs half B: no held-out patients)", "0.31",
                                     "A 20 / B 20 (by patient (3 | 3 patients))"]
    assert "Reference extractor" not in page and "Inception Score" not in page


def test_mode_collapse_warning_is_a_banner_and_absent_otherwise() -> None:
    warned = render_html(_results("possible mode collapse: pixel ratio 0.25 < 0.5"), {}, {})
    assert warned.count("class='warn'>possible mode collapse") == 2  # top of the page and the Diversity section
    assert "class='warn'" not in render_html(_results(), {}, {}).split("</style>")[1]


def test_utility_row_keeps_per_class_summaries() -> None:
    row = utility_row(_run("real"))
    assert row["dice_per_class"]["2"]["mean"] == 0.4 and row["hd95_per_class"]["2"]["mean"] is None
    assert row["mean_hd95"] == pytest.approx(3.5)  # classes without a defined HD95 are left out
    assert (row["hd95_unit"], row["best_step"], row["best_val_dice"]) == ("mm", 20, 0.7)
    assert utility_row(_run("real", unit=None))["hd95_unit"] == "px"


def test_the_evaluation_report_in_a_real_browser(tmp_path) -> None:
    """A data team's page: explained, with its caveats, every table within the page width (Chromium via
    Playwright; the screenshot is kept under test-artifacts/)."""
    import shutil
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from medsynth.metrics.report import render_html

    options = {f"option_{i}": i * 1.5 for i in range(30)}  # a family with many options: still a narrow table
    results = _results() | {"generator": {"family": "stylegan2", "options": options, "training": {"steps": 6, "batch_size": 8, "lr_g": 0.002},
                                          "steps_done": 6, "device": "cpu"},
                            "samples": {"real_used": 40, "real_available": 40, "synthetic_used": 64, "synthetic_available": 64,
                                        "selection": "all"}}
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(results, {}, {"loss_g": [(0, 1.0), (10, 0.5)]}))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                                                     "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_file.as_uri())
        text = page.locator("body").inner_text()
        assert "What the numbers mean" in text and "Too small for conclusions" in text and "Relative Dice" in text
        wide = page.evaluate("() => Array.from(document.querySelectorAll('table')).filter(t => t.getBoundingClientRect().right > "
                             "document.body.getBoundingClientRect().right + 1).length")
        assert wide == 0, "a table runs past the page"
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "evaluation-report.png"), full_page=True)
        browser.close()


def test_without_training_data_drops_pairs_patient_ids_and_training_figures() -> None:
    from medsynth.metrics.report import WITHHELD, without_training_data

    results = _results() | {
        "memorization": {"fraction_flagged": 0.0, "worst_pairs": [{"synthetic": 0, "train": 3, "train_patient": "p-007", "distance": 0.2}]},
        "release": {"withheld": [{"index": 4, "train_index": 9, "lowpass_train_index": 9, "mask_train_index": 9, "distance": 0.01}],
                    "worst_pairs": [{"index": 1, "train_index": 2}], "closest_pairs": {"key": "audits/c/closest_pairs.png"}},
        "figures": {"synthetic": "evaluations/e/figures/synthetic.png", "real": "evaluations/e/figures/real.png",
                    "memorization": "evaluations/e/figures/memorization.png"},
    }
    public = without_training_data(results)
    assert public["memorization"] == {"fraction_flagged": 0.0}
    assert public["release"] == {"withheld": [{"index": 4, "distance": 0.01}]}  # counted, not paired with a training image
    assert public["figures"] == {"synthetic": "evaluations/e/figures/synthetic.png"}
    assert public["training_data_withheld"] == WITHHELD and "worst_pairs" in results["memorization"]  # the input is untouched
    page = render_html({k: v for k, v in public.items() if k != "release"}, {"synthetic": b"s", "real": b"r", "memorization": b"m"}, {})
    assert "real (training split)" not in page and 'alt="closest pairs"' not in page and "base64,cg==" not in page  # b"r"
    assert page.count("withheld for this role") >= 3  # atop the page, and where the real samples and the closest pairs were


# --- the report routes: what a viewer and a researcher get -----------------------------------------

SYNTHETIC_PNG, REAL_PNG, PAIRS_PNG, RELEASE_PNG = b"synthetic-sheet", b"real-training-sheet", b"closest-pairs-grid", b"release-pairs"
TRAIN_PATIENT = "patient-TRAIN-0071"


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.fixture
def evaluation(platform_settings):
    """A succeeded evaluation (and its generator and cohort) in the default project's store, in the layout
    the evaluate handler writes: report.json, report.html with every figure, the figures apart."""
    from medsynth.bus.messages import JobKind
    from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
    from medsynth.store.projects import project_store
    from medsynth.store import open_store

    store = project_store(open_store(platform_settings), "default")
    records = JobRecords(store)

    def succeeded(kind: JobKind, result_keys: dict[str, str]) -> str:
        job_id = new_job_id(kind)
        records.put(JobRecord(job_id=job_id, kind=kind, spec={}, state=JobState.succeeded, result_keys=result_keys))
        return job_id

    store.put_json("generators/g/curves.json", {"step": [0, 10], "loss_g": [1.0, 0.5]})
    generator_id = succeeded(JobKind.train_generator, {"generator": "generators/g/generator.json", "curves": "generators/g/curves.json"})
    store.put_bytes("audits/c/closest_pairs.png", RELEASE_PNG)
    release = {"policy": "filter", "draws": 66, "released": 64, "flagged": 2, "fraction_flagged": 2 / 66, "released_flagged": 0,
               "withheld": [{"index": 3, "train_index": 17, "lowpass_train_index": 17, "distance": 0.01}],
               "thresholds": {"pixel": 0.1, "lowpass": 0.05, "how": "0.5 x the 0.01 quantile"}, "spaces": {"pixel": "p", "lowpass": "l"},
               "rule": "flag near copies", "worst_pairs": [{"index": 3, "train_index": 17}], "closest_pairs": {"key": "audits/c/closest_pairs.png"}}
    cohort_id = succeeded(JobKind.sample_cohort, {"manifest": "cohorts/c/manifest.json"})
    store.put_json("cohorts/c/manifest.json", {"count": 64, "samples": [], "release": release})
    prefix = "evaluations/e/"
    figures = {"synthetic": SYNTHETIC_PNG, "real": REAL_PNG, "memorization": PAIRS_PNG}
    for name, png in figures.items():
        store.put_bytes(f"{prefix}figures/{name}.png", png)
    results = _results() | {
        "generator_id": generator_id, "cohort_id": cohort_id, "release": release,
        "memorization": {"fraction_flagged": 0.0, "worst_pairs": [{"synthetic": 0, "train": 3, "distance": 0.2, "synthetic_sample": 0,
                                                                   "train_patient": TRAIN_PATIENT}]},
        "figures": {name: f"{prefix}figures/{name}.png" for name in figures},
    }
    store.put_json(f"{prefix}report.json", results)
    store.put_bytes(f"{prefix}report.html", render_html(results, figures | {"release": RELEASE_PNG}, {}).encode())
    evaluation_id = succeeded(JobKind.evaluate, {"report_json": f"{prefix}report.json", "report_html": f"{prefix}report.html"})
    return {"evaluation_id": evaluation_id, "cohort_id": cohort_id}


def test_a_viewer_gets_reports_without_training_images_closest_pairs_or_patient_ids(platform_settings, evaluation) -> None:
    from fastapi.testclient import TestClient

    from medsynth.api.app import create_api_app

    from platform_fixtures import bearer

    evaluation_id, cohort_id = evaluation["evaluation_id"], evaluation["cohort_id"]
    training = [TRAIN_PATIENT, "real (training split)", _b64(REAL_PNG), _b64(PAIRS_PNG), _b64(RELEASE_PNG)]
    with TestClient(create_api_app(platform_settings, reconcile=False)) as api:
        viewer, researcher = bearer(platform_settings, "viewer"), bearer(platform_settings, "researcher")
        assert api.get(f"/v1/cohorts/{cohort_id}/closest-pairs.png", headers=viewer).status_code == 403  # the policy's rule
        page = api.get(f"/v1/evaluations/{evaluation_id}/report", headers=viewer)
        assert page.status_code == 200 and _b64(SYNTHETIC_PNG) in page.text and "withheld for this role" in page.text
        assert not [t for t in training if t in page.text]
        report = api.get(f"/v1/evaluations/{evaluation_id}", headers=viewer).json()["report"]
        assert report["training_data_withheld"] and TRAIN_PATIENT not in str(report) and "train_index" not in str(report)
        manifest = api.get(f"/v1/cohorts/{cohort_id}", headers=viewer).json()["manifest"]
        assert "closest_pairs" not in manifest["release"] and "train_index" not in str(manifest)

        full = api.get(f"/v1/evaluations/{evaluation_id}/report", headers=researcher)
        assert full.status_code == 200 and all(t in full.text for t in training) and "withheld for this role" not in full.text
        assert TRAIN_PATIENT in str(api.get(f"/v1/evaluations/{evaluation_id}", headers=researcher).json()["report"])
        assert api.get(f"/v1/cohorts/{cohort_id}/closest-pairs.png", headers=researcher).content == RELEASE_PNG


def test_the_release_section_shows_the_copy_search_and_old_manifests_still_render() -> None:
    """A manifest of the search for copies in disguise names its thresholds (image, mask) and what it
    searched; one from before (pixel and low-pass spaces) still renders."""
    from medsynth.metrics.report import _release_section

    new = {"policy": "filter", "draws": 10, "released": 8, "flagged": 2, "flagged_by_image": 1, "flagged_by_mask": 1,
           "fraction_flagged": 0.2, "released_flagged": 0, "withheld": [{}, {}], "rule": "a draw is flagged when its image or its mask is",
           "thresholds": {"image": 0.16, "mask": 0.07, "how": "0.8 x the 0.01 quantile"},
           "audits": {"image": {"preparation": "per-image ranks", "search": "flips x rotations ±10°"}, "mask": {"preparation": "labels"}}}
    page = _release_section(new)
    assert "image threshold" in page and "mask threshold" in page and "rotations ±10°" in page and "flagged_by_mask" in page
    old = {"policy": "filter", "draws": 66, "released": 64, "flagged": 2, "fraction_flagged": 2 / 66, "released_flagged": 0,
           "withheld": [], "rule": "r", "thresholds": {"pixel": 0.1, "lowpass": 0.05, "how": "0.5 x the 0.01 quantile"},
           "spaces": {"pixel": "p", "lowpass": "l"}}
    assert "pixel threshold" in _release_section(old) and "Spaces: p; l" in _release_section(old)
