"""The joint adversarial family: options resolved by loss, WGAN clipping and n_critic, WGAN-GP's
critic, spectral norm, straight-through fake masks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import StepContext, critic_input, prepare_data
from medsynth.generators.registry import parse_options
from medsynth.training.loop import init_state, step_generator

from training_data import squares, tiny_spec


def _state_and_ctx(spec, step: int = 0):
    images, masks = squares(8)
    data = prepare_data(images, masks, spec.data, torch.device("cpu"))
    state = init_state(spec, data)
    ctx = StepContext(spec.options, spec.training, data, step, step_generator(0, step), contextlib.nullcontext)
    return state, ctx


@pytest.mark.parametrize(
    ("loss", "n_critic", "norm", "lr", "optimizer"),
    [("bce", 1, "batch", 2e-4, "Adam"), ("lsgan", 1, "batch", 2e-4, "Adam"), ("hinge", 1, "batch", 2e-4, "Adam"),
     ("wgan", 5, "batch", 5e-5, "RMSprop"), ("wgan-gp", 5, "layer", 1e-4, "Adam")],
)
def test_defaults_follow_the_loss(loss: str, n_critic: int, norm: str, lr: float, optimizer: str) -> None:
    spec = tiny_spec(loss=loss)
    assert spec.options.n_critic == n_critic and spec.options.critic_norm.value == norm
    assert spec.training.lr_d == lr
    state, _ = _state_and_ctx(spec)
    assert type(state.optimizers["discriminator"]).__name__ == optimizer


def test_wgan_gp_refuses_batch_norm_and_options_of_other_families() -> None:
    with pytest.raises(InvalidInput, match="batch norm couples"):
        parse_options({"family": "joint-gan", "loss": "wgan-gp", "critic_norm": "batch"})
    with pytest.raises(InvalidInput, match="mask_bank_size: Extra inputs are not permitted"):
        parse_options({"family": "joint-gan", "mask_bank_size": 8})
    with pytest.raises(InvalidInput, match="loss: Input should be"):
        parse_options({"family": "joint-gan", "loss": "wasserstein"})
    with pytest.raises(InvalidInput, match="unknown generator family 'dcgan'"):
        parse_options({"family": "dcgan"})
    with pytest.raises(InvalidInput, match=r"makes images of \[32, 64, 128\] pixels, not 48"):
        from medsynth.generators.base import DataSpec
        from medsynth.generators.registry import GeneratorSpec

        GeneratorSpec(options=parse_options({"family": "joint-gan"}), training=tiny_spec().training, data=DataSpec(48, 2))


def test_wgan_clips_every_critic_weight_and_runs_n_critic_updates() -> None:
    spec = tiny_spec(loss="wgan", n_critic=3, clip_value=0.005)
    state, ctx = _state_and_ctx(spec)
    spec.family.train_step(state, ctx)
    critic = state.nets["discriminator"]
    assert all(p.abs().max() <= 0.005 + 1e-9 for p in critic.parameters())
    opt = state.optimizers["discriminator"]
    assert len(opt.state) == len(list(critic.parameters()))
    assert {int(s["step"]) for s in opt.state.values()} == {3}


def test_n_critic_counts_critic_updates_per_generator_update() -> None:
    spec = tiny_spec(loss="wgan-gp", n_critic=4)
    state, ctx = _state_and_ctx(spec)
    spec.family.train_step(state, ctx)
    steps_d = {int(s["step"]) for s in state.optimizers["discriminator"].state.values()}
    steps_g = {int(s["step"]) for s in state.optimizers["generator"].state.values()}
    assert steps_d == {4} and steps_g == {1}


def test_wgan_gp_critic_has_no_batch_norm_and_spectral_norm_parametrises_every_conv() -> None:
    state, _ = _state_and_ctx(tiny_spec(loss="wgan-gp"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in state.nets["discriminator"].modules())
    state, _ = _state_and_ctx(tiny_spec(spectral_norm=True))
    convs = [m for m in state.nets["discriminator"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    losses = tiny_spec(spectral_norm=True).family.train_step(state, _state_and_ctx(tiny_spec(spectral_norm=True))[1])
    assert all(torch.isfinite(v) for v in losses.values())


def test_straight_through_fake_masks_are_one_hot_with_softmax_gradients() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    output = torch.cat([torch.zeros(2, 1, 3, 3), logits], dim=1)
    hard = critic_input(output, straight_through=True)[:, 1:]
    assert torch.equal(hard.sum(1), torch.ones(2, 3, 3)) and set(hard.detach().unique().tolist()) == {0.0, 1.0}
    weights = torch.randn_like(hard)
    (hard * weights).sum().backward()
    grad_st = logits.grad.clone()
    logits.grad = None
    soft = critic_input(output, straight_through=False)[:, 1:]
    assert not set(soft.detach().unique().tolist()) <= {0.0, 1.0}
    (soft * weights).sum().backward()
    assert torch.allclose(grad_st, logits.grad)  # the backward pass is the softmax's
