"""Training loop: it learns, it is deterministic, it selects on real validation data, it refuses
missing inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import NUM_CLASSES, small_spec
from medsynth.core.errors import InvalidInput
from medsynth.segmentation import SegmentationSpec, build_model, encoder, evaluate_segmenter, train_segmenter


def test_training_beats_an_untrained_model_on_test_patients(splits, trained):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = build_model(trained.spec)
    before = evaluate_segmenter(untrained, splits["test"], NUM_CLASSES, n_boot=100)
    after = evaluate_segmenter(trained.model, splits["test"], NUM_CLASSES, n_boot=100)
    # Trained organ Dice is ~0.8 on these phantoms; an untrained net scores ~0.1 at best. The tiny
    # lesion (a few pixels at 32×32) is not learnt reliably in 150 steps, so it is not asserted on.
    assert after["dice"]["1"]["mean"] > 0.6
    assert before["dice"]["1"]["mean"] < 0.3
    assert after["mean_dice"]["mean"] > before["mean_dice"]["mean"] + 0.25


def test_curves_and_best_step_are_consistent(trained):
    spec = trained.spec
    assert len(trained.curves["train_loss"]) == spec.steps
    assert trained.curves["val_step"] == list(range(spec.val_every, spec.steps + 1, spec.val_every))
    best = int(np.argmax(trained.curves["val_dice"]))
    assert trained.best_step == trained.curves["val_step"][best]
    assert trained.best_val_dice == pytest.approx(trained.curves["val_dice"][best])
    assert np.mean(trained.curves["train_loss"][-20:]) < np.mean(trained.curves["train_loss"][:20])
    model_state = trained.model.state_dict()
    assert all(torch.equal(model_state[k], v) for k, v in trained.state_dict.items())


@pytest.mark.parametrize("source", ["real", "mixed"])
def test_same_seed_gives_identical_weights(splits, source):
    spec = small_spec(steps=12, val_every=6, source=source, synthetic_ratio=0.25)
    synthetic = {"images": splits["val"]["images"], "masks": splits["val"]["masks"]}  # stand-in cohort
    a = train_segmenter(spec, splits["train"], splits["val"], synthetic)
    b = train_segmenter(spec, splits["train"], splits["val"], synthetic)
    c = train_segmenter(small_spec(steps=12, val_every=6, source=source, synthetic_ratio=0.25, seed=1), splits["train"], splits["val"], synthetic)
    assert a.curves == b.curves
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_the_job_device_changes_nothing_on_the_cpu(splits):
    """``device`` places the model and each batch (the worker passes MEDSYNTH_DEVICE's); on the CPU the
    run is the one it was before the argument existed, bit for bit. tests/cuda trains on the GPU."""
    spec = small_spec(steps=6, val_every=3, augment=True)
    default = train_segmenter(spec, splits["train"], splits["val"])
    placed = train_segmenter(spec, splits["train"], splits["val"], device=torch.device("cpu"))
    assert default.curves == placed.curves and default.best_step == placed.best_step
    assert all(torch.equal(default.state_dict[k], placed.state_dict[k]) for k in default.state_dict)
    assert {p.device for p in placed.model.parameters()} == {torch.device("cpu")}


def test_training_leaves_the_global_rng_alone(splits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_segmenter(small_spec(steps=2, val_every=2), splits["train"], splits["val"])
    assert torch.equal(torch.rand(3), expected)


def test_progress_is_reported_after_each_validation(splits):
    seen: list[tuple[float, str]] = []
    train_segmenter(small_spec(steps=4, val_every=2), splits["train"], splits["val"], on_progress=lambda f, m: seen.append((f, m)))
    assert [f for f, _ in seen] == [0.5, 1.0]


@pytest.mark.parametrize("source", ["synthetic", "mixed"])
def test_synthetic_source_without_a_cohort_is_refused(splits, source):
    with pytest.raises(InvalidInput, match="synthetic"):
        train_segmenter(small_spec(source=source, steps=1), splits["train"], splits["val"])


def test_synthetic_only_training_needs_no_real_train_split(splits):
    synthetic = (splits["train"]["images"], splits["train"]["masks"])
    result = train_segmenter(small_spec(source="synthetic", steps=2, val_every=1), None, splits["val"], synthetic)
    assert result.best_step in (1, 2)


@pytest.mark.parametrize("which", ["train", "val"])
def test_empty_split_is_refused(splits, which):
    empty = {k: v[:0] for k, v in splits[which].items()}
    args = {"train": splits["train"], "val": splits["val"], which: empty}
    with pytest.raises(InvalidInput, match=f"real_{which}.*empty"):
        train_segmenter(small_spec(steps=1), args["train"], args["val"])


def test_mismatched_sizes_and_bad_labels_are_refused(splits):
    small = {"images": splits["train"]["images"][:, :, :16, :16], "masks": splits["train"]["masks"][:, :16, :16]}
    with pytest.raises(InvalidInput, match="16×16"):
        train_segmenter(small_spec(steps=1), small, splits["val"])
    with pytest.raises(InvalidInput, match="num_classes=2"):
        train_segmenter(small_spec(steps=1, num_classes=2), splits["train"], splits["val"])
    with pytest.raises(InvalidInput, match="divisible by 32"):
        train_segmenter(small_spec(steps=1, model="swin-unetr"), small, {"images": small["images"], "masks": small["masks"]})
    with pytest.raises(InvalidInput, match="at least 64"):
        train_segmenter(small_spec(steps=1, model="swin-unetr"), splits["train"], splits["val"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("source", "both"), ("model", "resnet"), ("steps", 0), ("batch_size", 1.5), ("lr", -1.0), ("val_every", 0), ("num_classes", 1), ("synthetic_ratio", 1.5), ("channels", (8,)), ("swin_feature_size", 20)],
)
def test_spec_validation_names_the_bad_value(field, value):
    with pytest.raises(InvalidInput, match=field if field != "channels" else "channels"):
        SegmentationSpec(**{field: value})


def test_mixed_source_needs_a_ratio_strictly_inside_0_1():
    with pytest.raises(InvalidInput, match="synthetic_ratio"):
        SegmentationSpec(source="mixed", synthetic_ratio=0.0)
    assert SegmentationSpec.from_dict(SegmentationSpec(source="mixed").to_dict()) == SegmentationSpec(source="mixed")
    with pytest.raises(InvalidInput, match="bogus"):
        SegmentationSpec.from_dict({"bogus": 1})


def test_unet_encoder_is_the_down_path_and_shares_weights(trained):
    model = trained.model
    enc = encoder(model)
    bottom = enc[-1]
    captured = {}
    handle = bottom.register_forward_hook(lambda mod, inp, out: captured.setdefault("out", out))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        feats = enc(x)
        captured.clear()
        model(x)
    handle.remove()
    depth = len(trained.spec.channels) - 1  # strided levels
    assert feats.shape == (2, trained.spec.channels[-1], 32 // 2**depth, 32 // 2**depth)
    assert torch.equal(feats, captured["out"])  # the same activation the full U-Net computes there
    assert {id(p) for p in enc.parameters()} <= {id(p) for p in model.parameters()}


def test_swin_unetr_builds_and_has_an_encoder():
    spec = SegmentationSpec(model="swin-unetr", swin_feature_size=12, num_classes=3)
    model = build_model(spec).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 64, 64)
        assert encoder(model)(x).shape == (1, 16 * 12, 2, 2)
