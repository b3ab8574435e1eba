"""The training loop on tiny data: every loss, EMA, augmentation, determinism, resume, cancellation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsynth.core.errors import Conflict, InvalidInput, JobCancelled
from medsynth.models.gan import GanLoss, GeneratorConfig, latents, to_pair
from medsynth.store.local import LocalStore
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, load_generator
from medsynth.training.gan_loop import TrainResult, train_gan

from training_data import squares, tiny_config

Data = tuple[np.ndarray, np.ndarray]
NETS = ("generator", "generator_ema", "discriminator")


def _train(config, data: Data, store: LocalStore, prefix: str = "run/", **kwargs) -> TrainResult:
    return train_gan(config, *data, store=store, prefix=prefix, **kwargs)


def _same_state(a: Checkpoint, b: Checkpoint, name: str) -> bool:
    sa, sb = getattr(a, name), getattr(b, name)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("loss", list(GanLoss))
def test_each_loss_trains_and_writes_its_outputs(loss: GanLoss, data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    progress: list[tuple[int, dict]] = []
    result = _train(tiny_config(loss=loss, steps=3), data, store, on_progress=lambda s, m: progress.append((s, m)))

    assert result.step == 3 and result.resumed_from is None and result.final_key == "run/generator.pt"
    assert [s for s, _ in progress] == [1, 2, 3]
    assert all(set(m) == {"loss_g", "loss_d", "steps_per_s"} for _, m in progress)
    assert all(math.isfinite(v) for _, m in progress for v in m.values())
    assert result.curves["step"] == [1, 2, 3]
    assert result.curves["loss_d"] == [m["loss_d"] for _, m in progress]

    assert sorted(store.list("run/")) == [
        "run/checkpoints/latest.json", "run/checkpoints/step-00000002.pt", "run/curves.json", "run/generator.pt",
    ]
    assert store.get_json("run/checkpoints/latest.json") == {"key": "run/generator.pt", "step": 3}
    assert store.get_json("run/curves.json") == result.curves
    final = load_checkpoint(store.get_bytes("run/generator.pt"))
    assert final.step == 3 and final.config == result.checkpoint.config
    assert final.metrics["curves"] == result.curves
    assert load_checkpoint(store.get_bytes("run/checkpoints/step-00000002.pt")).step == 2
    image, mask = to_pair(load_generator(final)(latents(0, 2, 16)))
    assert image.shape == (2, 1, 32, 32) and mask.shape == (2, 32, 32)


def test_ema_differs_from_raw_weights_unless_disabled(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    with_ema = _train(tiny_config(ema_decay=0.999), data, store, "a/").checkpoint
    without = _train(tiny_config(ema_decay=0.0), data, store, "b/").checkpoint
    params = [k for k in with_ema.generator if "running" not in k and "num_batches" not in k]
    assert any(not torch.equal(with_ema.generator[k], with_ema.generator_ema[k]) for k in params)
    assert all(torch.equal(without.generator[k], without.generator_ema[k]) for k in without.generator)
    # BatchNorm statistics are copied, not averaged
    buffers = [k for k in with_ema.generator if "running" in k]
    assert buffers and all(torch.equal(with_ema.generator[k], with_ema.generator_ema[k]) for k in buffers)


def test_diff_augment_trains(data: Data, tmp_path) -> None:
    plain = _train(tiny_config(steps=2), data, LocalStore(tmp_path), "a/")
    augmented = _train(tiny_config(steps=2, diff_augment=True), data, LocalStore(tmp_path), "b/")
    assert all(math.isfinite(v) for v in augmented.curves["loss_d"] + augmented.curves["loss_g"])
    assert augmented.curves != plain.curves


def test_same_seed_same_weights_other_seed_other_weights(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    a = _train(tiny_config(seed=1, diff_augment=True), data, store, "a/").checkpoint
    b = _train(tiny_config(seed=1, diff_augment=True), data, store, "b/").checkpoint
    c = _train(tiny_config(seed=2, diff_augment=True), data, store, "c/").checkpoint
    assert all(_same_state(a, b, name) for name in NETS)
    assert not any(_same_state(a, c, name) for name in NETS)


class Crash(Exception):
    pass


def _crash_at(step: int):
    def on_progress(done: int, metrics: dict) -> None:
        if done == step:
            raise Crash(f"simulated crash after step {done}")

    return on_progress


@pytest.mark.parametrize(("checkpoint_every", "crash_at"), [(4, 4), (3, 4)])
def test_resume_reproduces_an_uninterrupted_run_exactly(
    checkpoint_every: int, crash_at: int, data: Data, tmp_path
) -> None:
    """Train 2N steps straight vs N steps, crash, resume from the store → identical final state.

    The second case crashes one step after a checkpoint, in the middle of a loss-curve window."""
    config = tiny_config(steps=8, checkpoint_every=checkpoint_every, log_every=2, diff_augment=True)
    store = LocalStore(tmp_path)
    straight = _train(config, data, store, "straight/")

    with pytest.raises(Crash):
        _train(config, data, store, "resumed/", on_progress=_crash_at(crash_at))
    assert not store.exists("resumed/generator.pt")
    last = (crash_at // checkpoint_every) * checkpoint_every
    assert store.get_json("resumed/checkpoints/latest.json")["step"] == last

    resumed = _train(config, data, store, "resumed/")
    assert resumed.resumed_from == last
    for name in NETS:
        assert _same_state(straight.checkpoint, resumed.checkpoint, name), name
    assert resumed.checkpoint.opt_g["state"][0]["exp_avg"].equal(straight.checkpoint.opt_g["state"][0]["exp_avg"])
    assert resumed.curves == straight.curves


def test_redelivery_of_a_finished_run_rewrites_the_same_result(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    first = _train(tiny_config(), data, store)
    again = _train(tiny_config(), data, store, on_progress=_crash_at(-1))
    assert again.resumed_from == 4 and again.curves == first.curves
    assert all(_same_state(first.checkpoint, again.checkpoint, name) for name in NETS)


def test_longer_run_continues_from_a_finished_one(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    _train(tiny_config(steps=4), data, store, "a/")
    extended = _train(tiny_config(steps=6), data, store, "a/")
    straight = _train(tiny_config(steps=6), data, store, "b/")
    assert extended.resumed_from == 4
    assert all(_same_state(extended.checkpoint, straight.checkpoint, name) for name in NETS)


def test_resume_refuses_a_different_run(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    _train(tiny_config(), data, store)
    with pytest.raises(Conflict, match="lr_g: 0.0002 -> 0.001"):
        _train(tiny_config(lr_g=1e-3), data, store)
    with pytest.raises(Conflict, match="past steps=2"):
        _train(tiny_config(steps=2), data, store)


def test_cancellation_stops_between_steps_and_leaves_a_valid_checkpoint(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    seen: list[int] = []

    def cancel(step: int, metrics: dict) -> None:
        seen.append(step)
        if step == 3:
            raise JobCancelled("cancelled by the user")

    with pytest.raises(JobCancelled):
        _train(tiny_config(steps=10), data, store, on_progress=cancel)
    assert seen == [1, 2, 3]
    pointer = store.get_json("run/checkpoints/latest.json")
    assert pointer == {"key": "run/checkpoints/step-00000002.pt", "step": 2}
    assert load_checkpoint(store.get_bytes(pointer["key"])).step == 2
    assert not store.exists("run/generator.pt")


def test_corrupt_latest_checkpoint_is_reported(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("run/checkpoints/step-00000002.pt", b"garbage")
    store.put_json("run/checkpoints/latest.json", {"key": "run/checkpoints/step-00000002.pt", "step": 2})
    with pytest.raises(InvalidInput, match="corrupt checkpoint"):
        _train(tiny_config(), data, store)


def test_leaves_global_state_alone(data: Data, tmp_path) -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    _train(tiny_config(steps=1), data, LocalStore(tmp_path))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before


@pytest.mark.parametrize(
    ("images", "masks", "named"),
    [
        (np.zeros((4, 1, 16, 16), np.float32), np.zeros((4, 32, 32), np.uint8), r"\(4, 1, 16, 16\)"),
        (np.zeros((4, 1, 32, 32), np.uint8), np.zeros((4, 32, 32), np.uint8), "uint8"),
        (np.full((4, 1, 32, 32), 255.0, np.float32), np.zeros((4, 32, 32), np.uint8), "255"),
        (np.full((4, 1, 32, 32), np.nan, np.float32), np.zeros((4, 32, 32), np.uint8), "NaN"),
        (np.zeros((4, 1, 32, 32), np.float32), np.full((4, 32, 32), 2, np.uint8), r"\[2, 2\]"),
        (np.zeros((4, 1, 32, 32), np.float32), np.zeros((4, 32, 32), np.float32), "float32"),
        (np.zeros((4, 1, 32, 32), np.float32), np.zeros((3, 32, 32), np.uint8), "4 images and 3 masks"),
    ],
)
def test_bad_arrays_are_named(images: np.ndarray, masks: np.ndarray, named: str, tmp_path) -> None:
    with pytest.raises(InvalidInput, match=named):
        train_gan(tiny_config(), images, masks, store=LocalStore(tmp_path), prefix="run/")


def test_bad_prefix(data: Data, tmp_path) -> None:
    with pytest.raises(InvalidInput, match="'../x/'"):
        _train(tiny_config(), data, LocalStore(tmp_path), "../x/")


def test_learns_joint_image_and_mask(tmp_path) -> None:
    """Smoke test of learning on bright squares with square masks (about 18% foreground).

    Untrained, the generated image is equally grey inside and outside its own mask; after 250 steps
    the generated images are clearly brighter where the generated masks say foreground, and the
    masks cover a plausible fraction of the image. With the generator's updates switched off this
    fails (contrast about 0, foreground about 0.4-0.5)."""
    config = tiny_config(
        generator=GeneratorConfig(image_size=32, num_classes=2, latent_dim=32, base_channels=16),
        steps=250, batch_size=16, loss=GanLoss.bce, checkpoint_every=250, log_every=50,
    )
    result = _train(config, squares(256), LocalStore(tmp_path))
    assert all(math.isfinite(v) for v in result.curves["loss_d"] + result.curves["loss_g"])

    with torch.no_grad():
        image, mask = to_pair(load_generator(result.checkpoint)(latents(123, 64, 32)))
    foreground = mask.bool()
    fraction = foreground.float().mean().item()
    contrast = image[:, 0][foreground].mean().item() - image[:, 0][~foreground].mean().item()
    assert 0.02 < fraction < 0.5, fraction
    assert contrast > 0.1, contrast


def test_resume_in_another_environment_warns(data: Data, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalStore(tmp_path)
    first = _train(tiny_config(steps=2), data, store)
    assert first.checkpoint.metrics["environment"]["threads"] == 1
    torch.set_num_threads(2)  # restored by the one_thread fixture
    with caplog.at_level("WARNING", logger="medsynth.training.gan_loop"):
        _train(tiny_config(steps=4), data, store)
    assert "different environment" in caplog.text
