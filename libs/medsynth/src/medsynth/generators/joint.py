"""Joint adversarial family (seed 000's protocol): one DCGAN-style architecture drawing image + mask
channels together, with the loss swapped — DCGAN (bce), LSGAN, WGAN (weight clipping), WGAN-GP
(gradient penalty, critic without batch norm) and hinge; spectral norm in the critic as an option.

Fake masks reach the discriminator as ``straight-through`` one-hot by default: exactly one-hot in the
forward pass like the real masks (softmax probabilities are an easy tell that lets the discriminator
win early and the generator collapse), softmax gradients in the backward pass. ``softmax`` is the
behaviour of medsynth's first joint GAN (its format-1 checkpoints load with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.augment import diff_augment
from medsynth.generators.base import (
    DataSpec,
    FamilyOptions,
    GeneratorFamily,
    Losses,
    SampleMode,
    SamplingNet,
    StepContext,
    TrainingOptions,
    TrainingData,
    TrainState,
    critic_input,
)
from medsynth.generators.losses import AdversarialLoss, discriminator_loss, generator_loss, gradient_penalty
from medsynth.models.gan import CriticNorm, Discriminator, Generator, init_weights


class JointLoss(str, Enum):
    bce = "bce"
    lsgan = "lsgan"
    wgan = "wgan"
    wgan_gp = "wgan-gp"
    hinge = "hinge"


class FakeMasks(str, Enum):
    straight_through = "straight-through"
    softmax = "softmax"


_WASSERSTEIN = (JointLoss.wgan, JointLoss.wgan_gp)


class JointGanOptions(FamilyOptions):
    """Joint image + mask GAN. Nulls resolve by loss: ``n_critic`` 5 for wgan/wgan-gp, else 1;
    ``critic_norm`` layer for wgan-gp, else batch."""

    family: Literal["joint-gan"] = "joint-gan"
    loss: JointLoss = Field(JointLoss.hinge, description="bce (DCGAN), lsgan, wgan (clipping), wgan-gp, hinge.")
    latent_dim: int = Field(128, ge=8, le=1024)
    base_channels: int = Field(32, ge=4, le=512, description="Width of the last generator block; doubles per block up.")
    critic_norm: CriticNorm | None = Field(None, description="batch, layer or none; wgan-gp forbids batch.")
    spectral_norm: bool = Field(False, description="Spectral normalisation of every critic convolution.")
    n_critic: int | None = Field(None, ge=1, le=20, description="Critic updates per generator update.")
    clip_value: float = Field(0.01, gt=0, le=1, description="wgan: critic weights are clipped to ±clip_value.")
    gp_weight: float = Field(10.0, gt=0, le=1000, description="wgan-gp: weight λ of the gradient penalty.")
    diff_augment: bool = Field(False, description="DiffAugment (colour, translation, cutout) on every critic input.")
    fake_masks: FakeMasks = Field(FakeMasks.straight_through, description="How fake masks reach the critic.")

    @model_validator(mode="before")
    @classmethod
    def _resolve_by_loss(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        loss = data.get("loss", JointLoss.hinge.value)
        loss = loss.value if isinstance(loss, Enum) else loss
        if data.get("n_critic") is None:
            data["n_critic"] = 5 if loss in ("wgan", "wgan-gp") else 1
        if data.get("critic_norm") is None:
            data["critic_norm"] = "layer" if loss == "wgan-gp" else "batch"
        return data

    @model_validator(mode="after")
    def _no_batch_norm_with_gradient_penalty(self) -> JointGanOptions:
        if self.loss is JointLoss.wgan_gp and self.critic_norm is CriticNorm.batch:
            raise ValueError(
                "wgan-gp penalises each sample's gradient, which batch norm couples across the batch: "
                "use critic_norm 'layer' or 'none'"
            )
        return self


class JointSampler(SamplingNet):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        self.noise_shapes = ((generator.latent_dim,),)

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        return self.generator(noise[0])


class JointGan(GeneratorFamily):
    name = "joint-gan"
    title = "Joint image + mask GAN (DCGAN / LSGAN / WGAN / WGAN-GP / hinge)"
    description = (
        "Seed 000's protocol: one DCGAN-style generator draws the image and its mask as extra one-hot "
        "channels; the adversarial loss is swapped. No real mask is needed at sampling time."
    )
    options_type = JointGanOptions
    loss_names: ClassVar[tuple[str, ...]] = ("loss_d", "loss_g")

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        loss = _options(options).loss
        if loss is JointLoss.wgan:  # Arjovsky et al.: RMSProp (no momentum), lr 5e-5
            return {"lr_g": 5e-5, "lr_d": 5e-5, "betas": [0.0, 0.999]}
        if loss is JointLoss.wgan_gp:  # Gulrajani et al.: Adam(1e-4, β = (0, 0.9))
            return {"lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.0, 0.9]}
        return {"lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999]}

    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        opts, spec, device = _options(options), data.spec, data.device
        generator = self._generator(opts, spec)
        critic = Discriminator(spec.image_size, 1 + spec.num_classes, opts.base_channels,
                               norm=opts.critic_norm, spectral_norm=opts.spectral_norm)
        generator.apply(init_weights)
        critic.apply(init_weights)
        generator.to(device).train()
        critic.to(device).train()
        return TrainState(
            nets={"generator": generator, "discriminator": critic},
            optimizers={"generator": _optimizer(opts, training, generator, training.lr_g),
                        "discriminator": _optimizer(opts, training, critic, training.lr_d)},
            ema={"generator": generator},
        )

    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        opts = _options(ctx.options)
        g, d = state.nets["generator"], state.nets["discriminator"]
        opt_g, opt_d = state.optimizers["generator"], state.optimizers["discriminator"]
        kind = AdversarialLoss.wgan if opts.loss in _WASSERSTEIN else AdversarialLoss(opts.loss.value)
        augment = (lambda x: diff_augment(x, ctx.rng)) if opts.diff_augment else (lambda x: x)
        batch_size, latent = ctx.training.batch_size, opts.latent_dim

        d.requires_grad_(True)
        for _ in range(opts.n_critic):
            real = ctx.batch().joint()
            z = ctx.randn(batch_size, latent)
            with ctx.autocast():
                fake = critic_input(g(z), opts.fake_masks is FakeMasks.straight_through)
                opt_d.zero_grad(set_to_none=True)
                loss_d = discriminator_loss(kind, d(augment(real)), d(augment(fake.detach())))
            if opts.loss is JointLoss.wgan_gp:
                eps = ctx.rand(batch_size, 1, 1, 1)
                loss_d = loss_d + opts.gp_weight * gradient_penalty(lambda x: d(augment(x)), real, fake, eps)
            loss_d.backward()
            opt_d.step()
            if opts.loss is JointLoss.wgan:
                with torch.no_grad():
                    for p in d.parameters():
                        p.clamp_(-opts.clip_value, opts.clip_value)

        d.requires_grad_(False)  # the generator's backward pass needs no critic gradients
        opt_g.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_g = generator_loss(kind, d(augment(fake)))  # the last critic round's fakes, as in DCGAN
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        return {"loss_d": loss_d.detach().float(), "loss_g": loss_g.detach().float()}

    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        return {"generator": self._generator(_options(options), data)}

    def sampling_net(self, options: FamilyOptions, data: DataSpec, nets: Mapping[str, nn.Module], mode: SampleMode) -> SamplingNet:
        self.check_mode(options, data, mode)
        return JointSampler(nets["generator"]).eval()

    @staticmethod
    def _generator(opts: JointGanOptions, data: DataSpec) -> Generator:
        return Generator(data.image_size, 1 + data.num_classes, opts.latent_dim, opts.base_channels)


def _options(options: FamilyOptions) -> JointGanOptions:
    if not isinstance(options, JointGanOptions):
        raise InvalidInput(f"expected joint-gan options, got {options.family!r} options.")
    return options


def _optimizer(opts: JointGanOptions, training: TrainingOptions, net: nn.Module, lr: float | None) -> torch.optim.Optimizer:
    if opts.loss is JointLoss.wgan:
        return torch.optim.RMSprop(net.parameters(), lr=lr)
    return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(training.betas))
