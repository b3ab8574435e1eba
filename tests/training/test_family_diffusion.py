"""Diffusion family: the noise schedules, the ε/v parametrisations, and samplers checked with an
oracle denoiser whose answer is known in closed form; then the mask-conditioned and latent variants
on tiny data: stages, both mask sources, tracing, exact resume, mask dependence, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import DataSpec, MaskSource, SampleMode, SamplingNet, prepare_data
from medsynth.generators.diffusion import (
    Diffusion,
    DiffusionOptions,
    DiffusionSampler,
    Prediction,
    Sampler,
    Schedule,
    alphas_cumprod,
    calibrate,
    to_x0,
)
from medsynth.generators.registry import GeneratorSpec, parse_options, parse_training
from medsynth.models.spade import one_hot
from medsynth.sampling.archive import trace_sampling_net
from medsynth.sampling.generate import generate, sample_noise
from medsynth.store.local import LocalStore
from medsynth.generators.checkpoint import build_sampling_nets, load_checkpoint, load_sampling_nets, save_checkpoint
from medsynth.training.loop import TrainResult, init_state, train_generator

from training_data import TINY_OPTIONS, same_extra, same_weights, tiny_spec


def test_schedules_match_their_definitions() -> None:
    linear = alphas_cumprod(Schedule.linear, 1000)
    assert linear[0].item() == pytest.approx(1 - 1e-4)
    assert linear[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))
    cosine = alphas_cumprod(Schedule.cosine, 1000)
    f = lambda t: torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2  # noqa: E731
    assert cosine[499].item() == pytest.approx((f(500) / f(0)).item(), rel=1e-9)
    for a in (linear, cosine):
        assert torch.all(a[1:] < a[:-1]) and 0 < a[-1] < 0.01


@pytest.mark.parametrize(("schedule", "monai_name"), [(Schedule.linear, "linear_beta"), (Schedule.cosine, "cosine")])
def test_schedules_match_monais_scheduler(schedule: Schedule, monai_name: str) -> None:
    from monai.networks.schedulers import DDPMScheduler

    reference = DDPMScheduler(num_train_timesteps=1000, schedule=monai_name).alphas_cumprod.double()
    torch.testing.assert_close(alphas_cumprod(schedule, 1000), reference, rtol=1e-5, atol=1e-6)  # MONAI's is float32


@pytest.mark.parametrize("prediction", list(Prediction))
def test_x0_and_eps_are_recovered_from_either_parametrisation(prediction: Prediction) -> None:
    x0, eps, a = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor(0.37)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = eps if prediction is Prediction.epsilon else a.sqrt() * eps - (1 - a).sqrt() * x0
    got_x0, got_eps = to_x0(x_t, out, a, prediction)
    assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5)


class Oracle(nn.Module):
    """Knows the clean sample: answers the true ε (or v) for it at every noise level."""

    def __init__(self, x0: torch.Tensor, options: DiffusionOptions) -> None:
        super().__init__()
        self.x0, self.options = x0, options
        self.a = alphas_cumprod(options.schedule, options.train_timesteps).float()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.a[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return eps if self.options.prediction is Prediction.epsilon else a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize(("sampler", "eta", "prediction"), [("ddim", 0.0, "epsilon"), ("ddim", 0.0, "v"), ("ddim", 0.5, "epsilon"), ("ddpm", 0.0, "v")])
def test_samplers_land_on_the_oracles_clean_sample(sampler: str, eta: float, prediction: str) -> None:
    options = DiffusionOptions(sampler=sampler, eta=eta, prediction=prediction, train_timesteps=100, sample_steps=10)
    data = DataSpec(8, 2)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    net = DiffusionSampler(Oracle(x0, options), options, data).eval()
    stochastic = sampler == "ddpm" or eta > 0
    assert net.noise_shapes == (((3, 8, 8), (10, 3, 8, 8)) if stochastic else ((3, 8, 8),))
    noise = [torch.randn(2, *shape) for shape in net.noise_shapes]
    out = net(noise, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(out, x0, atol=1e-4)


def test_ddim_without_eta_is_deterministic_and_traces() -> None:
    options = DiffusionOptions(train_timesteps=100, sample_steps=5)
    net = DiffusionSampler(Oracle(torch.zeros(1, 3, 8, 8), options), options, DataSpec(8, 2)).eval()
    assert net.reverse.timesteps == [99, 74, 50, 25, 0]
    noise = [torch.randn(2, 3, 8, 8)]
    traced = torch.jit.trace(net, (noise, torch.zeros(2, dtype=torch.long)), check_trace=False)
    assert torch.allclose(traced(noise, torch.zeros(2, dtype=torch.long)), net(noise, torch.zeros(2, dtype=torch.long)))


def test_bad_options_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="exceeds train_timesteps"):
        DiffusionOptions(train_timesteps=20, sample_steps=50)
    with pytest.raises(pydantic.ValidationError, match="multiples of num_head_channels"):
        DiffusionOptions(channels=(24, 48), num_head_channels=32)
    with pytest.raises(pydantic.ValidationError):
        DiffusionOptions(eta=1.5)


def test_a_cohort_may_choose_steps_and_eta_and_bad_choices_are_named() -> None:
    family, data = Diffusion(), DataSpec(8, 2)
    options = DiffusionOptions(channels=(8, 16), num_head_channels=8, train_timesteps=50, sample_steps=4)
    nets = family.sampling_nets(options, data)
    default = family.sampling_net(options, data, nets, SampleMode())
    chosen = family.sampling_net(options, data, nets, SampleMode(sample_steps=2, eta=0.3))
    assert len(default.reverse.timesteps) == 4 and default.noise_shapes == ((3, 8, 8),)
    assert chosen.reverse.timesteps == [49, 0] and chosen.noise_shapes == ((3, 8, 8), (2, 3, 8, 8))
    assert SampleMode(sample_steps=2, eta=0.3).to_dict() == {"mask_source": "generated", "condition": None, "sample_steps": 2, "eta": 0.3}
    with pytest.raises(InvalidInput, match=r"sample_steps must be in \[1, 50\]"):
        family.check_mode(options, data, SampleMode(sample_steps=51))
    with pytest.raises(InvalidInput, match="eta applies to the ddim sampler"):
        family.check_mode(options.model_copy(update={"sampler": Sampler.ddpm}), data, SampleMode(eta=0.5))


# Variants -----------------------------------------------------------------------------------------

FAMILY = Diffusion()
# Tiny options of each variant on top of TINY_OPTIONS["diffusion"]; the latent one trains its
# autoencoder in steps 1-2 of tiny_spec's 4 and its denoiser in steps 3-4.
VARIANTS = {
    "mask-conditioned": {"variant": "mask-conditioned", "mask_bank_size": 8},
    "latent": {"latent": True, "autoencoder_steps": 2, "autoencoder_channels": [8, 16], "latent_channels": 2},
}
CASES = [("mask-conditioned", MaskSource.generated), ("mask-conditioned", MaskSource.real_deformed), ("latent", MaskSource.generated)]


def _spec(variant: str, training: dict | None = None, **options: object) -> GeneratorSpec:
    return tiny_spec("diffusion", training=training, **{**VARIANTS[variant], **options})


@pytest.fixture(scope="module")
def runs(data: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, dict[str, TrainResult]]:
    """Each variant trained for tiny_spec's 4 steps (checkpoints at 2 and 4), in one store."""
    store = LocalStore(tmp_path_factory.mktemp("variants"))
    return store, {name: train_generator(_spec(name), *data, store=store, prefix=f"{name}/") for name in VARIANTS}


def _sampler(result: TrainResult, source: MaskSource) -> SamplingNet:
    spec = result.checkpoint.spec
    return spec.family.sampling_net(spec.options, spec.data, load_sampling_nets(result.checkpoint), SampleMode(mask_source=source))


def test_each_variant_names_its_own_losses_and_mask_sources() -> None:
    joint, masked, latent = DiffusionOptions(), DiffusionOptions(variant="mask-conditioned"), DiffusionOptions(latent=True)
    assert FAMILY.loss_names_for(joint) == ("loss",)
    assert FAMILY.loss_names_for(masked) == ("mask_loss", "image_loss")
    assert FAMILY.loss_names_for(latent) == ("autoencoder_l1", "autoencoder_kl", "loss")
    assert FAMILY.mask_sources_for(joint) == FAMILY.mask_sources_for(latent) == (MaskSource.generated,)
    assert FAMILY.mask_sources_for(masked) == (MaskSource.generated, MaskSource.real_deformed)
    with pytest.raises(InvalidInput, match="generator has no mask source 'real-deformed'"):
        FAMILY.check_mode(latent, DataSpec(32, 2), SampleMode(mask_source=MaskSource.real_deformed))


def test_options_without_the_new_fields_are_the_joint_pixel_model_of_before() -> None:
    """What checkpoints written before the variants hold: they load into one ``model`` over 1 + C channels."""
    options = parse_options({"family": "diffusion", **TINY_OPTIONS["diffusion"]})
    assert options.variant.value == "joint" and not options.latent
    nets = FAMILY.sampling_nets(options, DataSpec(32, 3))
    assert list(nets) == ["model"] and FAMILY.stages(options, 4, {}) == {}
    assert nets["model"].conv_in.conv.in_channels == 4 and nets["model"].out[-1].conv.out_channels == 4


@pytest.mark.parametrize(("variant", "source"), CASES)
def test_a_trained_variant_samples_in_range_and_traces_to_the_same_pixels(variant: str, source: MaskSource, runs) -> None:
    _, results = runs
    net = _sampler(results[variant], source)
    images, masks = generate(net, 7, range(3))
    assert images.shape == (3, 1, 32, 32) and masks.shape == (3, 32, 32)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1 and masks.max() < 2
    noise, cond = sample_noise(7, range(3), net.noise_shapes), torch.zeros(3, dtype=torch.int64)
    with torch.no_grad():
        eager = net(noise, cond)
        assert torch.equal(trace_sampling_net(net)(noise, cond), eager)
    if variant == "mask-conditioned":  # the output's mask channels are exactly the mask the image was drawn for
        assert torch.equal(eager[:, 1:], one_hot(eager[:, 1:].argmax(dim=1), 2))


def test_the_mask_conditioned_image_follows_the_given_mask(runs) -> None:
    _, results = runs
    net = _sampler(results["mask-conditioned"], MaskSource.real_deformed)
    bank = net.masks.bank.masks
    k = bank.shape[0]
    one = [t.expand(3, *t.shape[1:]).clone() for t in sample_noise(3, [0], net.noise_shapes)]  # one noise, three rows
    one[0] = torch.special.ndtri((torch.tensor([0, 0, k - 1]).double() + 0.5) / k).float().view(3, 1)  # bank masks 0, 0, k-1
    with torch.no_grad():
        out = net(one, torch.zeros(3, dtype=torch.int64))
    assert not torch.equal(bank[0], bank[k - 1]) and not torch.equal(out[0, 1:], out[2, 1:])
    assert torch.equal(out[0], out[1])
    assert (out[0, 0] - out[2, 0]).abs().max() > 1e-3  # same image noise, another mask: another image


def test_latent_stages_switch_by_step_and_are_recorded(runs, data: tuple[np.ndarray, np.ndarray]) -> None:
    store, results = runs
    result = results["latent"]
    curves = result.curves
    assert curves["step"] == [1, 2, 3, 4]
    assert curves["autoencoder_l1"][2:] == curves["autoencoder_kl"][2:] == [None, None] and curves["loss"][:2] == [None, None]
    assert all(v is not None for v in curves["autoencoder_l1"][:2] + curves["loss"][2:])

    middle, final = load_checkpoint(store.get_bytes("latent/checkpoints/step-00000002.pt")), result.checkpoint
    spec = final.spec
    fresh = init_state(spec, prepare_data(*data, spec.data, torch.device("cpu")))
    assert all(torch.equal(t, fresh.nets["model"].state_dict()[k]) for k, t in middle.nets["model"].items())  # denoiser idle
    assert all(torch.equal(t, final.nets["autoencoder"][k]) for k, t in middle.nets["autoencoder"].items()
               if k != "scale_factor")  # autoencoder frozen after its stage
    assert middle.nets["autoencoder"]["scale_factor"] == 0 and "autoencoder" not in middle.extra

    stages = FAMILY.stages(spec.options, final.step, final.extra)
    assert stages["diffusion"] == {"steps": 2} and stages["autoencoder"]["steps"] == 2
    record = stages["autoencoder"]
    assert set(record) == {"steps", "latent_std", "image_l1", "mask_accuracy", "mask_dice"}
    assert 0 <= record["image_l1"] <= 1 and 0 <= record["mask_accuracy"] <= 1 and 0 <= record["mask_dice"] <= 1
    assert final.nets["autoencoder"]["scale_factor"].item() == pytest.approx(1 / record["latent_std"])
    assert FAMILY.stages(results["mask-conditioned"].checkpoint.spec.options, 4, {}) == {}


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    ("variant", "options", "crash_at", "resume_at"),
    [
        ("latent", {"autoencoder_steps": 3}, 3, 2),  # in the autoencoder stage
        ("latent", {"autoencoder_steps": 2}, 3, 2),  # between the stages: the resumed run calibrates
        ("latent", {"autoencoder_steps": 3}, 5, 4),  # in the denoiser stage
        ("mask-conditioned", {}, 3, 2),
    ],
)
def test_resume_reproduces_an_uninterrupted_run_exactly(variant: str, options: dict, crash_at: int, resume_at: int,
                                                        data: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    spec = _spec(variant, {"steps": 6}, **options)
    store = LocalStore(tmp_path)
    straight = train_generator(spec, *data, store=store, prefix="straight/")

    def crash(step: int, metrics: dict) -> None:
        if step == crash_at:
            raise Crash(step)

    with pytest.raises(Crash):
        train_generator(spec, *data, store=store, prefix="resumed/", on_progress=crash)
    resumed = train_generator(spec, *data, store=store, prefix="resumed/")
    assert resumed.resumed_from == resume_at
    assert same_weights(straight.checkpoint, resumed.checkpoint) and same_extra(straight.checkpoint.extra, resumed.checkpoint.extra)
    for name, opt in straight.checkpoint.optimizers.items():
        for key, value in opt["state"].get(0, {}).items():
            assert torch.equal(value, resumed.checkpoint.optimizers[name]["state"][0][key]), (name, key)
    assert resumed.curves == straight.curves


@pytest.mark.parametrize("size", [32, 64, 128])
def test_the_latent_sampler_decodes_to_the_data_size(size: int) -> None:
    spec = GeneratorSpec(parse_options({"family": "diffusion", **TINY_OPTIONS["diffusion"], **VARIANTS["latent"]}),
                         parse_training({"steps": 3}), DataSpec(size, 3))
    nets = FAMILY.sampling_nets(spec.options, spec.data)
    calibrate(nets["autoencoder"], torch.rand(2, 4, size, size) * 2 - 1)
    net = FAMILY.sampling_net(spec.options, spec.data, nets, SampleMode())
    assert net.noise_shapes == ((2, size // 2, size // 2),)  # two autoencoder levels: half the size
    images, masks = generate(net, 0, range(2))
    assert images.shape == (2, 1, size, size) and masks.shape == (2, size, size) and masks.max() < 3


def test_a_latent_generator_without_its_autoencoder_is_refused(runs) -> None:
    _, results = runs
    checkpoint = results["latent"].checkpoint
    spec = checkpoint.spec
    without = dataclasses.replace(checkpoint, nets={k: v for k, v in checkpoint.nets.items() if k != "autoencoder"})
    with pytest.raises(InvalidInput, match=r"no weights for the diffusion network\(s\) \['autoencoder'\]"):
        load_sampling_nets(save_checkpoint(without))
    weights = checkpoint.sampling_weights()
    weights["autoencoder"] = {k: v for k, v in weights["autoencoder"].items() if k != "scale_factor"}
    with pytest.raises(InvalidInput, match="autoencoder weights do not fit .*scale_factor"):
        build_sampling_nets(spec, weights)
    uncalibrated = FAMILY.sampling_nets(spec.options, spec.data)  # e.g. a run stopped in the autoencoder stage
    with pytest.raises(InvalidInput, match="autoencoder was never calibrated .*the first 2 steps"):
        FAMILY.sampling_net(spec.options, spec.data, uncalibrated, SampleMode())


def test_bad_variant_combinations_are_refused_with_the_reason() -> None:
    with pytest.raises(pydantic.ValidationError, match="latent diffusion is offered for the joint variant only"):
        DiffusionOptions(variant="mask-conditioned", latent=True)
    with pytest.raises(InvalidInput, match="invalid diffusion options: variant: Input should be 'joint' or 'mask-conditioned'"):
        parse_options({"family": "diffusion", "variant": "mask-first"})
    with pytest.raises(pydantic.ValidationError):
        DiffusionOptions(autoencoder_channels=(2, 4))
    with pytest.raises(InvalidInput, match="steps=2 leaves the denoiser none"):
        _spec("latent", {"steps": 2})
    deep = {"autoencoder_channels": [8, 8, 8, 8], "channels": [8, 8, 8, 8]}
    with pytest.raises(InvalidInput, match="the 4×4 latent of 32-pixel images .* cannot be halved 3 times"):
        _spec("latent", **deep)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bf16_steps_of_a_variant_give_finite_losses_of_its_names(variant: str, data: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    spec = _spec(variant, {"precision": "bf16"})
    curves = train_generator(spec, *data, store=LocalStore(tmp_path), prefix="bf16/").curves
    names = FAMILY.loss_names_for(spec.options)
    assert set(curves) == {"step", *names}
    assert all(any(curves[name][i] is not None for name in names) for i in range(4))  # every step reported
    assert all(np.isfinite(v) for name in names for v in curves[name] if v is not None)


def test_a_time_budget_never_stops_a_latent_run_inside_its_autoencoder_stage(data: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    spec = _spec("latent", training={"steps": 8, "log_every": 1, "time_budget_s": 1e-6}, autoencoder_steps=3)
    assert FAMILY.minimum_steps(spec.options) == 4
    result = train_generator(spec, *data, store=LocalStore(tmp_path), prefix="g/")
    assert result.step == 4  # the first log step past the budget that is also past the autoencoder stage
    assert FAMILY.stages(spec.options, result.step, result.checkpoint.extra)["diffusion"] == {"steps": 1}
    joint = tiny_spec("diffusion", training={"steps": 8, "log_every": 1, "time_budget_s": 1e-6})
    assert train_generator(joint, *data, store=LocalStore(tmp_path), prefix="j/").step == 1


def test_sampling_requests_are_cut_to_the_passes_they_cost() -> None:
    from medsynth.core.settings import Settings
    from medsynth.handlers.sample import request_batch

    settings = Settings(sampler_passes_per_request=4096)
    joint = tiny_spec("joint-gan")
    latent = _spec("latent")
    masked = _spec("mask-conditioned")
    assert request_batch(joint, SampleMode(), 64, settings) == 64  # one pass per sample
    assert request_batch(latent, SampleMode(sample_steps=250), 64, settings) == 16
    assert request_batch(latent, SampleMode(sample_steps=10), 64, settings) == 64
    assert request_batch(masked, SampleMode(sample_steps=250), 64, settings) == 8  # mask, then image
    assert request_batch(masked, SampleMode(MaskSource.real_deformed, sample_steps=250), 64, settings) == 16
    assert request_batch(latent, SampleMode(sample_steps=1000), 64, Settings(sampler_passes_per_request=100)) == 1


def test_the_autoencoder_stage_record_measures_mask_dice_by_hand() -> None:
    from medsynth.generators.diffusion import calibrate

    want = torch.zeros(1, 4, 4, dtype=torch.long)
    want[0, :2, :2] = 1  # 4 foreground pixels
    got = torch.zeros_like(want)
    got[0, :2, :1] = 1  # 2 of them found, nothing else: Dice = 2·2 / (2 + 4)
    x = torch.cat([torch.zeros(1, 1, 4, 4), one_hot(want, 2) * 2 - 1], dim=1)

    class Decodes:  # stands in for the trained autoencoder: decodes to `got`
        def calibrate(self, x):
            return 1.0

        def encode(self, x):
            return (x,)

        def decode(self, z):
            return torch.cat([z[:, :1], one_hot(got, 2) * 2 - 1], dim=1)

    record = calibrate(Decodes(), x)
    assert record["mask_dice"] == pytest.approx(4 / 6) and record["mask_accuracy"] == pytest.approx(14 / 16)
    assert record["image_l1"] == 0
