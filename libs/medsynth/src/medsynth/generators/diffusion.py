"""Diffusion family (seed 002's most useful generator): denoisers on MONAI's ``DiffusionModelUNet``
trained with the DDPM objective (ε- or v-prediction; linear or cosine noise schedule; EMA by the loop)
and sampled with DDIM or DDPM. Image channels are in [-1, 1], one-hot masks scaled to [-1, 1]
(``2·one_hot − 1``). Two variants (``variant``), the first in pixel or latent space (``latent``):

* ``joint``: one denoiser (net ``model``, loss ``loss``) over image + mask channels together; the
  sample's mask is the argmax of its mask channels. Mask source ``generated``.
* ``joint`` with ``latent: true`` — latent diffusion, MAISI's recipe at 2D scale, in two stages of
  one run, switched by step number: the first ``autoencoder_steps`` steps train a small
  ``AutoencoderKL`` (net ``autoencoder``, :mod:`medsynth.models.autoencoder`) on the same image + mask
  channels (L1 reconstruction + ``kl_weight`` · KL; losses ``autoencoder_l1``, ``autoencoder_kl``);
  the rest train the denoiser on the frozen autoencoder's posterior means, scaled to unit standard
  deviation (loss ``loss``). The first denoiser step measures that standard deviation on its batch and
  fixes the scale factor (a buffer of the autoencoder, so it travels with the weights), together with
  the autoencoder's final reconstruction quality on that batch (``extra["autoencoder"]``: image L1 in
  [0, 1] units, mask pixel accuracy; :meth:`Diffusion.stages` puts both stages in the registry
  entry). The sampler denoises a latent and decodes it; the mask is the argmax of the decoded mask
  channels. A run must reach the denoiser stage (``training.steps > autoencoder_steps``) to sample.
* ``mask-conditioned``: two denoisers trained in every step: ``mask_model`` over the mask channels
  alone (loss ``mask_loss``) and ``image_model`` over the image with the clean mask concatenated as
  extra input channels (loss ``image_loss``). Mask sources: ``generated`` (the mask diffusion's
  sample, argmax, then the image diffusion given that mask) and ``real-deformed`` (a training mask
  from the bank under random affine + elastic deformation, :mod:`medsynth.generators.real_deformed`,
  then the image diffusion). The output's mask channels are the exact one-hot mask the image was drawn
  for. Latent diffusion is not offered for this variant (refused by the options).

Sampling is a pure function of per-sample noise, like every family: per denoiser ``x_T`` and, where
the sampler is stochastic (DDPM, or DDIM with η > 0), one noise map per sampling step; the
mask-conditioned sampler takes its mask source's noise first, then the image denoiser's. The number
of steps and η default to the generator's options; a cohort request may choose others
(``sample_steps``, ``eta``), recorded in its manifest's ``mode`` so the cohort regenerates bit for bit.

The schedule arithmetic is written out here (a few lines, float64) rather than taken from MONAI's
schedulers, so that training and the traced sampler share exactly one definition.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

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
    MaskSource,
    SampleMode,
    SamplingNet,
    StepContext,
    TrainingData,
    TrainingOptions,
    TrainState,
)
from medsynth.generators.real_deformed import DeformedBankMasks, RealDeformedOptions, mask_bank
from medsynth.models.autoencoder import LatentAutoencoder, kl_divergence
from medsynth.models.spade import MaskBank, one_hot


class Prediction(str, Enum):
    epsilon = "epsilon"
    v = "v"


class Schedule(str, Enum):
    linear = "linear"  # Ho et al. 2020: β from 1e-4 to 0.02
    cosine = "cosine"  # Nichol & Dhariwal 2021


class Sampler(str, Enum):
    ddim = "ddim"
    ddpm = "ddpm"


class Variant(str, Enum):
    joint = "joint"                        # one denoiser over image + mask channels
    mask_conditioned = "mask-conditioned"  # a mask denoiser, and an image denoiser given the mask


class DiffusionOptions(RealDeformedOptions):
    """DDPMs on MONAI's DiffusionModelUNet: joint image + mask (pixel or latent space), or mask-conditioned
    (a mask diffusion and an image diffusion given the mask; real-deformed options from
    :class:`~medsynth.generators.real_deformed.RealDeformedOptions`)."""

    family: Literal["diffusion"] = "diffusion"
    variant: Variant = Field(
        Variant.joint, description="joint: one denoiser over image + mask channels; mask-conditioned: a mask "
        "denoiser and an image denoiser given the clean mask (mask sources generated and real-deformed).",
    )
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
    latent: bool = Field(
        False, description="Joint variant: latent diffusion — an autoencoder trains in the first autoencoder_steps "
        "steps, the denoiser in its latent space in the rest of training.steps.",
    )
    autoencoder_steps: int = Field(500, ge=1, le=1_000_000, description="Latent: steps of the autoencoder stage.")
    autoencoder_channels: tuple[Annotated[int, Field(ge=4, le=512)], ...] = Field(
        (32, 64, 64), min_length=2, max_length=4,
        description="Latent: autoencoder widths per level; the latent is image_size / 2^(levels - 1) pixels wide.",
    )
    latent_channels: int = Field(4, ge=1, le=16, description="Latent: channels of the latent.")
    kl_weight: float = Field(1e-6, ge=0, le=1, allow_inf_nan=False, description="Latent: weight of the KL term of the autoencoder's loss.")

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionOptions:
        if self.sample_steps > self.train_timesteps:
            raise ValueError(f"sample_steps {self.sample_steps} exceeds train_timesteps {self.train_timesteps}")
        if any(c % self.num_head_channels for c in self.channels):
            raise ValueError(f"channels {list(self.channels)} must be multiples of num_head_channels {self.num_head_channels}")
        if self.latent and self.variant is Variant.mask_conditioned:
            raise ValueError("latent diffusion is offered for the joint variant only: set variant 'joint' or latent false")
        return self


@functools.lru_cache(maxsize=32)
def _alphas_on(schedule: Schedule, steps: int, device: torch.device) -> torch.Tensor:
    """:func:`alphas_cumprod` on ``device``, made once per run (training indexes it every step; the
    cached tensor is never written to)."""
    return alphas_cumprod(schedule, steps).to(device)


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


def _unet(options: DiffusionOptions, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    levels = len(options.channels)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(options.channels),
        attention_levels=tuple([False] * (levels - 1) + [options.attention]), num_res_blocks=options.num_res_blocks,
        num_head_channels=options.num_head_channels, norm_num_groups=min(32, math.gcd(*options.channels)),
    )  # fmt: skip


def _autoencoder(options: DiffusionOptions, data: DataSpec) -> LatentAutoencoder:
    return LatentAutoencoder(1 + data.num_classes, options.autoencoder_channels, options.latent_channels)


# Sampling -----------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, max_period: int = 10000) -> torch.Tensor:
    """MONAI's ``get_timestep_embedding``, bit for bit, with the frequency index table derived from
    ``timesteps`` (``new_ones(...).cumsum``, exact integers in float32) instead of
    ``torch.arange(device=timesteps.device)``, which a trace records as a constant of the tracing device."""
    if timesteps.ndim != 1:
        raise ValueError("Timesteps should be a 1d-array")
    half_dim = embedding_dim // 2
    index = timesteps.new_ones(half_dim, dtype=torch.float32).cumsum(0) - 1
    exponent = -math.log(max_period) * index
    freqs = torch.exp(exponent / half_dim)
    args = timesteps[:, None].float() * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if embedding_dim % 2 == 1:
        embedding = F.pad(embedding, (0, 1, 0, 0))
    return embedding


@contextlib.contextmanager
def _device_free_timestep_embedding() -> Iterator[None]:
    """While tracing: MONAI's UNet embeds timesteps with :func:`timestep_embedding` (equal values)."""
    from monai.networks.nets import diffusion_model_unet

    original = diffusion_model_unet.get_timestep_embedding
    diffusion_model_unet.get_timestep_embedding = timestep_embedding
    try:
        yield
    finally:
        diffusion_model_unet.get_timestep_embedding = original


class _DiffusionSamplingNet(SamplingNet):
    """Every diffusion sampler traces with the device-free timestep embedding."""

    def tracing(self) -> contextlib.AbstractContextManager[None]:
        return _device_free_timestep_embedding()


class ReverseProcess(nn.Module):
    """DDIM (η ≥ 0) or DDPM with one denoiser over a fixed, strided set of timesteps, unrolled (traces
    as one graph): noise ``[x_T (N, *shape)]``, plus ``(N, steps, *shape)`` per-step noise when
    stochastic → ``x_0``. ``context`` channels (a clean mask), when given, are concatenated to the
    denoiser's input at every step. ``clip`` clamps each x̂_0 to [-1, 1] (pixel space; latents are
    not bounded)."""

    def __init__(self, model: nn.Module, options: DiffusionOptions, shape: tuple[int, ...], *, clip: bool = True) -> None:
        super().__init__()
        self.model, self.prediction, self.clip = model, options.prediction, clip
        a = alphas_cumprod(options.schedule, options.train_timesteps)
        steps = torch.linspace(options.train_timesteps - 1, 0, options.sample_steps).round().long().unique_consecutive()
        self.timesteps = [int(t) for t in steps]
        # the denoiser's timestep inputs: a buffer (moves with the module; no constant of the trace's device)
        self.register_buffer("t_index", steps.clone(), persistent=False)
        self.register_buffer("a_t", a[steps].float(), persistent=False)
        prev = torch.cat([a[steps[1:]], torch.ones(1, dtype=torch.float64)])
        self.register_buffer("a_prev", prev.float(), persistent=False)
        eta = 1.0 if options.sampler is Sampler.ddpm else options.eta
        sigma = eta * ((1 - prev) / (1 - a[steps]) * (1 - a[steps] / prev)).clamp(min=0).sqrt()
        self.register_buffer("sigma", sigma.float(), persistent=False)
        self.stochastic = bool(eta > 0)
        self.noise_shapes = (shape, (len(self.timesteps), *shape)) if self.stochastic else (shape,)

    def forward(self, noise: list[torch.Tensor], context: torch.Tensor | None = None) -> torch.Tensor:
        x = noise[0]
        n = x.shape[0]
        for k in range(len(self.timesteps)):
            a, a_prev, sigma = self.a_t[k], self.a_prev[k], self.sigma[k]
            inputs = x if context is None else torch.cat([x, context], dim=1)
            out = self.model(inputs, self.t_index[k : k + 1].expand(n))
            x0, eps = to_x0(x, out, a, self.prediction)
            if self.clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # consistent with the clamped x̂_0
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if self.stochastic:
                x = x + sigma * noise[1][:, k]
        return x


class DiffusionSampler(_DiffusionSamplingNet):
    """Joint variant in pixel space: the reverse process over image + mask channels."""

    def __init__(self, model: nn.Module, options: DiffusionOptions, data: DataSpec) -> None:
        super().__init__()
        self.reverse = ReverseProcess(model, options, (1 + data.num_classes, data.image_size, data.image_size))
        self.noise_shapes = self.reverse.noise_shapes

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        return self.reverse(noise)


class LatentDiffusionSampler(_DiffusionSamplingNet):
    """Joint variant in latent space: the reverse process over the autoencoder's latent, then its
    decoder → image + mask channels at the data's size."""

    def __init__(self, model: nn.Module, autoencoder: LatentAutoencoder, options: DiffusionOptions, data: DataSpec) -> None:
        super().__init__()
        if not float(autoencoder.scale_factor) > 0:
            raise InvalidInput(
                "this latent diffusion generator's autoencoder was never calibrated (scale_factor 0): its run "
                f"stopped in the autoencoder stage (the first {options.autoencoder_steps} steps), so its denoiser is untrained."
            )
        self.autoencoder = autoencoder
        self.reverse = ReverseProcess(model, options, autoencoder.latent_shape(data.image_size), clip=False)
        self.noise_shapes = self.reverse.noise_shapes

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_latents(self.reverse(noise))


class GeneratedMasks(nn.Module):
    """Mask-conditioned variant, ``generated`` source: the mask diffusion's sample → argmax → exact one-hot."""

    def __init__(self, model: nn.Module, options: DiffusionOptions, data: DataSpec) -> None:
        super().__init__()
        self.num_classes = data.num_classes
        self.reverse = ReverseProcess(model, options, (data.num_classes, data.image_size, data.image_size))
        self.noise_shapes = self.reverse.noise_shapes

    def forward(self, noise: list[torch.Tensor]) -> torch.Tensor:
        return one_hot(self.reverse(noise).argmax(dim=1), self.num_classes, noise[0].dtype)


class MaskConditionedSampler(_DiffusionSamplingNet):
    """Mask-conditioned variant: a one-hot mask from ``masks`` (:class:`GeneratedMasks` or
    :class:`~medsynth.generators.real_deformed.DeformedBankMasks`), then the image diffusion given it.
    Noise: the mask source's tensors, then the image reverse process's."""

    def __init__(self, masks: GeneratedMasks | DeformedBankMasks, image_model: nn.Module,
                 options: DiffusionOptions, data: DataSpec) -> None:
        super().__init__()
        self.masks = masks
        self.image = ReverseProcess(image_model, options, (1, data.image_size, data.image_size))
        self.split = len(masks.noise_shapes)
        self.noise_shapes = (*masks.noise_shapes, *self.image.noise_shapes)

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        mask = self.masks(noise[: self.split])
        image = self.image(noise[self.split :], mask * 2 - 1)
        return torch.cat([image, mask], dim=1)


# Training -----------------------------------------------------------------------------------------


def _diffusion_loss(model: nn.Module, x0: torch.Tensor, ctx: StepContext, opts: DiffusionOptions,
                    context: torch.Tensor | None = None) -> torch.Tensor:
    """The DDPM objective on clean ``x0``: one uniformly drawn timestep and one ε per item (from the
    step's generator), the MSE between the denoiser's output and ε (or v). ``context`` channels are
    concatenated to the denoiser's input."""
    n = x0.shape[0]
    t = ctx.randint(opts.train_timesteps, n)
    eps = ctx.randn(*x0.shape)
    a = _alphas_on(opts.schedule, opts.train_timesteps, x0.device)[t].float().view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = eps if opts.prediction is Prediction.epsilon else a.sqrt() * eps - (1 - a).sqrt() * x0
    inputs = x_t if context is None else torch.cat([x_t, context], dim=1)
    with ctx.autocast():
        return F.mse_loss(model(inputs, t).float(), target)


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def calibrate(autoencoder: LatentAutoencoder, x: torch.Tensor) -> dict[str, float]:
    """Fix the autoencoder's latent scale factor on the batch ``x`` (image + scaled one-hot mask) and
    measure its reconstruction of ``x`` from the posterior means: image L1 in [0, 1] intensity units,
    the fraction of pixels whose decoded mask (argmax) is the true class, and the foreground Dice of
    the decoded mask (pooled over the batch and the foreground classes; accuracy alone hides a
    decoder that draws background everywhere, since most pixels are background). Dice is NaN when
    the batch has no foreground at all."""
    latent_std = autoencoder.calibrate(x)
    decoded = autoencoder.decode(autoencoder.encode(x)[0])
    image_l1 = (decoded[:, :1].clamp(-1, 1) - x[:, :1]).abs().mean() / 2
    got, want = decoded[:, 1:].argmax(dim=1), x[:, 1:].argmax(dim=1)
    mask_accuracy = (got == want).float().mean()
    overlap = ((got == want) & (want > 0)).sum()
    total = (got > 0).sum() + (want > 0).sum()
    mask_dice = float(2 * overlap / total) if total > 0 else float("nan")
    return {"latent_std": latent_std, "image_l1": float(image_l1), "mask_accuracy": float(mask_accuracy), "mask_dice": mask_dice}


# The family ---------------------------------------------------------------------------------------

_DENOISERS = ("model", "mask_model", "image_model")  # the nets with an EMA copy


class Diffusion(GeneratorFamily):
    name = "diffusion"
    title = "Denoising diffusion: image + mask jointly (pixel or latent space), or an image given a mask"
    description = (
        "Seed 002's strongest family for segmentation: MONAI's DiffusionModelUNet, DDPM objective (ε or v, linear "
        "or cosine schedule), DDIM or DDPM sampling. variant joint denoises image and one-hot mask channels "
        "together, in pixel space or (latent) in the latent space of an AutoencoderKL trained in the run's first "
        "autoencoder_steps steps (two stages, both recorded in the registry entry); variant mask-conditioned trains "
        "a mask diffusion and an image diffusion given the mask, and samples masks from the former or from "
        "training masks under random deformation. Slow to sample (one network pass per step) and, per seed 002, "
        "prone to memorize: audit its cohorts."
    )
    options_type = DiffusionOptions
    mask_sources: ClassVar[tuple[MaskSource, ...]] = (MaskSource.generated, MaskSource.real_deformed)
    loss_names: ClassVar[tuple[str, ...]] = ("loss", "autoencoder_l1", "autoencoder_kl", "mask_loss", "image_loss")
    iterative = True

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        return {"lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.9, 0.999]}  # lr_d unused: no discriminator

    def check(self, options: FamilyOptions, data: DataSpec) -> None:
        super().check(options, data)
        opts = _options(options)
        if opts.latent:
            side = data.image_size // 2 ** (len(opts.autoencoder_channels) - 1)
            halvings = len(opts.channels) - 1
            if side % 2**halvings:
                raise InvalidInput(
                    f"the {side}×{side} latent of {data.image_size}-pixel images ({len(opts.autoencoder_channels)} "
                    f"autoencoder levels) cannot be halved {halvings} times by the {len(opts.channels)}-level UNet: "
                    "use fewer autoencoder_channels or channels levels."
                )

    def check_training(self, options: FamilyOptions, training: TrainingOptions) -> None:
        opts = _options(options)
        if opts.latent and training.steps <= opts.autoencoder_steps:
            raise InvalidInput(
                f"latent diffusion trains its autoencoder in the first autoencoder_steps={opts.autoencoder_steps} steps "
                f"and the denoiser after them: steps={training.steps} leaves the denoiser none; raise steps or lower autoencoder_steps."
            )

    def mask_sources_for(self, options: FamilyOptions) -> tuple[MaskSource, ...]:
        return self.mask_sources if _options(options).variant is Variant.mask_conditioned else (MaskSource.generated,)

    def loss_names_for(self, options: FamilyOptions) -> tuple[str, ...]:
        opts = _options(options)
        if opts.variant is Variant.mask_conditioned:
            return ("mask_loss", "image_loss")
        return ("autoencoder_l1", "autoencoder_kl", "loss") if opts.latent else ("loss",)

    def minimum_steps(self, options: FamilyOptions) -> int:
        opts = _options(options)
        return opts.autoencoder_steps + 1 if opts.latent else 1

    def passes_per_sample(self, options: FamilyOptions, mode: SampleMode) -> int:
        """Denoising steps, twice over when the mask is diffused first (mask-conditioned, generated masks)."""
        opts = _options(options)
        steps = mode.sample_steps if mode.sample_steps is not None else opts.sample_steps
        two_stage = opts.variant is Variant.mask_conditioned and mode.mask_source is MaskSource.generated
        return steps * (2 if two_stage else 1)

    def stages(self, options: FamilyOptions, steps_done: int, extra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Latent: the autoencoder stage (steps, and the reconstruction quality measured when it ended)
        and the denoiser stage (steps)."""
        opts = _options(options)
        if not opts.latent:
            return {}
        return {
            "autoencoder": {"steps": min(steps_done, opts.autoencoder_steps), **extra.get("autoencoder", {})},
            "diffusion": {"steps": max(0, steps_done - opts.autoencoder_steps)},
        }

    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        opts = _options(options)
        nets = {name: net.to(data.device).train() for name, net in self._trained_nets(opts, data.spec).items()}
        betas = tuple(training.betas)
        optimizers = {name: torch.optim.Adam(net.parameters(), lr=training.lr_g, betas=betas) for name, net in nets.items()}
        ema = {name: net for name, net in nets.items() if name in _DENOISERS}
        if opts.variant is Variant.mask_conditioned:  # last: the loop finds the device from the first net
            nets["mask_bank"] = mask_bank(data, opts.mask_bank_size).to(data.device)
        return TrainState(nets=nets, optimizers=optimizers, ema=ema)

    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        opts = _options(ctx.options)
        if opts.variant is Variant.mask_conditioned:
            return self._mask_conditioned_step(state, ctx, opts)
        if opts.latent and ctx.step < opts.autoencoder_steps:
            return self._autoencoder_step(state, ctx, opts)
        return self._joint_step(state, ctx, opts)

    def _joint_step(self, state: TrainState, ctx: StepContext, opts: DiffusionOptions) -> Losses:
        """One denoiser update on image + mask channels, or (latent) on their scaled latents."""
        batch = ctx.batch()
        x0 = torch.cat([batch.images, batch.one_hot * 2 - 1], dim=1)
        if opts.latent:
            x0 = self._latents(state, x0)
        loss = _diffusion_loss(state.nets["model"], x0, ctx, opts)
        _update(state.optimizers["model"], loss)
        return {"loss": loss.detach().float()}

    @staticmethod
    def _latents(state: TrainState, x: torch.Tensor) -> torch.Tensor:
        """The frozen autoencoder's scaled latents of ``x``, calibrating it on the first call of the stage."""
        autoencoder = state.nets["autoencoder"]
        if "autoencoder" not in state.extra:
            state.extra["autoencoder"] = calibrate(autoencoder, x)
        with torch.no_grad():
            return autoencoder.latents(x)

    def _autoencoder_step(self, state: TrainState, ctx: StepContext, opts: DiffusionOptions) -> Losses:
        """One autoencoder update: L1 reconstruction of a reparametrised latent sample + ``kl_weight`` · KL."""
        batch = ctx.batch()
        x = torch.cat([batch.images, batch.one_hot * 2 - 1], dim=1)
        autoencoder = state.nets["autoencoder"]
        with ctx.autocast():
            mu, sigma = autoencoder.encode(x)
            decoded = autoencoder.decode(mu + sigma * ctx.randn(*mu.shape))
            l1 = F.l1_loss(decoded.float(), x)
            kl = kl_divergence(mu.float(), sigma.float())
        _update(state.optimizers["autoencoder"], l1 + opts.kl_weight * kl)
        return {"autoencoder_l1": l1.detach().float(), "autoencoder_kl": kl.detach().float()}

    def _mask_conditioned_step(self, state: TrainState, ctx: StepContext, opts: DiffusionOptions) -> Losses:
        """One mask denoiser update, and one image denoiser update given the batch's clean masks."""
        batch = ctx.batch()
        masks = batch.one_hot * 2 - 1
        mask_loss = _diffusion_loss(state.nets["mask_model"], masks, ctx, opts)
        _update(state.optimizers["mask_model"], mask_loss)
        image_loss = _diffusion_loss(state.nets["image_model"], batch.images, ctx, opts, context=masks)
        _update(state.optimizers["image_model"], image_loss)
        return {"mask_loss": mask_loss.detach().float(), "image_loss": image_loss.detach().float()}

    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        opts = _options(options)
        nets = self._trained_nets(opts, data)
        if opts.variant is Variant.mask_conditioned:
            nets["mask_bank"] = MaskBank(data.image_size)  # empty: loading the export's bank sizes it
        return nets

    @staticmethod
    def _trained_nets(opts: DiffusionOptions, data: DataSpec) -> dict[str, nn.Module]:
        """Fresh networks with weights to learn, by name (denoisers first)."""
        channels = data.num_classes
        if opts.variant is Variant.mask_conditioned:
            return {"mask_model": _unet(opts, channels, channels), "image_model": _unet(opts, 1 + channels, 1)}
        if opts.latent:
            return {"model": _unet(opts, opts.latent_channels, opts.latent_channels), "autoencoder": _autoencoder(opts, data)}
        return {"model": _unet(opts, 1 + channels, 1 + channels)}

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
        """The sampler of ``options`` and ``mode``'s mask source, with the cohort's ``sample_steps`` /
        ``eta`` where it chose them."""
        self.check_mode(options, data, mode)
        chosen = {k: v for k, v in (("sample_steps", mode.sample_steps), ("eta", mode.eta)) if v is not None}
        opts = _options(options).model_copy(update=chosen)
        if opts.variant is Variant.mask_conditioned:
            if mode.mask_source is MaskSource.generated:
                masks: GeneratedMasks | DeformedBankMasks = GeneratedMasks(nets["mask_model"], opts, data)
            else:
                masks = DeformedBankMasks(nets["mask_bank"], data.num_classes, opts)
            return MaskConditionedSampler(masks, nets["image_model"], opts, data).eval()
        if opts.latent:
            return LatentDiffusionSampler(nets["model"], nets["autoencoder"], opts, data).eval()
        return DiffusionSampler(nets["model"], opts, data).eval()


def _options(options: FamilyOptions) -> DiffusionOptions:
    if not isinstance(options, DiffusionOptions):
        raise InvalidInput(f"expected diffusion options, got {options.family!r} options.")
    return options
