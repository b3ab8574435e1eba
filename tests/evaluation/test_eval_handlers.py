"""The train-segmenter and evaluate handlers on a real local store: phantom scans ingested with an
anisotropic voxel size, a 32² view, real / synthetic / mixed segmentation runs, then the report.

Upstream artifacts that belong to the generator side (a generator registry entry, a cohort of
NIfTI samples) are written into the store in the layout their handlers write; the segmentation runs
are produced by the real handler. Handlers get a minimal job context (store, settings, job id,
progress), the interface they use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import build_views, normalise, resize_square
from medsynth.jobs.artifacts import view_splits
from medsynth.handlers.segment import hd95_spacing, train_segmentation
from medsynth.io.nifti import load_nifti, to_nifti_bytes
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.bus.messages import JobKind
from medsynth.datasets.phantoms import make_phantom, write_phantom_dataset
from medsynth.segmentation.spacing import MM_UNIT
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2

SHAPE, SPACING, SIZE = (40, 32, 8), (0.7, 1.1, 2.5), 32
VIEW_PIXEL_MM = (0.7 * 40 / 32, 1.1 * 40 / 32)  # side max(40, 32) = 40 resized to 32
SEG = {"steps": 12, "batch_size": 8, "augment": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Ctx:
    """What a handler uses of its job context."""

    store: ObjectStore
    job_id: str
    settings: Settings = field(default_factory=lambda: Settings(inception_weights=None))
    seen: list = field(default_factory=list)

    def progress(self, fraction: float, message: str = "") -> None:
        self.seen.append((fraction, message))

    @property
    def records(self) -> JobRecords:
        return JobRecords(self.store)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    store = LocalStore(root / "store")
    names = write_phantom_dataset(root / "msd", n=8, seed=11, shape=SHAPE, spacing=SPACING)
    for name in names:
        image = Upload(f"{name}.nii.gz", (root / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = Upload(f"{name}.nii.gz", (root / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, "ph", name, image, label, max_voxels=10**6)

    def load(scan):
        return tuple(np.asanyarray(load_nifti(store.get_bytes(k), what=k, max_voxels=10**6).dataobj) for k in (scan.image_key, scan.label_key))

    key = build_views(store, load_manifest(store, "ph"), mode="slices2d", size=SIZE, axis=2, val_fraction=0.25,
                      test_fraction=0.25, seed=0, keep_empty=False, load_scan=load)  # fmt: skip
    view_id = key.split("/")[-2]
    generator_id = _generator(store, view_id, load_manifest(store, "ph").version)
    healthy_images, healthy_masks = _unseen_phantom_slices(range(500, 506))
    healthy = _cohort(store, generator_id, healthy_images, healthy_masks)
    rng = np.random.default_rng(0)
    board = np.kron(rng.uniform(0, 1, (4, 4)), np.ones((8, 8)))
    checker = np.clip(board + rng.normal(0, 0.01, (24, 32, 32)), 0, 1)[:, None].astype(np.float32)
    checker_masks = np.zeros((24, 32, 32), np.uint8)
    checker_masks[:, 8:24, 8:24] = 1
    collapsed = _cohort(store, generator_id, checker, checker_masks)
    runs = {source: _segment(store, view_id, source, healthy) for source in ("real", "synthetic", "mixed")}
    return {"store": store, "view_id": view_id, "healthy": healthy, "n_healthy": len(healthy_images), "collapsed": collapsed, "runs": runs}


def _succeeded(store: ObjectStore, kind: JobKind, result_keys: dict[str, str], job_id: str | None = None) -> str:
    record = JobRecord(job_id=job_id or new_job_id(kind), kind=kind, spec={}, state=JobState.succeeded, result_keys=result_keys)
    JobRecords(store).put(record)
    return record.job_id


#: The first joint GAN's config, as format 1 entries hold it (tests/stored/generator-entry-format1.json).
FORMAT_1_CONFIG = json.loads((Path(__file__).parents[1] / "stored" / "generator-entry-format1.json").read_text())["config"]


def _generator(store: ObjectStore, view_id: str, version: int) -> str:
    """A registry entry in the first format (before generator families: a config, no spec), which
    evaluation still reads; no checkpoint or archive is behind it, evaluation does not open them."""
    job_id = new_job_id(JobKind.train_generator)
    prefix = f"generators/{job_id}/"
    store.put_json(f"{prefix}curves.json", {"step": [1, 2, 3], "loss_d": [1.4, 1.2, 1.1], "loss_g": [0.7, 0.9, 1.0]})
    store.put_json(f"{prefix}generator.json", {
        "generator_id": job_id, "family": "joint-gan", "dataset": "ph", "dataset_version": version, "view_id": view_id,
        "config": FORMAT_1_CONFIG, "checkpoint_key": f"{prefix}ckpt/final.pt", "archive_key": f"{prefix}g.mar",
        "model_name": job_id.replace(".", "_"), "weights_fingerprint": "0" * 64, "resumed_from": None,
        "metrics": {"loss_d": 1.1}, "curves_key": f"{prefix}curves.json", "registered_at": "2026-11-23T10:00:00+00:00",
    })  # fmt: skip
    return _succeeded(store, JobKind.train_generator, {"generator": f"{prefix}generator.json"}, job_id)


def _unseen_phantom_slices(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """Slices of phantoms not in the dataset, prepared as the view prepares them: a plausible cohort."""
    images, masks = [], []
    for seed in seeds:
        image, label, _ = make_phantom(seed, SHAPE, SPACING)
        image = normalise(image)
        for k in range(SHAPE[2]):
            if label[..., k].any():
                img, msk = resize_square(image[..., k], label[..., k].astype(np.uint8), SIZE)
                images.append(img)
                masks.append(msk)
    return np.stack(images)[:, None].astype(np.float32), np.stack(masks)


def _cohort(store: ObjectStore, generator_id: str, images: np.ndarray, masks: np.ndarray) -> str:
    """A cohort manifest with NIfTI samples, in the layout sampling/cohort.py writes."""
    job_id = new_job_id(JobKind.sample_cohort)
    prefix = f"cohorts/{job_id}/"
    samples = []
    for i, (img, msk) in enumerate(zip(images, masks)):
        keys = {"image": f"{prefix}samples/{i:05d}/image.nii.gz", "label": f"{prefix}samples/{i:05d}/label.nii.gz"}
        store.put_bytes(keys["image"], to_nifti_bytes(img[0], np.eye(4)))
        store.put_bytes(keys["label"], to_nifti_bytes(msk, np.eye(4)))
        samples.append({"index": i, "image": {"key": keys["image"]}, "label": {"key": keys["label"]}})
    store.put_json(f"{prefix}manifest.json", {"formats": ["nifti"], "count": len(samples), "samples": samples,
                                              "provenance": {"generator_id": generator_id}})  # fmt: skip
    return _succeeded(store, JobKind.sample_cohort, {"manifest": f"{prefix}manifest.json"}, job_id)


def _segment(store: ObjectStore, view_id: str, source: str, cohort_id: str) -> str:
    ctx = Ctx(store, new_job_id(JobKind.train_segmenter))
    spec = jobs_pb2.TrainSegmenter(dataset="ph", view_id=view_id, cohort_id=cohort_id if source != "real" else "", source=source,
                                   synthetic_ratio=0.5, **SEG)
    return _succeeded(store, JobKind.train_segmenter, dict(train_segmentation(spec, ctx)), ctx.job_id)


def _metrics(world: dict, source: str) -> dict:
    record = JobRecords(world["store"]).get(world["runs"][source])
    return world["store"].get_json(record.result_keys["metrics"])


# --- train-segmenter ------------------------------------------------------------------------------


def test_segmenter_metrics_have_hd95_in_mm_from_the_manifest_spacing(world: dict) -> None:
    metrics = _metrics(world, "real")
    test = metrics["test"]
    assert test["hd95_unit"] == MM_UNIT and "manifest voxel spacing" in test["hd95_spacing_source"]
    for case in test["per_case"]:
        np.testing.assert_allclose(case["pixel_spacing"], [VIEW_PIXEL_MM])  # hand-computed above
    assert set(test["dice"]) == {"1", "2"} and all("mean" in s for s in test["dice"].values())
    view, splits = view_splits(world["store"], "ph", world["view_id"], splits=("test",))
    spacing, unit, _ = hd95_spacing(world["store"], view, splits["test"])
    assert unit == "mm" and spacing.shape == (len(splits["test"]["images"]), 2)


def test_segmenter_metrics_record_the_validation_dice_curve(world: dict) -> None:
    metrics = _metrics(world, "mixed")
    curves = metrics["curves"]
    val_every = max(1, SEG["steps"] // 10)  # as the handler sets it
    assert curves["val_step"] == list(range(val_every, SEG["steps"] + 1, val_every))
    assert len(curves["val_dice"]) == len(curves["val_step"]) and all(0.0 <= d <= 1.0 for d in curves["val_dice"])
    assert metrics["best_val_dice"] == max(curves["val_dice"])
    assert metrics["best_step"] == curves["val_step"][int(np.argmax(curves["val_dice"]))]
    assert "train_loss" not in curves


def test_views_without_a_mm_spacing_fall_back_to_view_pixels(world: dict) -> None:
    view, splits = view_splits(world["store"], "ph", world["view_id"], splits=("test",))
    patches = view.model_copy(update={"spec": view.spec.model_copy(update={"mode": "patches3d"})})  # no 2D pixel spacing
    spacing, unit, source = hd95_spacing(world["store"], patches, splits["test"])
    assert (tuple(spacing), unit) == ((1.0, 1.0), "px") and "view pixels" in source
    gone = view.model_copy(update={"dataset_version": 99})  # the manifest version is missing
    assert hd95_spacing(world["store"], gone, splits["test"])[1] == "px"


# --- evaluate ---------------------------------------------------------------------------------------


def _evaluate(world: dict, cohort: str) -> tuple[dict, str]:
    from medsynth.handlers.evaluate import evaluate_cohort

    ctx = Ctx(world["store"], new_job_id(JobKind.evaluate))
    spec = jobs_pb2.Evaluate(cohort_id=world[cohort], dataset="ph", view_id=world["view_id"],
                             segmentation_run_ids=list(world["runs"].values()))  # fmt: skip
    keys = evaluate_cohort(spec, ctx)
    return world["store"].get_json(keys["report_json"]), world["store"].get_bytes(keys["report_html"]).decode()


def test_evaluation_report_shows_baselines_per_class_dice_units_and_curves(world: dict) -> None:
    report, html = _evaluate(world, "healthy")
    assert [r["metric"] for r in report["fidelity"]] == ["fid", "kid"]
    view = world["store"].get_json(f"datasets/ph/views/{world['view_id']}/view.json")
    held = view["counts"]["val"] + view["counts"]["test"]  # this view keeps no empty slices anywhere: all of them
    assert report["real_baseline"] | {"kind": None, "heldout": None} == {
        "kind": None, "heldout": None, "n_heldout_available": held, "n_synthetic_available": world["n_healthy"],
        "n": min(held, world["n_healthy"]), "missing": None}
    assert "validation and test patients" in report["real_baseline"]["heldout"]
    assert f"{len(view['patients']['val']) + len(view['patients']['test'])} patients" in report["real_baseline"]["heldout"]
    for row in report["fidelity"]:
        assert (row["n_real"], row["n_fake"]) == (view["counts"]["train"], world["n_healthy"])
        assert row["baseline_n"] == row["n_fake_at_baseline_counts"] == min(held, world["n_healthy"])  # equal counts
        assert row["baseline_n_train"] == row["n_real"] and row["baseline_n_heldout_available"] == held
        assert row["real_baseline"] is not None and row["value_at_baseline_counts"] is not None
    assert [r["name"] for r in report["fidelity"]] == [f"fid{world['n_healthy']}", f"kid{world['n_healthy']}"]
    embedding = report["embedding"]
    assert len(embedding["real"]) == min(200, view["counts"]["train"]) and len(embedding["synthetic"]) == min(200, world["n_healthy"])
    assert embedding["method"].startswith("t-SNE") and all(len(p) == 2 for p in embedding["real"]) and "features in 2D" in html
    assert set(report["figures"]) == {"synthetic", "real", "memorization"}
    assert all(world["store"].get_bytes(k).startswith(b"\x89PNG") for k in report["figures"].values())
    pair = report["memorization"]["worst_pairs"][0]
    assert isinstance(pair["synthetic_sample"], int) and pair["train_patient"] in set(map(str, view["patients"]["train"]))
    groups = report["memorization"]["nn_distances"]["groups"]  # the held-out patients searched like the cohort
    assert set(groups) == {"synthetic", "held-out real", "training (other patients)"} and groups["held-out real"]["n"] > 0
    assert 'aria-label="nearest-training distance histograms"' in html
    manifold = {r["metric"]: r for r in report["manifold"]}
    assert set(manifold) == {"precision", "recall", "density", "coverage"} and manifold["precision"]["k"] == 3
    assert all(0 <= r["value"] <= 1 for m, r in manifold.items() if m != "density") and manifold["density"]["value"] >= 0
    assert manifold["recall"]["extractor"] == report["fidelity"][0]["extractor"] and "Coverage" in html
    assert report["samples"] | {"selection": None} == {"real_available": view["counts"]["train"], "real_used": view["counts"]["train"],
                                                       "synthetic_available": world["n_healthy"], "synthetic_used": world["n_healthy"],
                                                       "selection": None}  # fmt: skip
    utility = {r["source"]: r for r in report["utility"]}
    assert set(utility) == {"real", "synthetic", "mixed"}
    real = utility["real"]
    assert real["hd95_unit"] == "mm" and set(real["dice_per_class"]) == {"1", "2"}
    assert real["dice_per_class"]["1"] == _metrics(world, "real")["test"]["dice"]["1"]
    assert set(report["segmentation_curves"]) == {"real", "synthetic", "mixed"}
    assert report["diversity"]["mode_collapse"] is False and report["diversity"]["pixel"]["n_synthetic"] == world["n_healthy"]
    for text in ("real vs real (held-out vs training)", "Reference extractor", report["reference_extractor"]["sha256"],
                 "Inception Score", "Not computed: no Inception extractor is configured", f"Images used: real {view['counts']['train']} of {view['counts']['train']}", "Dice class 1", "Dice class 2", "mean HD95 (mm)", "Segmenter validation curves",
                 'data-series="real"', 'data-series="mixed"', "Diversity", "no mode-collapse warning", "Training curves"):
        assert text in html, text


def test_evaluation_of_a_collapsed_cohort_warns_in_json_and_html(world: dict) -> None:
    report, html = _evaluate(world, "collapsed")
    assert report["memorization"]["fraction_flagged"] == 0.0  # the audit passes it...
    diversity = report["diversity"]
    assert diversity["mode_collapse"] is True and diversity["pixel"]["ratio"] < 0.5  # ...the diversity check does not
    assert "possible mode collapse" in html and "class='warn'" in html


def test_reference_features_are_computed_once_per_extractor_and_real_images(world: dict) -> None:
    """Two evaluations against the same real images through the same encoder: the second reads the
    real features the first stored (keyed by extractor and a digest of the images), and scores alike."""
    first, _ = _evaluate(world, "healthy")
    second, _ = _evaluate(world, "healthy")
    (name, ref), = second["reference_features"].items()
    assert ref["cached"] is True and ref["key"] == first["reference_features"][name]["key"]
    assert [r["value"] for r in second["fidelity"]] == pytest.approx([r["value"] for r in first["fidelity"]])
    collapsed, _ = _evaluate(world, "collapsed")  # another cohort, the same real reference
    assert collapsed["reference_features"][name] == {"key": ref["key"], "cached": True}
    world["store"].delete(ref["key"])
    again, _ = _evaluate(world, "healthy")
    assert again["reference_features"][name]["cached"] is False  # recomputed when gone
    assert [r["value"] for r in again["fidelity"]] == pytest.approx([r["value"] for r in first["fidelity"]])


# --- fixed yardsticks: the reference extractor, the held-out baseline, the Inception Score ---------------


def _features_through(world: dict, run_id: str, images: np.ndarray) -> np.ndarray:
    """Features of ``images`` through the encoder of segmentation run ``run_id``, computed here."""
    from medsynth.metrics.fidelity import EncoderExtractor, extract_features
    from medsynth.segmentation.io import load_segmenter
    from medsynth.segmentation.models import encoder

    model = load_segmenter(world["store"].get_bytes(JobRecords(world["store"]).get(run_id).result_keys["model"])).model
    return extract_features(torch.from_numpy(np.ascontiguousarray(images)), EncoderExtractor(encoder(model), "check"))


def test_the_baseline_scores_held_out_patients_against_training_images_at_the_cohort_count(world: dict) -> None:
    """Recomputed by hand from the reference encoder: n = min(cohort, held-out) validation + test images
    (patients the encoder and the generator never saw) against the training images, and the cohort at
    the same n against the same training images; not two halves of the training split."""
    from medsynth.jobs.artifacts import cohort_arrays
    from medsynth.metrics.fidelity import heldout_baseline, real_baseline

    report, _ = _evaluate(world, "healthy")
    store, real_run = world["store"], world["runs"]["real"]
    view, splits = view_splits(store, "ph", world["view_id"])
    assert not set(view.patients["val"] + view.patients["test"]) & set(view.patients["train"])
    held = np.concatenate([splits["val"]["images"], splits["test"]["images"]])
    f_train = _features_through(world, real_run, splits["train"]["images"])
    f_held = _features_through(world, real_run, held)
    f_fake = _features_through(world, real_run, cohort_arrays(store, JobRecords(store), world["healthy"])[1])
    expected = heldout_baseline(f_train, f_held, f_fake, seed=0)
    halves = real_baseline(f_train, f_fake, groups=splits["train"]["patients"], seed=0)
    for row in report["fidelity"]:
        assert row["baseline_n"] == expected["n"] == min(len(held), world["n_healthy"])
        assert row["real_baseline"] == pytest.approx(expected["real_vs_real"][row["metric"]], rel=1e-6, abs=1e-9)
        assert row["value_at_baseline_counts"] == pytest.approx(expected["synthetic_vs_real"][row["metric"]], rel=1e-6, abs=1e-9)
    fid = report["fidelity"][0]
    assert fid["real_baseline"] != pytest.approx(halves["real_vs_real"]["fid"], rel=1e-3)  # not the training halves
    assert set(report["heldout_features"]) == {fid["extractor"]}


def test_the_reference_extractor_is_recorded_with_its_recipe_and_hash(world: dict) -> None:
    import hashlib

    report, html = _evaluate(world, "healthy")
    real_run = world["runs"]["real"]
    metrics = _metrics(world, "real")
    weights = world["store"].get_bytes(JobRecords(world["store"]).get(real_run).result_keys["model"])
    ref = report["reference_extractor"]
    assert ref["run_id"] == real_run and ref["sha256"] == hashlib.sha256(weights).hexdigest()
    assert "real-only run among segmentation_run_ids" in ref["chosen"]
    assert (ref["model"], ref["seed"], ref["steps"], ref["stopped_step"], ref["view_id"], ref["source"]) == (
        "unet", 0, SEG["steps"], metrics["stopped_step"], world["view_id"], "real")
    assert ref["name"] == report["fidelity"][0]["extractor"] and ref["dim"] > 0
    assert ref["device"] == "cpu"  # MEDSYNTH_DEVICE (auto, no CUDA here): the features' device is recorded
    assert all(row["extractor_sha256"] == ref["sha256"] for row in report["fidelity"])
    assert report["extractors"] == [ref]
    assert report["inception_score"]["value"] is None and "MEDSYNTH_INCEPTION_WEIGHTS" in report["inception_score"]["not_computed"]
    assert ref["sha256"] in html and "Reference extractor" in html


def test_an_explicit_reference_run_is_the_extractor_whatever_runs_are_listed(world: dict) -> None:
    """The real-only run named as reference, with only synthetic and mixed runs in the utility table:
    the same yardstick (same features, same numbers) as when it was found among the runs."""
    from medsynth.handlers.evaluate import evaluate_cohort

    default, _ = _evaluate(world, "healthy")
    ctx = Ctx(world["store"], new_job_id(JobKind.evaluate))
    spec = jobs_pb2.Evaluate(cohort_id=world["healthy"], dataset="ph", view_id=world["view_id"], reference_run_id=world["runs"]["real"],
                             segmentation_run_ids=[world["runs"]["synthetic"], world["runs"]["mixed"]])  # fmt: skip
    report = world["store"].get_json(evaluate_cohort(spec, ctx)["report_json"])
    ref = report["reference_extractor"]
    assert ref["run_id"] == world["runs"]["real"] and ref["chosen"] == "the evaluation's reference_run_id"
    assert ref["sha256"] == default["reference_extractor"]["sha256"]
    assert [r["value"] for r in report["fidelity"]] == pytest.approx([r["value"] for r in default["fidelity"]])
    assert {r["source"] for r in report["utility"]} == {"synthetic", "mixed"}


def _fake_run(world: dict, **fields) -> str:
    """A finished train-segmenter job whose metrics.json says what it trained on (its model is the real run's file)."""
    record = JobRecords(world["store"]).get(world["runs"]["real"])
    job_id = new_job_id(JobKind.train_segmenter)
    metrics = {**_metrics(world, "real"), "run_id": job_id, **fields}
    world["store"].put_json(f"segmentations/{job_id}/metrics.json", metrics)
    return _succeeded(world["store"], JobKind.train_segmenter,
                      {"model": record.result_keys["model"], "metrics": f"segmentations/{job_id}/metrics.json"}, job_id)


def _request_records(world: dict) -> str:
    """A cohort and its generator as the job service records them (with their specs): what evaluation_command reads."""
    records = JobRecords(world["store"])
    generator = records.get(_generator(world["store"], world["view_id"], load_manifest(world["store"], "ph").version))
    records.put(generator.model_copy(update={"spec": {"dataset": "ph", "view_id": world["view_id"]}}))
    cohort = records.get(world["healthy"])
    cohort_id = new_job_id(JobKind.sample_cohort)
    records.put(cohort.model_copy(update={"job_id": cohort_id, "spec": {"generator_id": generator.job_id}}))
    return cohort_id


def test_a_reference_run_from_another_view_or_of_synthetic_data_is_a_422_naming_the_problem(world: dict) -> None:
    from medsynth.commands.build import evaluation_command
    from medsynth.commands.requests import EvaluationCreate
    from medsynth.core.errors import Conflict, InvalidInput, NotFound
    from medsynth.handlers.evaluate import evaluate_cohort

    store, records = world["store"], JobRecords(world["store"])
    cohort = _request_records(world)
    other_view = _fake_run(world, view_id="0123456789abcdef")
    synthetic = world["runs"]["synthetic"]

    def command(**body):
        return evaluation_command(EvaluationCreate(cohort_id=cohort, **body), store, records)

    ok = command(reference_run_id=world["runs"]["real"], segmentation_run_ids=[synthetic])
    assert ok.reference_run_id == world["runs"]["real"] and list(ok.segmentation_run_ids) == [synthetic]
    assert command(segmentation_run_ids=[world["runs"]["real"]]).reference_run_id == ""  # the default: chosen by the job
    with pytest.raises(InvalidInput, match=f"reference run {other_view} was trained on view 0123456789abcdef; the cohort's "
                                           f"generator learned from view {world['view_id']}"):
        command(reference_run_id=other_view)
    with pytest.raises(InvalidInput, match=f"reference run {other_view} was trained on view 0123456789abcdef"):
        command(segmentation_run_ids=[synthetic, other_view])  # the default extractor is checked alike
    with pytest.raises(InvalidInput, match=f"reference run {synthetic} was trained on synthetic data; the FID extractor must be "
                                           "a real-only segmentation run"):
        command(reference_run_id=synthetic)
    with pytest.raises(InvalidInput, match="was trained on dataset 'other'"):
        command(reference_run_id=_fake_run(world, dataset="other"))
    with pytest.raises(NotFound):
        command(reference_run_id="train-segmenter-0000000000000000")
    running = new_job_id(JobKind.train_segmenter)
    records.put(JobRecord(job_id=running, kind=JobKind.train_segmenter, spec={}, state=JobState.running))
    with pytest.raises(Conflict, match="is running, not ready"):
        command(reference_run_id=running)
    # a command built elsewhere, without the check: the job refuses rather than scoring through another view's encoder
    spec = jobs_pb2.Evaluate(cohort_id=world["healthy"], dataset="ph", view_id=world["view_id"], reference_run_id=other_view)
    with pytest.raises(InvalidInput, match="was trained on view 0123456789abcdef"):
        evaluate_cohort(spec, Ctx(store, new_job_id(JobKind.evaluate)))


def test_held_out_images_are_selected_as_the_training_split_selects_slices(world: dict) -> None:
    """A view that keeps empty slices only in val and test (keep_empty_eval): the baseline's held-out
    images leave them out as training does, and say so; a view without held-out images has no baseline."""
    from medsynth.handlers.evaluate import _baseline_plan, _heldout

    view, _ = view_splits(world["store"], "ph", world["view_id"], splits=())
    masks = np.zeros((6, 4, 4), np.uint8)
    masks[[0, 2, 3], 1, 1] = 1
    part = {"images": np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 4, 4), np.float32),
            "masks": masks, "patients": np.array(["a", "a", "b", "b", "c", "c"])}
    eval_only = view.model_copy(update={"spec": view.spec.model_copy(update={"keep_empty": False, "keep_empty_eval": True})})
    held = _heldout(eval_only, {"val": part, "test": {}})
    assert held.images[:, 0, 0, 0].tolist() == [0, 2, 3] and "3 slices without foreground left out" in held.description
    assert "2 patients, 3 images" in held.description
    everywhere = view.model_copy(update={"spec": view.spec.model_copy(update={"keep_empty": True})})
    assert len(_heldout(everywhere, {"val": part, "test": part}).images) == 12
    assert _heldout(view, {"val": {}, "test": {}}) is None
    plan, images = _baseline_plan(None, 40, seed=0)
    assert images is None and plan["n"] is None and "no validation or test images" in plan["missing"]
    plan, images = _baseline_plan(held, 40, seed=0)
    assert images is None and "n = min(40 synthetic, 3 held-out real images) = 3, fewer than the 4" in plan["missing"]


class _ToyInception:
    """Stands in for the Inception extractor: 3 features (the image's mean, its square, 1) and class
    probabilities softmax(features @ W)."""

    name, preprocessing, dim, has_classes = "toy inception", "none", 3, True
    weight = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]])

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        m = images.mean(dim=(1, 2, 3)).double().numpy()
        return np.stack([m, m**2, np.ones_like(m)], axis=1)

    def class_probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.weight.T
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_the_inception_score_is_reported_where_an_inception_extractor_is_configured() -> None:
    from medsynth.handlers.evaluate import evaluation_results
    from medsynth.metrics.fidelity import inception_score

    rng = np.random.default_rng(3)
    real = rng.uniform(0, 1, (30, 1, 8, 8)).astype(np.float32)
    fake = rng.uniform(0, 1, (24, 1, 8, 8)).astype(np.float32) * np.linspace(0.2, 1, 24, dtype=np.float32)[:, None, None, None]
    toy = _ToyInception()
    numbers = evaluation_results(real, fake, [], [toy])
    score = numbers["inception_score"]
    expected = inception_score(toy.class_probabilities(toy(torch.from_numpy(fake))), splits=10)
    assert (score["value"], score["std"]) == pytest.approx(expected) and (score["splits"], score["n"]) == (10, 24)
    assert score["extractor"] == "toy inception" and "says little about medical images" in score["reading"]
    assert numbers["reference_extractor"] is None and numbers["real_baseline"]["missing"].startswith("no baseline")
    assert all(r["real_baseline"] is None and r["baseline_missing"] for r in numbers["fidelity"])  # no held-out: no number
    few = evaluation_results(real, fake[:12], [], [toy])["inception_score"]
    assert few["value"] is None and "12 synthetic images; the Inception Score's 10 splits need at least 20" in few["not_computed"]
