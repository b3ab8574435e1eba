"""The SPADE family on tiny data: training steps, SPADE conditioning, both mask sources, the mask bank,
sample independence, tracing, export loading, options."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import pydantic
import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import (
    DataSpec,
    MaskSource,
    SampleMode,
    SamplingNet,
    StepContext,
    TrainingData,
    TrainingOptions,
    TrainState,
    prepare_data,
)
from medsynth.generators.spade import Spade, SpadeOptions
from medsynth.models.spade import MaskBank, SpadeGenerator, SpadeResBlock, instance_norm, one_hot

SIZE, CLASSES = 32, 3
SPEC = DataSpec(image_size=SIZE, num_classes=CLASSES)
TINY = {"latent_dim": 8, "base_channels": 4, "spade_hidden": 4, "disc_channels": 4,
        "mask_latent_dim": 8, "mask_base_channels": 4}  # fmt: skip
FAMILY = Spade()
MODES = [SampleMode(MaskSource.generated), SampleMode(MaskSource.real_deformed)]


def _data(count: int = 10, size: int = SIZE) -> TrainingData:
    """Dark noisy images with a bright square (class 1) and a grey disc (class 2)."""
    rng = np.random.default_rng(0)
    images = (0.1 * rng.random((count, 1, size, size))).astype(np.float32)
    masks = np.zeros((count, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        y, x = rng.integers(0, size // 2, 2)
        masks[i, y : y + size // 3, x : x + size // 3] = 1
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] = 2
    images[:, 0][masks == 1] = 0.9
    images[:, 0][masks == 2] = 0.5
    return prepare_data(images, masks, DataSpec(image_size=size, num_classes=CLASSES), torch.device("cpu"))


def _training(**overrides: object) -> TrainingOptions:
    values: dict = {"batch_size": 4, "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.999)}
    return TrainingOptions(**{**values, **overrides})


def _state(options: SpadeOptions, data: TrainingData, seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    return FAMILY.init_state(options, _training(), data)


def _run(state: TrainState, options: SpadeOptions, data: TrainingData, steps: int, bf16: bool = False) -> list[dict]:
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    out = []
    for step in range(steps):
        ctx = StepContext(options=options, training=_training(), data=data, step=step,
                          rng=torch.Generator().manual_seed(1000 + step), autocast=autocast)  # fmt: skip
        out.append(FAMILY.train_step(state, ctx))
    return out


def _exported(state: TrainState, options: SpadeOptions, spec: DataSpec = SPEC) -> dict[str, torch.nn.Module]:
    """What export + load does: EMA weights where kept (raw otherwise) into fresh sampling nets, strictly."""
    ema = {name: copy.deepcopy(net).eval() for name, net in state.ema.items()}
    nets = FAMILY.sampling_nets(options, spec)
    for name, module in nets.items():
        module.load_state_dict((ema.get(name) or state.nets[name]).state_dict(), strict=True)
    return nets


def _noise(net: SamplingNet, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=g) for shape in net.noise_shapes]


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return _data()


@pytest.fixture(scope="module")
def options() -> SpadeOptions:
    return SpadeOptions(**TINY)


@pytest.fixture(scope="module")
def samplers(data: TrainingData, options: SpadeOptions) -> dict[MaskSource, SamplingNet]:
    state = _state(options, data)
    _run(state, options, data, 1)
    nets = _exported(state, options)
    return {mode.mask_source: FAMILY.sampling_net(options, SPEC, nets, mode) for mode in MODES}


# Training -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("diff_augment", "bf16"), [(False, False), (True, False), (True, True)])
def test_train_steps_give_finite_named_losses_and_change_the_weights(data: TrainingData, diff_augment: bool, bf16: bool) -> None:
    options = SpadeOptions(**TINY, diff_augment=diff_augment)
    state = _state(options, data)
    before = {name: copy.deepcopy(net.state_dict()) for name, net in state.nets.items()}
    losses = _run(state, options, data, 2, bf16=bf16)

    assert all(tuple(step) == FAMILY.loss_names for step in losses)
    assert FAMILY.loss_names == ("loss_d", "loss_g", "loss_fm", "loss_mask_d", "loss_mask_g")
    assert all(v.ndim == 0 and not v.requires_grad and math.isfinite(v.item()) for step in losses for v in step.values())
    assert set(state.optimizers) == {"generator", "discriminator", "mask_generator", "mask_discriminator"}
    for name in state.optimizers:
        after = state.nets[name].state_dict()
        assert any(not torch.equal(before[name][k], after[k]) for k in after), name
    assert torch.equal(before["mask_bank"]["masks"], state.nets["mask_bank"].masks)  # data, not trained
    assert set(state.ema) == {"generator", "mask_generator"}
    assert all(p.requires_grad for net in state.nets.values() for p in net.parameters())  # D unfrozen after G steps


def test_same_seed_and_step_rng_give_the_same_weights(data: TrainingData, options: SpadeOptions) -> None:
    runs = []
    for _ in range(2):
        state = _state(options, data, seed=3)
        losses = _run(state, options, data, 1)
        runs.append((losses, state.nets["generator"].state_dict()))
    (la, ga), (lb, gb) = runs
    assert all(torch.equal(la[0][k], lb[0][k]) for k in la[0])
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_default_training_is_ttur() -> None:
    assert FAMILY.default_training(SpadeOptions()) == {"lr_g": 1e-4, "lr_d": 4e-4, "betas": [0.0, 0.999]}


# SPADE conditioning -------------------------------------------------------------------------------


def test_spade_normalisation_uses_the_mask(data: TrainingData) -> None:
    torch.manual_seed(0)
    block = SpadeResBlock(8, 4, CLASSES, hidden=8).eval()
    x = torch.randn(2, 8, 16, 16)
    a, b = one_hot(data.masks[:2], CLASSES), one_hot(data.masks[2:4], CLASSES)
    with torch.no_grad():
        assert torch.equal(block(x, a), block(x, a))
        assert not torch.allclose(block(x, a), block(x, b), atol=1e-4)

    generator = SpadeGenerator(SIZE, CLASSES, latent_dim=8, base_channels=4, hidden=4).eval()
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert not torch.allclose(generator(z, a), generator(z, b), atol=1e-4)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_makes_every_image_size(size: int) -> None:
    generator = SpadeGenerator(size, CLASSES, latent_dim=8, base_channels=2, hidden=2).eval()
    masks = one_hot(torch.zeros(1, size, size, dtype=torch.int64), CLASSES)
    with torch.no_grad():
        out = generator(torch.randn(1, 8), masks)
    assert out.shape == (1, 1, size, size) and out.abs().max() <= 1


def test_default_options_at_64_stay_small() -> None:
    spec = DataSpec(image_size=64, num_classes=CLASSES)
    nets = FAMILY.sampling_nets(SpadeOptions(), spec)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    assert 300_000 < counts["generator"] + counts["mask_generator"] < 2_500_000
    assert counts["mask_bank"] == 0


# Sampling -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [MaskSource.generated, MaskSource.real_deformed])
def test_sampling_nets_draw_images_and_one_hot_masks(samplers: dict, source: MaskSource) -> None:
    net = samplers[source]
    with torch.no_grad():
        out = net(_noise(net, 3), torch.zeros(3, dtype=torch.int64))
    assert out.shape == (3, 1 + CLASSES, SIZE, SIZE) and torch.isfinite(out).all()
    assert out[:, 0].min() >= -1 and out[:, 0].max() <= 1
    masks = out[:, 1:]
    assert torch.equal(masks, one_hot(masks.argmax(dim=1), CLASSES))  # exactly the mask the image was drawn for


def test_noise_shapes(samplers: dict, options: SpadeOptions) -> None:
    assert samplers[MaskSource.generated].noise_shapes == ((8,), (8,))
    grid = options.elastic_grid
    assert samplers[MaskSource.real_deformed].noise_shapes == ((1,), (4,), (2, grid, grid), (8,))


@pytest.mark.parametrize("source", [MaskSource.generated, MaskSource.real_deformed])
def test_each_sample_depends_only_on_its_own_noise(samplers: dict, source: MaskSource) -> None:
    net = samplers[source]
    noise = _noise(net, 3, seed=5)
    cond = torch.zeros(3, dtype=torch.int64)
    with torch.no_grad():
        together = net(noise, cond)
        apart = torch.cat([net([t[i : i + 1] for t in noise], cond[i : i + 1]) for i in range(3)])
        again = net(noise, cond)
    assert torch.equal(together, again)
    assert torch.equal(together[:, 1:], apart[:, 1:])
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-5)


def test_zero_deformation_noise_gives_the_bank_mask_exactly(samplers: dict) -> None:
    net = samplers[MaskSource.real_deformed]
    bank = net.masks.bank.masks
    k = bank.shape[0]
    index = torch.tensor([0, 3, k - 1])
    pick = torch.special.ndtri((index.double() + 0.5) / k).float().view(3, 1)
    noise = _noise(net, 3)
    with torch.no_grad():
        still = net([pick, torch.zeros_like(noise[1]), torch.zeros_like(noise[2]), noise[3]], torch.zeros(3, dtype=torch.int64))
        moved = net([pick, noise[1], noise[2], noise[3]], torch.zeros(3, dtype=torch.int64))
    assert torch.equal(still[:, 1:].argmax(dim=1), bank[index].long())
    deformed = moved[:, 1:].argmax(dim=1)
    assert not torch.equal(deformed, bank[index].long())
    assert set(deformed.unique().tolist()) <= set(bank[index].unique().tolist())  # deformed, not invented


def test_every_bank_mask_can_be_picked(samplers: dict) -> None:
    net = samplers[MaskSource.real_deformed]
    k = net.masks.bank.masks.shape[0]
    pick = torch.special.ndtri((torch.arange(k, dtype=torch.float64) + 0.5) / k).float().view(k, 1)
    extreme = torch.tensor([[-40.0], [40.0]])  # ndtr saturates: clamped into the bank
    noise = _noise(net, k + 2)
    zeros = [torch.zeros_like(noise[1]), torch.zeros_like(noise[2])]
    with torch.no_grad():
        out = net([torch.cat([pick, extreme]), *zeros, noise[3]], torch.zeros(k + 2, dtype=torch.int64))
    masks = out[:, 1:].argmax(dim=1)
    assert torch.equal(masks[:k], net.masks.bank.masks.long())
    assert torch.equal(masks[k:], net.masks.bank.masks[[0, k - 1]].long())


@pytest.mark.parametrize("source", [MaskSource.generated, MaskSource.real_deformed])
def test_sampling_nets_trace_and_match_eager(samplers: dict, source: MaskSource) -> None:
    net = samplers[source]
    noise, cond = _noise(net, 2), torch.zeros(2, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing the trace would bake in
        traced = torch.jit.trace(net, (noise, cond), check_trace=False)
        assert torch.equal(traced(noise, cond), net(noise, cond))
        other, cond3 = _noise(net, 3, seed=9), torch.zeros(3, dtype=torch.int64)
        torch.testing.assert_close(traced(other, cond3), net(other, cond3), rtol=0, atol=1e-6)


# Mask bank, export --------------------------------------------------------------------------------


def test_mask_bank_is_a_deterministic_evenly_spaced_capped_subset(data: TrainingData) -> None:
    small = _state(SpadeOptions(**TINY, mask_bank_size=4), data, seed=0).nets["mask_bank"]
    again = _state(SpadeOptions(**TINY, mask_bank_size=4), data, seed=7).nets["mask_bank"]
    assert small.masks.dtype == torch.uint8 and small.masks.shape == (4, SIZE, SIZE)
    assert torch.equal(small.masks, data.masks[[0, 2, 5, 7]].to(torch.uint8))
    assert torch.equal(small.masks, again.masks)  # whatever the seed
    whole = _state(SpadeOptions(**TINY, mask_bank_size=100), data).nets["mask_bank"]
    assert torch.equal(whole.masks, data.masks.to(torch.uint8))
    assert MaskBank.subset(10, 3).tolist() == [0, 3, 6] and MaskBank.subset(3, 3).tolist() == [0, 1, 2]


def test_init_state_nets_load_strictly_into_sampling_nets(data: TrainingData, options: SpadeOptions) -> None:
    state = _state(SpadeOptions(**TINY, mask_bank_size=6), data)
    fresh = FAMILY.sampling_nets(options, SPEC)
    assert set(fresh) == {"generator", "mask_generator", "mask_bank"} and set(fresh) <= set(state.nets)
    assert set(state.ema) <= set(fresh)
    for name, module in fresh.items():
        module.load_state_dict(state.nets[name].state_dict(), strict=True)
    assert torch.equal(fresh["mask_bank"].masks, state.nets["mask_bank"].masks)  # the empty bank took K = 6
    with pytest.raises(RuntimeError):
        MaskBank(SIZE).load_state_dict({"masks": torch.zeros(3, 16, 16, dtype=torch.uint8)}, strict=True)
    with pytest.raises(RuntimeError):
        MaskBank(SIZE).load_state_dict({}, strict=True)


def test_real_deformed_needs_a_loaded_bank(options: SpadeOptions) -> None:
    nets = FAMILY.sampling_nets(options, SPEC)
    with pytest.raises(InvalidInput, match="mask bank is empty"):
        FAMILY.sampling_net(options, SPEC, nets, SampleMode(MaskSource.real_deformed))
    assert isinstance(FAMILY.sampling_net(options, SPEC, nets, SampleMode(MaskSource.generated)), SamplingNet)


# Options ------------------------------------------------------------------------------------------


def test_options_defaults_and_validation(options: SpadeOptions) -> None:
    defaults = SpadeOptions()
    assert defaults.family == "spade" and defaults.num_scales == 2 and defaults.feature_matching == 10.0
    assert defaults.spectral_norm and defaults.mask_bank_size == 2048 and not defaults.diff_augment
    assert SpadeOptions.model_validate({"family": "spade", "num_scales": 3}).num_scales == 3
    for bad in ({"unknown": 1}, {"family": "joint-gan"}, {"num_scales": 0}, {"num_scales": 4},
                {"mask_bank_size": 0}, {"feature_matching": -1}, {"feature_matching": float("nan")},
                {"rotation": 181}, {"elastic": 1.0}, {"latent_dim": 4}, {"elastic_grid": 1}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError):
            SpadeOptions.model_validate({"family": "spade", **bad})
    with pytest.raises(pydantic.ValidationError):
        defaults.latent_dim = 32  # frozen


def test_check_and_check_mode_reject_what_it_cannot_do(options: SpadeOptions) -> None:
    FAMILY.check(options, SPEC)
    with pytest.raises(InvalidInput, match="48"):
        FAMILY.check(options, DataSpec(image_size=48, num_classes=CLASSES))
    nets = FAMILY.sampling_nets(options, SPEC)
    with pytest.raises(InvalidInput, match="class conditioning"):
        FAMILY.sampling_net(options, SPEC, nets, SampleMode(MaskSource.generated, condition=0))
    assert [s.value for s in FAMILY.mask_sources] == ["generated", "real-deformed"]
    described = FAMILY.describe()
    assert described["family"] == "spade" and "mask_bank_size" in described["options"]


def test_instance_norm_matches_torch() -> None:
    x = torch.randn(2, 5, 8, 8) * 3 + 1
    torch.testing.assert_close(instance_norm(x), torch.nn.InstanceNorm2d(5)(x), rtol=1e-5, atol=1e-5)
