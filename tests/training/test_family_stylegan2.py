"""StyleGAN2 family: modulated convolutions, R1, style mixing, ADA, conditioning, training steps and the
sampling net. Tiny widths at 32×32 so that the whole file runs in a few seconds on one thread."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import pydantic
import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import DataSpec, SampleMode, StepContext, TrainingData, TrainingOptions, TrainState, prepare_data
from medsynth.generators.losses import r1_penalty
from medsynth.generators.stylegan2 import StyleGan2, StyleGan2Options, ada_augment, adjust_ada_p, mixing_cutoffs
from medsynth.models.stylegan2 import Discriminator, Generator, ModulatedConv2d, modulated_conv2d

SIZE = 32
CLASSES = 3
TINY = {"latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16}
FAMILY = StyleGan2()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data(num_conditions: int = 0, count: int = 8) -> TrainingData:
    """Bright squares (mask class 1) and dimmer discs' bounding boxes (class 2) on dark noise."""
    rng = np.random.default_rng(0)
    images = (0.1 * rng.random((count, 1, SIZE, SIZE))).astype(np.float32)
    masks = np.zeros((count, SIZE, SIZE), np.int64)
    for i in range(count):
        y, x = rng.integers(0, SIZE // 2, 2)
        masks[i, y : y + 10, x : x + 10] = 1 + i % 2
        images[i, 0, y : y + 10, x : x + 10] = 0.5 + 0.4 * (i % 2)
    conditions = np.arange(count) % num_conditions if num_conditions else None
    return prepare_data(images, masks, DataSpec(SIZE, CLASSES, num_conditions), torch.device("cpu"), conditions)


def _training(batch_size: int = 4) -> TrainingOptions:
    return TrainingOptions(batch_size=batch_size, lr_g=0.0025, lr_d=0.0025, betas=(0.0, 0.99))


def _state(opts: StyleGan2Options, data: TrainingData, training: TrainingOptions | None = None) -> TrainState:
    torch.manual_seed(0)
    return FAMILY.init_state(opts, training or _training(), data)


def _step(state: TrainState, opts: StyleGan2Options, data: TrainingData, step: int,
          training: TrainingOptions | None = None) -> dict[str, torch.Tensor]:
    ctx = StepContext(options=opts, training=training or _training(), data=data, step=step,
                      rng=torch.Generator().manual_seed(1000 + step), autocast=contextlib.nullcontext)
    return FAMILY.train_step(state, ctx)


def _noise(net, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=g) for shape in net.noise_shapes]


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# Modulated convolution, R1 ------------------------------------------------------------------------


def test_demodulated_convolution_keeps_unit_output_variance() -> None:
    # For i.i.d. unit-variance input, each output pixel is Σ w'·x with Σ w'² = 1 after demodulation, so
    # its variance is exactly 1 whatever the weights and styles. Each (sample, channel) std below is
    # estimated from 48² interior pixels (no zero padding): relative standard error 1/√(2·2304) ≈ 1.5 %,
    # so ±10 % is over 6σ for each of the 64 estimates.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 50, 50, generator=g)
    weight = torch.randn(16, 32, 3, 3, generator=g)
    styles = 3 * torch.randn(4, 32, generator=g)
    std = modulated_conv2d(x, weight, styles, demodulate=True)[..., 1:-1, 1:-1].std(dim=(2, 3))
    assert std.shape == (4, 16)
    assert torch.allclose(std, torch.ones_like(std), atol=0.1), std
    raw = modulated_conv2d(x, weight, styles, demodulate=False)[..., 1:-1, 1:-1].std(dim=(2, 3))
    assert ((raw - 1).abs() > 0.5).all()  # ≈ 3·√288 ≈ 50 without demodulation
    # the module (equalised-lr weights, affine styles of a random w) behaves the same
    conv = ModulatedConv2d(32, 16, 3, style_dim=8)
    std = conv(x, torch.randn(4, 8, generator=g)).detach()[..., 1:-1, 1:-1].std(dim=(2, 3))
    assert torch.allclose(std, torch.ones_like(std), atol=0.1), std


@pytest.mark.parametrize("demodulate", [True, False])
def test_the_unfused_modulated_convolution_is_the_same_function(demodulate: bool) -> None:
    """What GPU training runs (StyleGAN2-ADA: the grouped form's backward is slow) equals the grouped form
    up to rounding, values and input gradients alike; CPU training and every sampling pass stay grouped."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 5, 3, 3, generator=g)
    styles = torch.randn(4, 5, generator=g)
    x = torch.randn(4, 5, 9, 9, generator=g, requires_grad=True)
    fused = modulated_conv2d(x, weight, styles, demodulate=demodulate)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    unfused = modulated_conv2d(x, weight, styles, demodulate=demodulate, fused=False)
    (grad_unfused,) = torch.autograd.grad(unfused.square().sum(), x)
    assert torch.allclose(unfused, fused, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad_unfused, grad_fused, rtol=1e-4, atol=1e-4)
    conv = ModulatedConv2d(5, 6, 3, style_dim=8).train()
    w = torch.randn(4, 8, generator=g)
    expected = modulated_conv2d(x, conv.weight * conv.weight_gain, conv.affine(w), demodulate=True)
    assert torch.equal(conv(x, w), expected)  # on the CPU, training too: the grouped form, bit for bit as before


def test_an_r1_steps_real_pass_runs_in_float32_under_bf16_autocast() -> None:
    """R1 differentiates the real scores with respect to the real inputs: through bf16 that gradient is too
    coarse, so an R1 step's real pass leaves autocast; the fake passes and other steps keep it."""
    opts = StyleGan2Options(**TINY, r1_every=2, augment="none")
    data = _data()
    state = _state(opts, data)
    seen: list[tuple[bool, bool]] = []  # (input requires grad: the real pass of an R1 step, autocast on)
    hook = state.nets["discriminator"].register_forward_pre_hook(
        lambda module, args: seen.append((args[0].requires_grad and args[0].is_leaf, torch.is_autocast_enabled("cpu"))))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    for step in range(2):
        ctx = StepContext(options=opts, training=_training(), data=data, step=step,
                          rng=torch.Generator().manual_seed(1000 + step), autocast=bf16)
        losses = FAMILY.train_step(state, ctx)
        assert all(torch.isfinite(v) for v in losses.values())
    hook.remove()
    assert seen[0] == (True, False)  # step 0 (an R1 step): the real pass, outside autocast
    assert all(autocast for _, autocast in seen[1:3]) and seen[3] == (False, True)  # fakes; step 1's real pass


def test_r1_penalty_on_a_quadratic_discriminator() -> None:
    # D(x) = ½‖x‖² per sample: ∇ₓD = x, so R1 = mean over samples of ‖x‖².
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    scores = 0.5 * x.flatten(1).square().sum(dim=1)
    r1 = r1_penalty(scores, x)
    expected = x.detach().flatten(1).square().sum(dim=1).mean()
    assert torch.allclose(r1, expected)
    r1.backward()  # differentiable (create_graph): d/dx mean ‖x‖² = 2x / N
    assert torch.allclose(x.grad, 2 * x.detach() / 5)


# Training -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["ada", "diffaugment", "none"])
def test_train_steps_give_finite_losses_and_update_both_networks(augment: str) -> None:
    opts = StyleGan2Options(**TINY, r1_every=2, augment=augment, ada_interval=2)
    data = _data()
    state = _state(opts, data)
    before = {name: _snapshot(net) for name, net in state.nets.items()}
    r1_values = []
    for step in range(3):  # steps 0 and 2 are R1 steps
        losses = _step(state, opts, data, step)
        assert set(losses) == set(FAMILY.loss_names)
        assert all(v.shape == () and torch.isfinite(v) for v in losses.values()), losses
        r1_values.append(float(losses["r1"]))
    assert r1_values[0] > 0 and r1_values[1] == r1_values[0] and r1_values[2] != r1_values[1]  # lazy
    for name, net in state.nets.items():
        after = net.state_dict()
        assert any(not torch.equal(before[name][k], after[k]) for k in after), name
    buffer = io.BytesIO()
    torch.save(state.extra, buffer)  # plain tensors and numbers: the checkpoint's weights_only load takes them
    buffer.seek(0)
    assert set(torch.load(buffer, weights_only=True)) == set(state.extra)


def test_resuming_from_saved_state_is_exact() -> None:
    opts = StyleGan2Options(**TINY, r1_every=2, ada_interval=3, ada_kimg=0.01)
    data = _data()
    straight = _state(opts, data)
    for step in range(4):
        _step(straight, opts, data, step)

    first = _state(opts, data)
    for step in range(2):
        _step(first, opts, data, step)
    buffer = io.BytesIO()
    torch.save({"nets": {k: v.state_dict() for k, v in first.nets.items()},
                "optimizers": {k: v.state_dict() for k, v in first.optimizers.items()}, "extra": first.extra}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _state(opts, data)
    for name in resumed.nets:
        resumed.nets[name].load_state_dict(saved["nets"][name])
        resumed.optimizers[name].load_state_dict(saved["optimizers"][name])
    resumed.extra = saved["extra"]
    for step in range(2, 4):
        _step(resumed, opts, data, step)
    assert float(straight.extra["ada_p"]) > 0  # p was adjusted once, across the resume point
    assert torch.equal(torch.as_tensor(straight.extra["ada_p"]), torch.as_tensor(resumed.extra["ada_p"]))
    for name, net in straight.nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, resumed.nets[name].state_dict()[key]), (name, key)


def test_style_mixing_uses_the_second_latent_from_the_cutoff() -> None:
    torch.manual_seed(0)
    g = Generator(SIZE, CLASSES, latent_dim=16, style_dim=16, mapping_layers=2, channel_base=256, channel_max=16).eval()
    z, z_mix = torch.randn(4, 16), torch.randn(4, 16)
    noise, cond = _noise(g, 4), torch.zeros(4, dtype=torch.int64)
    with torch.no_grad():
        one = g(z, cond, noise)
        kept = g(z, cond, noise, z_mix, torch.full((4,), g.num_ws))
        mixed = g(z, cond, noise, z_mix, torch.tensor([1, 2, 4, g.num_ws - 1]))
    assert torch.equal(one, kept)
    assert ((mixed - one).flatten(1).abs().amax(dim=1) > 1e-3).all()

    rng = torch.Generator().manual_seed(0)
    always = mixing_cutoffs(256, g.num_ws, 1.0, rng)
    assert ((always >= 1) & (always < g.num_ws)).all() and len(always.unique()) == g.num_ws - 1
    assert (mixing_cutoffs(256, g.num_ws, 0.0, rng) == g.num_ws).all()


# ADA ----------------------------------------------------------------------------------------------


def test_ada_p_moves_toward_the_target_and_stays_in_unit_interval() -> None:
    p = torch.tensor(0.5, dtype=torch.float64)
    count = 64
    assert adjust_ada_p(p, torch.tensor(float(count)), count, 0.6, 1.0) > p  # D over-confident on reals
    assert adjust_ada_p(p, torch.tensor(-float(count)), count, 0.6, 1.0) < p
    assert adjust_ada_p(torch.tensor(0.99), torch.tensor(64.0), 64, 0.6, 0.01) == 1.0
    assert adjust_ada_p(torch.tensor(0.01), torch.tensor(-64.0), 64, 0.6, 0.01) == 0.0

    opts = StyleGan2Options(**TINY, augment="ada", ada_interval=2, ada_kimg=0.1, r1_every=100)
    data = _data()
    for bias, moves_up in ((1e3, True), (-1e3, False)):  # D(real) ≫ 0 (over-confident), then ≪ 0
        state = _state(opts, data)
        with torch.no_grad():
            state.nets["discriminator"].out.bias.fill_(bias)
        state.extra["ada_p"] = torch.tensor(0.95 if moves_up else 0.05, dtype=torch.float64)
        values = [float(_step(state, opts, data, step)["ada_p"]) for step in range(4)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values[-1] == (1.0 if moves_up else 0.0), values  # 8 images / 100 per adjustment, clamped
        assert values[0] == pytest.approx(0.95 if moves_up else 0.05)  # adjusted only every ada_interval steps


def _joint(n: int = 16, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    fg = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
        fg[i, :, y : y + 9, x : x + 6] = 1  # asymmetric, so flips and turns show
    return torch.cat([2 * fg - 1, 1 - fg, fg], dim=1)


def test_ada_augment_keeps_image_and_mask_aligned() -> None:
    x = _joint()
    assert torch.equal(ada_augment(x, 0.0, torch.Generator().manual_seed(1)), x)
    source = x.clone().requires_grad_(True)
    out = ada_augment(source, 1.0, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out[:, 1:].sum(dim=1), torch.ones_like(out[:, 0]))  # still one-hot
    fg = out[:, 2].bool()
    for i in range(x.shape[0]):
        image = out[i, 0].detach()
        inside, outside = image[fg[i]], image[~fg[i]]
        # colour is an increasing affine map per sample, so the image is still two-valued along the mask
        assert inside.numel() > 0 and inside.std() < 1e-5 and outside.std() < 1e-5 and inside[0] > outside[0]
    out.square().sum().backward()
    assert source.grad is not None and torch.isfinite(source.grad).all()


# Conditioning, checks, options --------------------------------------------------------------------


def test_conditional_generator_uses_the_condition_and_unconditional_ignores_it() -> None:
    spec = DataSpec(SIZE, CLASSES, num_conditions=3)
    for conditional in (True, False):
        opts = StyleGan2Options(**TINY, conditional=conditional)
        assert FAMILY.conditional(opts) is conditional
        torch.manual_seed(0)
        nets = FAMILY.sampling_nets(opts, spec)
        net = FAMILY.sampling_net(opts, spec, nets, SampleMode(condition=1 if conditional else None))
        noise = _noise(net, 2)
        with torch.no_grad():
            a = net(noise, torch.tensor([0, 0]))
            b = net(noise, torch.tensor([2, 2]))
        assert torch.equal(a, b) is not conditional
    d = Discriminator(SIZE, 3, channel_base=256, channel_max=16, num_conditions=3)
    x = _joint(2)
    assert not torch.equal(d(x, torch.tensor([0, 0])), d(x, torch.tensor([1, 1])))


def test_check_rejects_conditional_without_conditions() -> None:
    opts = StyleGan2Options(**TINY, conditional=True)
    FAMILY.check(opts, DataSpec(SIZE, CLASSES, num_conditions=2))
    with pytest.raises(InvalidInput, match="conditions"):
        FAMILY.check(opts, DataSpec(SIZE, CLASSES))
    with pytest.raises(InvalidInput):
        FAMILY.check(StyleGan2Options(), DataSpec(16, CLASSES))  # base check: image size
    with pytest.raises(InvalidInput):  # an unconditional generator takes no condition
        FAMILY.check_mode(StyleGan2Options(), DataSpec(SIZE, CLASSES, 2), SampleMode(condition=0))


@pytest.mark.parametrize("bad", [
    {"style_mixing": 1.5}, {"augment": "cutmix"}, {"r1_every": 0}, {"r1_gamma": -1.0}, {"channel_max": 4},
    {"ada_target": 1.0}, {"mapping_layers": 0}, {"family": "joint-gan"}, {"truncation": 0.7},
])
def test_bad_options_raise_validation_errors(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        StyleGan2Options(**bad)


# Sampling -----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_sampling_net_shapes_independence_and_trace() -> None:
    opts = StyleGan2Options(**TINY, conditional=True)
    data = _data(num_conditions=2)
    state = _state(opts, data)
    nets = FAMILY.sampling_nets(opts, data.spec)
    assert set(nets) <= set(state.nets)
    for name, module in nets.items():
        module.load_state_dict(state.nets[name].state_dict(), strict=True)
    unconditional = StyleGan2Options(**TINY)
    for name, module in FAMILY.sampling_nets(unconditional, data.spec).items():
        module.load_state_dict(_state(unconditional, data).nets[name].state_dict(), strict=True)

    net = FAMILY.sampling_net(opts, data.spec, nets, SampleMode(condition=1))
    generator = nets["generator"]
    assert net.noise_shapes == ((16,), *[(1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)])
    assert len(net.noise_shapes) == generator.num_ws  # z, then one map per synthesis conv
    noise, cond = _noise(net, 3), torch.tensor([1, 0, 1])
    with torch.no_grad():
        out = net(noise, cond)
        assert out.shape == (3, 1 + CLASSES, SIZE, SIZE) and torch.isfinite(out).all()
        for i in range(3):
            single = net([t[i : i + 1] for t in noise], cond[i : i + 1])
            assert torch.allclose(single, out[i : i + 1], atol=1e-5)
        traced = torch.jit.trace(net, (noise, cond))
        assert torch.allclose(traced(noise, cond), out, atol=1e-6)
        other = _noise(net, 3, seed=5)
        assert torch.allclose(traced(other, cond), net(other, cond), atol=1e-6)
