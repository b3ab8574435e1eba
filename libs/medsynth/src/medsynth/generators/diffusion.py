"""Diffusion family (seed 002's most useful generator): a denoising diffusion model over image + mask
channels together, MONAI's ``DiffusionModelUNet`` as the denoiser, trained with the DDPM objective
(ε- or v-prediction; linear or cosine noise schedule; EMA by the loop) and sampled with DDIM or DDPM.

Channels: the image in [-1, 1] and the one-hot mask scaled to [-1, 1] (``2·one_hot − 1``); the
sample's mask is the argmax of its mask channels.

Sampling is a pure function of per-sample noise, like every family: ``x_T`` and, where the sampler
is stochastic (DDPM, or DDIM with η > 0), one noise map per sampling step. The number of steps and η
default to the generator's options; a cohort request may choose others (``sample_steps``, ``eta``),
recorded in its manifest's ``mode`` so the cohort regenerates bit for bit.

The schedule arithmetic is written out here (a few lines, float64) rather than taken from MONAI's
schedulers, so that training and the traced sampler share exactly one definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import (
    DataSpec,
    FamilyOptions,
    GeneratorFamily,
    Losses,
    SampleMode,
    SamplingNet,
    StepContext,
    TrainingData,
    TrainingOptions,
    TrainState,
)


class Prediction(str, Enum):
    epsilon = "epsilon"
    v = "v"


class Schedule(str, Enum):
    linear = "linear"  # Ho et al. 2020: β from 1e-4 to 0.02
    cosine = "cosine"  # Nichol & Dhariwal 2021


class Sampler(str, Enum):
    ddim = "ddim"
    ddpm = "ddpm"


class DiffusionOptions(FamilyOptions):
    """A DDPM over image + mask channels (MONAI DiffusionModelUNet)."""

    family: Literal["diffusion"] = "diffusion"
    channels: tuple[int, ...] = Field((32, 64, 64), min_length=2, max_length=5, description="UNet widths per level.")
    num_res_blocks: int = Field(1, ge=1, le=4)
    attention: bool = Field(True, description="Self-attention at the lowest resolution.")
    num_head_channels: int = Field(32, ge=4, le=256)
    prediction: Prediction = Field(Prediction.epsilon, description="What the network predicts: epsilon or v.")
    schedule: Schedule = Field(Schedule.cosine)
    train_timesteps: int = Field(1000, ge=10, le=4000)
    sampler: Sampler = Field(Sampler.ddim)
    sample_steps: int = Field(50, ge=1, le=1000, description="Denoising steps at sampling (ddpm: a strided subset too).")
    eta: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="DDIM η (0: deterministic given x_T).")

    @model_validator(mode="after")
    def _steps_fit(self) -> DiffusionOptions:
        if self.sample_steps > self.train_timesteps:
            raise ValueError(f"sample_steps {self.sample_steps} exceeds train_timesteps {self.train_timesteps}")
        if any(c % self.num_head_channels for c in self.channels):
            raise ValueError(f"channels {list(self.channels)} must be multiples of num_head_channels {self.num_head_channels}")
        return self


def alphas_cumprod(schedule: Schedule, steps: int) -> torch.Tensor:
    """ᾱ_t for t = 0..steps-1 (float64)."""
    if schedule is Schedule.linear:
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, dim=0)
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def to_x0(x_t: torch.Tensor, out: torch.Tensor, a: torch.Tensor, prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from the network output at noise level ᾱ = ``a`` (broadcastable)."""
    if prediction is Prediction.epsilon:
        eps = out
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    else:
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
        eps = (1 - a).sqrt() * x_t + a.sqrt() * out
    return x0, eps


def _unet(options: DiffusionOptions, channels: int) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    levels = len(options.channels)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=channels, out_channels=channels, channels=tuple(options.channels),
        attention_levels=tuple([False] * (levels - 1) + [options.attention]), num_res_blocks=options.num_res_blocks,
        num_head_channels=options.num_head_channels, norm_num_groups=min(32, math.gcd(*options.channels)),
    )  # fmt: skip


class DiffusionSampler(SamplingNet):
    """DDIM (η ≥ 0) or DDPM over a fixed, strided set of timesteps, unrolled (traces as one graph)."""

    def __init__(self, model: nn.Module, options: DiffusionOptions, data: DataSpec) -> None:
        super().__init__()
        self.model = model
        self.prediction = options.prediction
        self.channels = 1 + data.num_classes
        a = alphas_cumprod(options.schedule, options.train_timesteps)
        steps = torch.linspace(options.train_timesteps - 1, 0, options.sample_steps).round().long().unique_consecutive()
        self.timesteps = [int(t) for t in steps]
        self.register_buffer("a_t", a[steps].float(), persistent=False)
        prev = torch.cat([a[steps[1:]], torch.ones(1, dtype=torch.float64)])
        self.register_buffer("a_prev", prev.float(), persistent=False)
        eta = 1.0 if options.sampler is Sampler.ddpm else options.eta
        sigma = eta * ((1 - prev) / (1 - a[steps]) * (1 - a[steps] / prev)).clamp(min=0).sqrt()
        self.register_buffer("sigma", sigma.float(), persistent=False)
        self.stochastic = bool(eta > 0)
        shape = (self.channels, data.image_size, data.image_size)
        self.noise_shapes = (shape, (len(self.timesteps), *shape)) if self.stochastic else (shape,)

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        x = noise[0]
        n = x.shape[0]
        for k, t in enumerate(self.timesteps):
            a, a_prev, sigma = self.a_t[k], self.a_prev[k], self.sigma[k]
            out = self.model(x, torch.full((n,), t, dtype=torch.long, device=x.device))
            x0, eps = to_x0(x, out, a, self.prediction)
            x0 = x0.clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # consistent with the clamped x̂_0
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if self.stochastic:
                x = x + sigma * noise[1][:, k]
        return x


class Diffusion(GeneratorFamily):
    name = "diffusion"
    title = "Denoising diffusion over image + mask channels (DDPM objective, DDIM/DDPM sampling)"
    description = (
        "Seed 002's strongest family for segmentation: MONAI's DiffusionModelUNet denoises image and one-hot "
        "mask channels together; ε- or v-prediction, linear or cosine schedule, DDIM or DDPM sampling. Slow to "
        "sample (one network pass per step) and, per seed 002, prone to memorize: audit its cohorts."
    )
    options_type = DiffusionOptions
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    iterative = True

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        return {"lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.9, 0.999]}  # lr_d unused: no discriminator

    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        opts = _options(options)
        model = _unet(opts, 1 + data.spec.num_classes).to(data.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=training.lr_g, betas=tuple(training.betas))
        return TrainState(nets={"model": model}, optimizers={"model": optimizer}, ema={"model": model})

    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        opts = _options(ctx.options)
        model, optimizer = state.nets["model"], state.optimizers["model"]
        batch = ctx.batch()
        x0 = torch.cat([batch.images, batch.one_hot * 2 - 1], dim=1)
        n = x0.shape[0]
        t = ctx.randint(opts.train_timesteps, n)
        eps = ctx.randn(*x0.shape)
        a = alphas_cumprod(opts.schedule, opts.train_timesteps).to(x0.device)[t].float().view(n, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = eps if opts.prediction is Prediction.epsilon else a.sqrt() * eps - (1 - a).sqrt() * x0
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = F.mse_loss(model(x_t, t).float(), target)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach().float()}

    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        return {"model": _unet(_options(options), 1 + data.num_classes)}

    def check_mode(self, options: FamilyOptions, data: DataSpec, mode: SampleMode) -> None:
        super().check_mode(options, data, mode)
        opts = _options(options)
        if mode.sample_steps is not None and not 1 <= mode.sample_steps <= opts.train_timesteps:
            raise InvalidInput(f"sample_steps must be in [1, {opts.train_timesteps}] (the training timesteps), got {mode.sample_steps}.")
        if mode.eta is not None:
            if opts.sampler is Sampler.ddpm:
                raise InvalidInput("eta applies to the ddim sampler; this generator samples with ddpm.")
            if not (0 <= mode.eta <= 1):
                raise InvalidInput(f"eta must be in [0, 1], got {mode.eta}.")

    def sampling_net(self, options: FamilyOptions, data: DataSpec, nets: Mapping[str, nn.Module], mode: SampleMode) -> SamplingNet:
        """The sampler of ``options``, with the cohort's ``sample_steps`` / ``eta`` where it chose them."""
        self.check_mode(options, data, mode)
        chosen = {k: v for k, v in (("sample_steps", mode.sample_steps), ("eta", mode.eta)) if v is not None}
        return DiffusionSampler(nets["model"], _options(options).model_copy(update=chosen), data).eval()


def _options(options: FamilyOptions) -> DiffusionOptions:
    if not isinstance(options, DiffusionOptions):
        raise InvalidInput(f"expected diffusion options, got {options.family!r} options.")
    return options
