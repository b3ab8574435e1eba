"""SPADE family (seed 001's two-stage design with Park et al. 2019's generator): masks first, then
images conditioned on them.

* Stage 1, a **mask generator**: a DCGAN over one-hot masks alone (hinge loss; fake masks reach its
  discriminator as straight-through one-hot, like the joint family's).
* Stage 2, an **image generator** conditioned on a label map: ``z`` → 4×4 → SPADE residual blocks
  (instance norm modulated per pixel by the mask) → image; trained against a multi-scale PatchGAN on
  image + one-hot mask with the hinge loss plus pix2pixHD's feature-matching loss. During training it
  is conditioned on *real* training masks.

Both stages update in every step: mask discriminator, mask generator, image discriminator, image
generator. Curves: ``loss_d``/``loss_g`` (image stage, hinge; ``loss_g`` the adversarial part only),
``loss_fm`` (feature matching, unweighted — the generator minimises ``loss_g + feature_matching ·
loss_fm``), ``loss_mask_d``/``loss_mask_g`` (mask stage, hinge).

Sampling has two mask sources:

* ``generated``: noise ``((mask_latent_dim,), (latent_dim,))``: mask generator → argmax → image generator;
* ``real-deformed``: a training mask from the **mask bank** (an evenly spaced subset of at most
  ``mask_bank_size`` training masks kept in the checkpoint and the export) under a random affine and
  elastic deformation (:mod:`medsynth.generators.real_deformed`, shared with the diffusion family),
  then the image generator. Noise ``((1,), (4,), (2, g, g), (latent_dim,))``: the bank index (a
  standard normal mapped through its CDF), rotation / log-scale / x-y translation, a coarse ``g × g``
  displacement grid (upsampled bicubically) and ``z``. Deformation noise is truncated at ±3σ; zero
  deformation noise returns the bank mask unchanged.

In both modes the output's mask channels are the exact one-hot mask the image was drawn for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.augment import diff_augment
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
from medsynth.generators.losses import AdversarialLoss, discriminator_loss, generator_loss
from medsynth.generators.real_deformed import DeformedBankMasks, RealDeformedOptions, mask_bank
from medsynth.models.gan import CriticNorm, Discriminator, init_weights
from medsynth.models.spade import MaskBank, MaskGenerator, MultiScaleDiscriminator, SpadeGenerator, one_hot


class SpadeOptions(RealDeformedOptions):
    """Two-stage SPADE generator: a mask GAN, and a SPADE image generator conditioned on masks (the
    real-deformed source's options come from :class:`~medsynth.generators.real_deformed.RealDeformedOptions`)."""

    family: Literal["spade"] = "spade"
    latent_dim: int = Field(64, ge=8, le=1024, description="Image generator latent size.")
    base_channels: int = Field(16, ge=4, le=256, description="Image generator width at full resolution; doubles per level down to 4×4 (at most 8×).")
    spade_hidden: int = Field(32, ge=4, le=256, description="Width of the conv net mapping the mask to each SPADE layer's γ, β.")
    disc_channels: int = Field(32, ge=4, le=256, description="Width of the first layer of each PatchGAN discriminator.")
    num_scales: int = Field(2, ge=1, le=3, description="Scales of the multi-scale PatchGAN (the image, then 2× and 4× downsampled).")
    feature_matching: float = Field(10.0, ge=0, le=1000, allow_inf_nan=False, description="Weight of the discriminator feature-matching loss (0: off).")
    spectral_norm: bool = Field(True, description="Spectral normalisation of every discriminator convolution (both stages).")
    mask_latent_dim: int = Field(64, ge=8, le=1024, description="Mask generator latent size.")
    mask_base_channels: int = Field(16, ge=4, le=256, description="Width of the mask generator's last block and the mask discriminator's first.")
    diff_augment: bool = Field(False, description="DiffAugment (colour, translation, cutout) on every discriminator input of both stages.")


# Sampling -----------------------------------------------------------------------------------------


class GeneratedMaskSampler(SamplingNet):
    """Noise ``(mask z, image z)``: mask generator → argmax → one-hot → SPADE generator."""

    def __init__(self, mask_generator: MaskGenerator, generator: SpadeGenerator) -> None:
        super().__init__()
        self.mask_generator, self.generator = mask_generator, generator
        self.noise_shapes = ((mask_generator.latent_dim,), (generator.latent_dim,))

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        mask = one_hot(self.mask_generator(noise[0]).argmax(dim=1), self.generator.num_classes, noise[1].dtype)
        return torch.cat([self.generator(noise[1], mask), mask], dim=1)


class DeformedMaskSampler(SamplingNet):
    """Noise ``(bank pick (1,), affine (4,), elastic field (2, g, g), image z)``: a deformed bank mask
    (:class:`~medsynth.generators.real_deformed.DeformedBankMasks`), then the SPADE generator."""

    def __init__(self, masks: DeformedBankMasks, generator: SpadeGenerator) -> None:
        super().__init__()
        self.masks, self.generator = masks, generator
        self.noise_shapes = (*masks.noise_shapes, (generator.latent_dim,))

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        mask = self.masks(noise[:-1])
        return torch.cat([self.generator(noise[-1], mask), mask], dim=1)


# The family ---------------------------------------------------------------------------------------


class Spade(GeneratorFamily):
    name = "spade"
    title = "Two-stage SPADE: mask GAN + mask-conditioned SPADE image generator"
    description = (
        "Seed 001's two-stage design: a GAN draws masks, and a SPADE generator (spatially-adaptive "
        "normalisation, multi-scale PatchGAN, feature matching) draws an image for a given mask. "
        "Masks come from the mask generator or from training masks under random affine + elastic deformation."
    )
    options_type = SpadeOptions
    mask_sources: ClassVar[tuple[MaskSource, ...]] = (MaskSource.generated, MaskSource.real_deformed)
    loss_names: ClassVar[tuple[str, ...]] = ("loss_d", "loss_g", "loss_fm", "loss_mask_d", "loss_mask_g")

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        # SPADE's two time-scale update rule: Adam(β = (0, 0.999)), discriminators 4× the generators' lr
        return {"lr_g": 1e-4, "lr_d": 4e-4, "betas": [0.0, 0.999]}

    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        opts, spec, device = _options(options), data.spec, data.device
        generator = self._generator(opts, spec)
        discriminator = MultiScaleDiscriminator(1 + spec.num_classes, opts.disc_channels, opts.num_scales,
                                                spectral_norm=opts.spectral_norm)
        mask_generator = self._mask_generator(opts, spec)
        mask_discriminator = Discriminator(
            spec.image_size, spec.num_classes, opts.mask_base_channels,
            norm=CriticNorm.none if opts.spectral_norm else CriticNorm.batch, spectral_norm=opts.spectral_norm,
        )  # fmt: skip
        mask_generator.apply(init_weights)
        mask_discriminator.apply(init_weights)
        bank = mask_bank(data, opts.mask_bank_size)
        # generator first: the loop finds the device from the first net's parameters (the bank has none)
        nets: dict[str, nn.Module] = {
            "generator": generator, "discriminator": discriminator,
            "mask_generator": mask_generator, "mask_discriminator": mask_discriminator, "mask_bank": bank,
        }  # fmt: skip
        for net in nets.values():
            net.to(device).train()
        betas = tuple(training.betas)
        return TrainState(
            nets=nets,
            optimizers={
                name: torch.optim.Adam(nets[name].parameters(), lr=lr, betas=betas)
                for name, lr in (("generator", training.lr_g), ("discriminator", training.lr_d),
                                 ("mask_generator", training.lr_g), ("mask_discriminator", training.lr_d))
            },
            ema={"generator": generator, "mask_generator": mask_generator},
        )

    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        opts = _options(ctx.options)
        batch = ctx.batch()
        losses = self._mask_step(state, ctx, opts, batch.one_hot)
        losses.update(self._image_step(state, ctx, opts, batch.joint()))
        return {name: losses[name] for name in self.loss_names}

    def _mask_step(self, state: TrainState, ctx: StepContext, opts: SpadeOptions, real: torch.Tensor) -> Losses:
        """Stage 1: one mask discriminator and one mask generator update (hinge)."""
        g, d = state.nets["mask_generator"], state.nets["mask_discriminator"]
        opt_g, opt_d = state.optimizers["mask_generator"], state.optimizers["mask_discriminator"]
        augment = _mask_augment(ctx.rng) if opts.diff_augment else _identity
        z = ctx.randn(ctx.training.batch_size, opts.mask_latent_dim)
        with ctx.autocast():
            fake = _straight_through(g(z))
            opt_d.zero_grad(set_to_none=True)
            loss_d = discriminator_loss(AdversarialLoss.hinge, d(augment(real)), d(augment(fake.detach())))
        loss_d.backward()
        opt_d.step()

        d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_g = generator_loss(AdversarialLoss.hinge, d(augment(fake)))
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        return {"loss_mask_d": loss_d.detach().float(), "loss_mask_g": loss_g.detach().float()}

    def _image_step(self, state: TrainState, ctx: StepContext, opts: SpadeOptions, real: torch.Tensor) -> Losses:
        """Stage 2: one multi-scale discriminator and one SPADE generator update (hinge + feature matching),
        the generator conditioned on the real batch's masks. With DiffAugment a real item and the fake
        drawn for its mask get the *same* augmentation, so that their features stay comparable."""
        g, d = state.nets["generator"], state.nets["discriminator"]
        opt_g, opt_d = state.optimizers["generator"], state.optimizers["discriminator"]
        masks = real[:, 1:]
        z = ctx.randn(ctx.training.batch_size, opts.latent_dim)
        with ctx.autocast():
            fake = torch.cat([g(z, masks), masks], dim=1)
            real_in, fake_in = _paired_augment(real, fake.detach(), ctx.rng) if opts.diff_augment else (real, fake.detach())
            opt_d.zero_grad(set_to_none=True)
            loss_d = _mean(discriminator_loss(AdversarialLoss.hinge, r[-1], f[-1]) for r, f in zip(d(real_in), d(fake_in)))
        loss_d.backward()
        opt_d.step()

        d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with ctx.autocast():
            real_in, fake_in = _paired_augment(real, fake, ctx.rng) if opts.diff_augment else (real, fake)
            fake_features = d(fake_in)
            loss_g = _mean(generator_loss(AdversarialLoss.hinge, f[-1]) for f in fake_features)
            if opts.feature_matching > 0:
                with torch.no_grad():
                    real_features = d(real_in)
                loss_fm = feature_matching_loss(real_features, fake_features)
            else:
                loss_fm = torch.zeros((), device=real.device)
        (loss_g + opts.feature_matching * loss_fm).backward()
        opt_g.step()
        d.requires_grad_(True)
        return {"loss_d": loss_d.detach().float(), "loss_g": loss_g.detach().float(), "loss_fm": loss_fm.detach().float()}

    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        opts = _options(options)
        return {
            "generator": self._generator(opts, data),
            "mask_generator": self._mask_generator(opts, data),
            "mask_bank": MaskBank(data.image_size),  # empty: loading the export's bank sizes it
        }

    def sampling_net(self, options: FamilyOptions, data: DataSpec, nets: Mapping[str, nn.Module], mode: SampleMode) -> SamplingNet:
        self.check_mode(options, data, mode)
        opts = _options(options)
        if mode.mask_source is MaskSource.generated:
            return GeneratedMaskSampler(nets["mask_generator"], nets["generator"]).eval()
        masks = DeformedBankMasks(nets["mask_bank"], data.num_classes, opts)
        return DeformedMaskSampler(masks, nets["generator"]).eval()

    @staticmethod
    def _generator(opts: SpadeOptions, data: DataSpec) -> SpadeGenerator:
        return SpadeGenerator(data.image_size, data.num_classes, opts.latent_dim, opts.base_channels, opts.spade_hidden)

    @staticmethod
    def _mask_generator(opts: SpadeOptions, data: DataSpec) -> MaskGenerator:
        return MaskGenerator(data.image_size, data.num_classes, opts.mask_latent_dim, opts.mask_base_channels)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD's feature matching: per scale, the sum over intermediate layers (not the score map) of
    the L1 distance between the discriminator's features on fake and (detached) real; mean over scales."""
    per_scale = [
        sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(rs[:-1], fs[:-1], strict=True))
        for rs, fs in zip(real, fake, strict=True)
    ]
    return _mean(per_scale)


def _mean(values: Any) -> torch.Tensor:
    values = list(values)
    return sum(values) / len(values)


def _straight_through(logits: torch.Tensor) -> torch.Tensor:
    """Mask logits → exactly one-hot in the forward pass, softmax gradient in the backward pass (the
    mask-only counterpart of :func:`medsynth.generators.base.critic_input`)."""
    soft = torch.softmax(logits.float(), dim=1).to(logits.dtype)
    return one_hot(soft.argmax(dim=1), soft.shape[1], soft.dtype) - soft.detach() + soft


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _mask_augment(rng: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """DiffAugment on masks alone: a blank (black) image channel rides along and is dropped after, so
    translation and cutout fill with background exactly as for joint tensors."""

    def augment(masks: torch.Tensor) -> torch.Tensor:
        blank = torch.full_like(masks[:, :1], -1.0)
        return diff_augment(torch.cat([blank, masks], dim=1), rng)[:, 1:]

    return augment


def _paired_augment(real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffAugment with the same draws for ``real[i]`` and ``fake[i]`` (``rng`` advances once)."""
    twin = torch.Generator(device="cpu")
    twin.set_state(rng.get_state())
    return diff_augment(real, rng), diff_augment(fake, twin)


def _options(options: FamilyOptions) -> SpadeOptions:
    if not isinstance(options, SpadeOptions):
        raise InvalidInput(f"expected spade options, got {options.family!r} options.")
    return options
