"""Diffusion family: the noise schedules, the ε/v parametrisations, and samplers checked with an
oracle denoiser whose answer is known in closed form."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from medsynth.generators.base import DataSpec
from medsynth.generators.diffusion import DiffusionOptions, DiffusionSampler, Prediction, Sampler, Schedule, alphas_cumprod, to_x0


def test_schedules_match_their_definitions() -> None:
    linear = alphas_cumprod(Schedule.linear, 1000)
    assert linear[0].item() == pytest.approx(1 - 1e-4)
    assert linear[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))
    cosine = alphas_cumprod(Schedule.cosine, 1000)
    f = lambda t: torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2  # noqa: E731
    assert cosine[499].item() == pytest.approx((f(500) / f(0)).item(), rel=1e-9)
    for a in (linear, cosine):
        assert torch.all(a[1:] < a[:-1]) and 0 < a[-1] < 0.01


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
    assert net.timesteps == [99, 74, 50, 25, 0]
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
    from medsynth.core.errors import InvalidInput
    from medsynth.generators.base import SampleMode
    from medsynth.generators.diffusion import Diffusion

    family, data = Diffusion(), DataSpec(8, 2)
    options = DiffusionOptions(channels=(8, 16), num_head_channels=8, train_timesteps=50, sample_steps=4)
    nets = family.sampling_nets(options, data)
    default = family.sampling_net(options, data, nets, SampleMode())
    chosen = family.sampling_net(options, data, nets, SampleMode(sample_steps=2, eta=0.3))
    assert len(default.timesteps) == 4 and default.noise_shapes == ((3, 8, 8),)
    assert chosen.timesteps == [49, 0] and chosen.noise_shapes == ((3, 8, 8), (2, 3, 8, 8))
    assert SampleMode(sample_steps=2, eta=0.3).to_dict() == {"mask_source": "generated", "condition": None, "sample_steps": 2, "eta": 0.3}
    with pytest.raises(InvalidInput, match=r"sample_steps must be in \[1, 50\]"):
        family.check_mode(options, data, SampleMode(sample_steps=51))
    with pytest.raises(InvalidInput, match="eta applies to the ddim sampler"):
        family.check_mode(options.model_copy(update={"sampler": Sampler.ddpm}), data, SampleMode(eta=0.5))
