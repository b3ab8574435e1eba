"""The family-agnostic training loop on tiny data, for every registered family: outputs, EMA,
determinism, exact resume, redelivery, cancellation, refusal of a different run, bad input; loss
windows of staged families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsynth.core.errors import Conflict, InvalidInput, JobCancelled
from medsynth.generators.base import SampleMode
from medsynth.sampling.generate import generate
from medsynth.store.local import LocalStore
from medsynth.generators.checkpoint import Checkpoint, load_checkpoint, load_sampling_nets
from medsynth.training.loop import LossCurves, TrainResult, train_generator

from training_data import family_names, same_extra, same_weights, squares, tiny_spec

Data = tuple[np.ndarray, np.ndarray]
FAMILIES = family_names()


def _train(spec, data: Data, store: LocalStore, prefix: str = "run/", **kwargs) -> TrainResult:
    return train_generator(spec, *data, store=store, prefix=prefix, **kwargs)


def _differs_everywhere(a: Checkpoint, b: Checkpoint) -> bool:
    return all(
        any(not torch.equal(a.nets[n][k], b.nets[n][k]) for k in a.nets[n] if a.nets[n][k].is_floating_point())
        for n in a.nets if any(t.is_floating_point() and t.numel() for t in a.nets[n].values()) and n != "mask_bank"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_and_writes_its_outputs(family: str, data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    spec = tiny_spec(family, training={"steps": 3})
    progress: list[tuple[int, dict]] = []
    result = _train(spec, data, store, on_progress=lambda s, m: progress.append((s, m)))

    names = spec.family.loss_names_for(spec.options)
    assert result.step == 3 and result.resumed_from is None and result.final_key == "run/generator.pt"
    assert [s for s, _ in progress] == [1, 2, 3]
    assert all(set(m) == {*names, "steps_per_s"} for _, m in progress)
    assert all(math.isfinite(v) for _, m in progress for v in m.values())
    assert result.curves["step"] == [1, 2, 3] and set(result.curves) == {"step", *names}
    assert sorted(store.list("run/")) == [
        "run/checkpoints/latest.json", "run/checkpoints/step-00000002.pt", "run/curves.json", "run/generator.pt",
    ]
    assert store.get_json("run/checkpoints/latest.json") == {"key": "run/generator.pt", "step": 3}
    assert store.get_json("run/curves.json") == result.curves
    final = load_checkpoint(store.get_bytes("run/generator.pt"), family=family)
    assert final.step == 3 and final.spec == spec and final.metrics["curves"] == result.curves

    nets = load_sampling_nets(final)
    net = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode())
    images, masks = generate(net, 0, range(3))
    assert images.shape == (3, 1, 32, 32) and masks.shape == (3, 32, 32) and np.isfinite(images).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_ema_differs_from_raw_weights_unless_disabled(family: str, data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    with_ema = _train(tiny_spec(family, training={"ema_decay": 0.999}), data, store, "a/").checkpoint
    without = _train(tiny_spec(family, training={"ema_decay": 0.0}), data, store, "b/").checkpoint
    assert with_ema.ema and with_ema.ema.keys() == without.ema.keys()
    for name in with_ema.ema:
        raw, ema = with_ema.nets[name], with_ema.ema[name]
        params = [k for k in raw if raw[k].is_floating_point() and "running" not in k]
        assert any(not torch.equal(raw[k], ema[k]) for k in params), name
        assert all(torch.equal(without.nets[name][k], without.ema[name][k]) for k in without.ema[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_other_seed_other_weights(family: str, data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    a = _train(tiny_spec(family, training={"seed": 1}), data, store, "a/").checkpoint
    b = _train(tiny_spec(family, training={"seed": 1}), data, store, "b/").checkpoint
    c = _train(tiny_spec(family, training={"seed": 2}), data, store, "c/").checkpoint
    assert same_weights(a, b)
    assert _differs_everywhere(a, c)


class Crash(Exception):
    pass


def _crash_at(step: int):
    def on_progress(done: int, metrics: dict) -> None:
        if done == step:
            raise Crash(f"simulated crash after step {done}")

    return on_progress


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("checkpoint_every", "crash_at"), [(4, 4), (3, 4)])
def test_resume_reproduces_an_uninterrupted_run_exactly(
    family: str, checkpoint_every: int, crash_at: int, data: Data, tmp_path
) -> None:
    """Train 8 steps straight vs crash after ``crash_at`` and resume from the store → identical state.

    The second case crashes one step after a checkpoint, in the middle of a loss-curve window."""
    spec = tiny_spec(family, training={"steps": 8, "checkpoint_every": checkpoint_every, "log_every": 2})
    store = LocalStore(tmp_path)
    straight = _train(spec, data, store, "straight/")

    with pytest.raises(Crash):
        _train(spec, data, store, "resumed/", on_progress=_crash_at(crash_at))
    assert not store.exists("resumed/generator.pt")
    last = (crash_at // checkpoint_every) * checkpoint_every
    assert store.get_json("resumed/checkpoints/latest.json")["step"] == last

    resumed = _train(spec, data, store, "resumed/")
    assert resumed.resumed_from == last
    assert same_weights(straight.checkpoint, resumed.checkpoint)
    for name, opt in straight.checkpoint.optimizers.items():
        for key, value in opt["state"].get(0, {}).items():
            assert torch.equal(value, resumed.checkpoint.optimizers[name]["state"][0][key]), (name, key)
    assert same_extra(resumed.checkpoint.extra, straight.checkpoint.extra)
    assert resumed.curves == straight.curves


def test_redelivery_of_a_finished_run_rewrites_the_same_result(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    first = _train(tiny_spec(), data, store)
    again = _train(tiny_spec(), data, store, on_progress=_crash_at(-1))
    assert again.resumed_from == 4 and again.curves == first.curves
    assert same_weights(first.checkpoint, again.checkpoint)


def test_longer_run_continues_from_a_finished_one(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    _train(tiny_spec(training={"steps": 4}), data, store, "a/")
    extended = _train(tiny_spec(training={"steps": 6}), data, store, "a/")
    straight = _train(tiny_spec(training={"steps": 6}), data, store, "b/")
    assert extended.resumed_from == 4
    assert same_weights(extended.checkpoint, straight.checkpoint)


def test_resume_refuses_a_different_run(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    _train(tiny_spec(), data, store)
    with pytest.raises(Conflict, match="lr_g: 0.0002 -> 0.001"):
        _train(tiny_spec(training={"lr_g": 1e-3}), data, store)
    with pytest.raises(Conflict, match="options: "):
        _train(tiny_spec(loss="lsgan"), data, store)
    with pytest.raises(Conflict, match="family: 'joint-gan' -> 'spade'"):
        _train(tiny_spec("spade"), data, store)
    with pytest.raises(Conflict, match="past steps=2"):
        _train(tiny_spec(training={"steps": 2}), data, store)


def test_cancellation_stops_between_steps_and_leaves_a_valid_checkpoint(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    seen: list[int] = []

    def cancel(step: int, metrics: dict) -> None:
        seen.append(step)
        if step == 3:
            raise JobCancelled("cancelled by the user")

    with pytest.raises(JobCancelled):
        _train(tiny_spec(training={"steps": 10}), data, store, on_progress=cancel)
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
        _train(tiny_spec(), data, store)


def test_truncated_checkpoint_is_reported(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    _train(tiny_spec(), data, store)
    whole = store.get_bytes("run/checkpoints/step-00000002.pt")
    store.put_bytes("run/checkpoints/step-00000002.pt", whole[: len(whole) // 2])
    store.put_json("run/checkpoints/latest.json", {"key": "run/checkpoints/step-00000002.pt", "step": 2})
    with pytest.raises(InvalidInput, match="corrupt checkpoint"):
        _train(tiny_spec(), data, store)


def test_leaves_global_state_alone(data: Data, tmp_path) -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    _train(tiny_spec(training={"steps": 1}), data, LocalStore(tmp_path))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before


def test_bf16_autocast_trains(data: Data, tmp_path) -> None:
    result = _train(tiny_spec(training={"steps": 2, "precision": "bf16"}), data, LocalStore(tmp_path))
    assert all(math.isfinite(v) for v in result.curves["loss_d"] + result.curves["loss_g"])
    assert all(t.dtype == torch.float32 for t in result.checkpoint.nets["generator"].values() if t.is_floating_point())


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
        train_generator(tiny_spec(), images, masks, store=LocalStore(tmp_path), prefix="run/")


def test_conditions_are_checked(tmp_path) -> None:
    images, masks = squares(8)
    with pytest.raises(InvalidInput, match="no conditions were given"):
        train_generator(tiny_spec(num_conditions=3), images, masks, store=LocalStore(tmp_path), prefix="run/")


def test_time_budget_stops_at_a_log_step_and_a_redelivery_does_not_train_on(data: Data, tmp_path) -> None:
    store = LocalStore(tmp_path)
    spec = tiny_spec(training={"steps": 10_000, "time_budget_s": 1e-3, "log_every": 2, "checkpoint_every": 1000})
    result = _train(spec, data, store)
    assert result.step == 2 and result.checkpoint.step == 2 and result.curves["step"] == [2]
    assert result.checkpoint.metrics["stopped_by_time_budget"] is True
    again = _train(spec, data, store)
    assert again.step == 2 and again.resumed_from == 2 and same_weights(again.checkpoint, result.checkpoint)


def test_loss_curves_average_each_loss_over_the_steps_that_reported_it() -> None:
    """A staged family reports its current stage's losses only; a window checkpointed before per-loss
    counts (one count for every loss) reads back as such."""
    curves = LossCurves(("a", "b"), device=torch.device("cpu"))
    curves.add({"a": torch.tensor(1.0)})
    curves.add({"a": torch.tensor(3.0), "b": torch.tensor(5.0)})
    assert curves.flush(2) == {"a": 2.0, "b": 5.0}
    curves.add({"a": torch.tensor(4.0)})
    assert curves.flush(3) == {"a": 4.0}
    assert curves.points() == {"step": [2, 3], "a": [2.0, 4.0], "b": [5.0, None]}
    with pytest.raises(InvalidInput, match="expected some of"):
        curves.add({"c": torch.tensor(0.0)})
    old = LossCurves.from_metrics(("a", "b"), {"curves": {"step": [], "a": [], "b": []}, "window": {"sums": [2.0, 6.0], "count": 2}},
                                  device=torch.device("cpu"))
    assert old.flush(4) == {"a": 1.0, "b": 3.0}


@pytest.mark.parametrize("decay", [0.0, 0.999])
def test_the_ema_update_is_one_multi_tensor_op_equal_to_the_per_parameter_one(decay: float) -> None:
    """update_ema lerps all parameters at once (a few kernel launches on a GPU, not one per parameter); on the
    CPU it computes exactly the per-parameter lerp_/copy_ it replaced, so CPU runs are unchanged."""
    from medsynth.training.loop import update_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 3))
    ema = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 3))
    model[1].running_mean.normal_()
    model[1].num_batches_tracked += 7
    expected = [p.detach().clone() for p in ema.parameters()]
    beta = min(decay, (1 + 5) / (10 + 5))
    for e, p in zip(expected, model.parameters()):
        e.copy_(p) if beta == 0 else e.lerp_(p, 1 - beta)
    update_ema(ema, model, decay, 5)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), expected))
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), model.buffers()))
    with pytest.raises(ValueError, match="parameters"):
        update_ema(torch.nn.Linear(2, 2), model, decay, 5)
