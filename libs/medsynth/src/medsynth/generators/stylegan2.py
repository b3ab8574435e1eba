"""StyleGAN2 family (seed 001's protocol): a small StyleGAN2 (:mod:`medsynth.models.stylegan2`) drawing
the image and its mask logits together, optionally class-conditional, trained as StyleGAN2-ADA trains:

* non-saturating logistic loss (``bce``) for both networks;
* lazy R1 on real samples: every ``r1_every`` steps, weighted ``γ/2 · r1_every`` and added to that
  step's discriminator loss (one backward pass; StyleGAN2 makes it a separate optimiser step instead,
  with lr and betas rescaled by ``r1_every / (r1_every + 1)`` — with the penalty folded in, no rescaling
  is needed). An R1 step's real pass runs in float32, outside bf16 autocast. ``r1_gamma`` null: ``0.0002 · S² / batch`` (StyleGAN2-ADA's "auto" heuristic; 0.0256 at
  64×64, batch 32);
* style mixing: per sample with probability ``style_mixing``, the layers from a uniform cutoff in
  ``[1, num_ws)`` on take w from a second latent;
* random noise maps in every synthesis layer while training (drawn from the step's generator);
* discriminator inputs ``concat(image, one-hot mask)``, fake masks straight-through one-hot
  (:func:`~medsynth.generators.base.critic_input`), augmented by DiffAugment or ADA;
* one generator forward per step: its fakes train the discriminator (detached), then the generator
  through the updated discriminator. The loop keeps the EMA generator.

Not implemented: path-length regularisation (a mild smoothness prior of the mapping; it matters for
latent interpolation and costs an extra generator backward, neither needed for cohorts) and truncation.

ADA (Karras et al. 2020, "Training GANs with limited data"): every augmentation is applied per sample
with probability ``p`` (each a random element of its group): x-flip, rotation by a multiple of 90°,
integer translation by up to S/8 with reflection at the borders — all three on image and mask channels
together, so they stay aligned — and brightness ``+N(0, 0.2)``, contrast ``×2^N(0, 0.5)`` (around the
per-sample mean) on the image channel only. ``p`` starts at 0 and, every ``ada_interval`` steps, moves by
``sign(E[sign D(real)] − ada_target) · (images seen since) / (ada_kimg · 1000)``, clamped to [0, 1].
``ada_kimg`` defaults to 5 (StyleGAN2-ADA: 500, for runs of tens of millions of images), so that p can
react within a CPU run of a few thousand steps: on 256 items at 32×32 the discriminator of an
unaugmented run wins within ~200 steps of batch 16. ``p``, the running sign statistics and the last
R1 value live in ``state.extra`` as device tensors (no host sync per step), so a resumed run
continues exactly.

Training defaults (``lr`` 0.0025 for both networks, Adam betas (0, 0.99)) are StyleGAN2-ADA's; with
equalised learning rates they carry over to these small widths. Checked on 256 synthetic squares and
discs at 32×32 (batch 16, 600 steps, channel_base 1024, channel_max 64): with ``ada`` (p settles near
0.4) or ``diffaugment`` the losses stay balanced and image and mask agree; without augmentation the
discriminator wins (loss_d → 0.01) within ~200 steps, with the heuristic γ and with γ = 0.5 alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
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
    TrainingData,
    TrainingOptions,
    TrainState,
    critic_input,
    host_to_device,
)
from medsynth.generators.losses import AdversarialLoss, discriminator_loss, generator_loss, r1_penalty
from medsynth.models.stylegan2 import Discriminator, Generator

ADA_TRANSLATION = 0.125  # of the image size
ADA_BRIGHTNESS_STD = 0.2
ADA_CONTRAST_STD = 0.5   # of log2 of the contrast factor


class Augment(str, Enum):
    none = "none"
    diffaugment = "diffaugment"  # colour, translation, cutout on every D input (generators.augment)
    ada = "ada"                  # adaptive discriminator augmentation


class StyleGan2Options(FamilyOptions):
    """Conditional StyleGAN2 drawing image + mask. Defaults are sized for 64×64 on a CPU (≈2.3 M
    parameters in all); feature maps at resolution r: ``max(8, min(channel_base // r, channel_max))``."""

    family: Literal["stylegan2"] = "stylegan2"
    latent_dim: int = Field(128, ge=8, le=1024, description="Dimension of z.")
    style_dim: int = Field(128, ge=8, le=1024, description="Dimension of w (and of the class embedding).")
    mapping_layers: int = Field(4, ge=1, le=8, description="Linear layers of the mapping network (lr multiplier 0.01).")
    channel_base: int = Field(2048, ge=256, le=65536,
                              description="Feature maps at resolution r: channel_base / r (capped), in G and D.")
    channel_max: int = Field(128, ge=8, le=512, description="Most feature maps at any resolution, in G and D.")
    conditional: bool = Field(False, description="Class-conditional G (label embedding into the mapping) and D "
                                                  "(projection); needs conditions.")
    style_mixing: float = Field(0.9, ge=0, le=1, description="Probability per training sample of mixing two latents' styles.")
    r1_gamma: float | None = Field(None, ge=0, le=1000, description="R1 weight γ; null: 0.0002·image_size²/batch_size.")
    r1_every: int = Field(16, ge=1, le=256, description="Lazy R1: penalise every this many steps (weighted by it).")
    mbstd_group: int = Field(4, ge=0, le=32, description="Minibatch-stddev group size in D; 0 or 1: no stddev feature.")
    augment: Augment = Field(Augment.ada, description="Discriminator augmentation: none, diffaugment or ada.")
    ada_target: float = Field(0.6, gt=0, lt=1, description="ada: target of E[sign D(real)].")
    ada_interval: int = Field(4, ge=1, le=1000, description="ada: adjust p every this many steps.")
    ada_kimg: float = Field(5, gt=0, le=10_000, description="ada: thousands of real images over which p can move by 1.")


class StyleGan2Sampler(SamplingNet):
    """noise = [z (N, latent_dim), one (N, 1, r, r) map per synthesis conv] and condition → (N, 1 + C, S, S)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        self.noise_shapes = ((generator.latent_dim,), *generator.noise_shapes)

    def forward(self, noise: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        return self.generator(noise[0], condition, noise[1:])


class StyleGan2(GeneratorFamily):
    name = "stylegan2"
    title = "StyleGAN2 image + mask (conditional, R1, style mixing, ADA / DiffAugment)"
    description = (
        "Seed 001's protocol: a small StyleGAN2 (mapping network, modulated convolutions, noise inputs, "
        "skip outputs) draws the image and its mask logits together; residual discriminator on image + "
        "one-hot mask with lazy R1 and adaptive (ADA) or differentiable augmentation; optional class conditioning."
    )
    options_type = StyleGan2Options
    loss_names: ClassVar[tuple[str, ...]] = ("loss_d", "loss_g", "r1", "ada_p")

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        return {"lr_g": 0.0025, "lr_d": 0.0025, "betas": [0.0, 0.99]}

    def check(self, options: FamilyOptions, data: DataSpec) -> None:
        super().check(options, data)
        if _options(options).conditional and data.num_conditions == 0:
            raise InvalidInput("stylegan2 with conditional=true needs class conditions (data.num_conditions > 0).")

    def conditional(self, options: FamilyOptions) -> bool:
        return _options(options).conditional

    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        opts, spec, device = _options(options), data.spec, data.device
        self.check(opts, spec)
        generator = _generator(opts, spec).to(device).train()
        critic = Discriminator(spec.image_size, 1 + spec.num_classes, channel_base=opts.channel_base,
                               channel_max=opts.channel_max, mbstd_group=opts.mbstd_group,
                               num_conditions=_num_conditions(opts, spec)).to(device).train()
        betas = tuple(training.betas) if training.betas is not None else (0.0, 0.99)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return TrainState(
            nets={"generator": generator, "discriminator": critic},
            optimizers={"generator": torch.optim.Adam(generator.parameters(), lr=training.lr_g or 0.0025, betas=betas),
                        "discriminator": torch.optim.Adam(critic.parameters(), lr=training.lr_d or 0.0025, betas=betas)},
            ema={"generator": generator},
            extra={"ada_p": zero.clone(), "ada_sign_sum": zero.clone(), "ada_sign_count": 0,
                   "r1": torch.zeros((), device=device)},
        )

    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        opts, device = _options(ctx.options), ctx.data.device
        g, d = state.nets["generator"], state.nets["discriminator"]
        opt_g, opt_d = state.optimizers["generator"], state.optimizers["discriminator"]
        extra = state.extra
        p = torch.as_tensor(extra["ada_p"], dtype=torch.float64).to(device)
        augment = _augmenter(opts, p, ctx.rng)
        n = ctx.training.batch_size

        real = ctx.batch()
        condition = real.conditions if opts.conditional else None  # D's labels; the fakes take the real batch's
        z, z_mix = ctx.randn(n, opts.latent_dim), ctx.randn(n, opts.latent_dim)
        cutoff = host_to_device(mixing_cutoffs(n, g.num_ws, opts.style_mixing, ctx.rng), device)
        noise = [ctx.randn(n, *shape) for shape in g.noise_shapes]
        with ctx.autocast():  # (an unconditional generator ignores the labels)
            fake = critic_input(g(z, real.conditions, noise, z_mix, cutoff))

        # Discriminator: logistic loss, plus lazy R1 on R1 steps. R1 is a gradient penalty: its real pass
        # runs in float32 even under bf16 autocast (a bf16 input gradient is too coarse to penalise).
        r1_step = ctx.step % opts.r1_every == 0
        real_x = real.joint().detach().requires_grad_(r1_step)
        d.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if r1_step else ctx.autocast():
            real_scores = d(augment(real_x), condition)
        with ctx.autocast():
            fake_scores = d(augment(fake.detach()), condition)
            loss_d = discriminator_loss(AdversarialLoss.bce, real_scores, fake_scores)
        total = loss_d
        if r1_step:
            r1 = r1_penalty(real_scores.float(), real_x)
            total = total + r1 * (r1_gamma(opts, ctx.data.spec, n) / 2 * opts.r1_every)
            extra["r1"] = r1.detach().float()
        total.backward()
        opt_d.step()
        if opts.augment is Augment.ada:
            _update_ada(extra, opts, real_scores.detach(), ctx.step, p)

        # Generator: non-saturating loss through the updated discriminator.
        d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_g = generator_loss(AdversarialLoss.bce, d(augment(fake), condition))
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        return {"loss_d": loss_d.detach().float(), "loss_g": loss_g.detach().float(),
                "r1": torch.as_tensor(extra["r1"]).to(device).float(),
                "ada_p": torch.as_tensor(extra["ada_p"]).to(device).float()}

    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        return {"generator": _generator(_options(options), data)}

    def sampling_net(self, options: FamilyOptions, data: DataSpec, nets: Mapping[str, nn.Module],
                     mode: SampleMode) -> SamplingNet:
        self.check_mode(options, data, mode)
        return StyleGan2Sampler(nets["generator"]).eval()


def _options(options: FamilyOptions) -> StyleGan2Options:
    if not isinstance(options, StyleGan2Options):
        raise InvalidInput(f"expected stylegan2 options, got {options.family!r} options.")
    return options


def _num_conditions(opts: StyleGan2Options, data: DataSpec) -> int:
    return data.num_conditions if opts.conditional else 0


def _generator(opts: StyleGan2Options, data: DataSpec) -> Generator:
    return Generator(data.image_size, data.num_classes, latent_dim=opts.latent_dim, style_dim=opts.style_dim,
                     mapping_layers=opts.mapping_layers, channel_base=opts.channel_base,
                     channel_max=opts.channel_max, num_conditions=_num_conditions(opts, data))


def r1_gamma(opts: StyleGan2Options, data: DataSpec, batch_size: int) -> float:
    """``opts.r1_gamma``, or StyleGAN2-ADA's heuristic ``0.0002 · S² / batch``."""
    return opts.r1_gamma if opts.r1_gamma is not None else 0.0002 * data.image_size**2 / batch_size


def mixing_cutoffs(n: int, num_ws: int, probability: float, rng: torch.Generator) -> torch.Tensor:
    """Per sample the first layer taking the second latent's w: uniform in ``[1, num_ws)`` with
    ``probability``, else ``num_ws`` (no mixing). Always draws the same numbers from ``rng``."""
    mix = torch.rand(n, generator=rng) < probability
    cutoff = torch.randint(1, num_ws, (n,), generator=rng)
    return torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))


def _augmenter(opts: StyleGan2Options, p: torch.Tensor, rng: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    if opts.augment is Augment.diffaugment:
        return lambda x: diff_augment(x, rng)
    if opts.augment is Augment.ada:
        return lambda x: ada_augment(x, p, rng)
    return lambda x: x


# ADA ----------------------------------------------------------------------------------------------


def adjust_ada_p(p: torch.Tensor, sign_sum: torch.Tensor, count: int, target: float, kimg: float) -> torch.Tensor:
    """One ADA adjustment: ``p + sign(sign_sum / count − target) · count / (kimg · 1000)`` in [0, 1]."""
    rt = sign_sum / max(count, 1)
    return (p + torch.sign(rt - target) * (count / (kimg * 1000))).clamp(0.0, 1.0)


def _update_ada(extra: dict[str, Any], opts: StyleGan2Options, real_scores: torch.Tensor, step: int, p: torch.Tensor) -> None:
    device = real_scores.device
    sign_sum = torch.as_tensor(extra["ada_sign_sum"], dtype=torch.float64).to(device)
    sign_sum = sign_sum + real_scores.double().sign().sum()
    count = int(extra["ada_sign_count"]) + real_scores.shape[0]
    if (step + 1) % opts.ada_interval == 0:
        p = adjust_ada_p(p, sign_sum, count, opts.ada_target, opts.ada_kimg)
        sign_sum, count = torch.zeros_like(sign_sum), 0
    extra.update(ada_p=p, ada_sign_sum=sign_sum, ada_sign_count=count)


def ada_augment(x: torch.Tensor, p: torch.Tensor | float, rng: torch.Generator) -> torch.Tensor:
    """ADA's geometric and colour augmentations on a joint ``(N, 1 + C, S, S)`` batch, each applied per
    sample with probability ``p`` (see the module docstring). Differentiable in ``x``; draws a fixed
    amount from the CPU generator ``rng`` whatever ``p`` is, so the step's randomness does not depend on it."""
    n, _, h, w = x.shape
    device = x.device
    gate = host_to_device(torch.rand(5, n, generator=rng), device) < torch.as_tensor(p, device=device)
    flip_bit = host_to_device(torch.randint(0, 2, (n,), generator=rng), device)
    turns = host_to_device(torch.randint(0, 4, (n,), generator=rng), device)
    shift = int(h * ADA_TRANSLATION + 0.5)
    offsets = host_to_device(torch.randint(-shift, shift + 1, (2, n), generator=rng), device)
    brightness = host_to_device(torch.randn(n, generator=rng) * ADA_BRIGHTNESS_STD, device)
    contrast = host_to_device(torch.exp2(torch.randn(n, generator=rng) * ADA_CONTRAST_STD), device)

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.view(n, 1, 1, 1)

    x = torch.where(per_sample(gate[0] & (flip_bit == 1)), x.flip(3), x)
    turns = torch.where(gate[1], turns, torch.zeros_like(turns))
    rotations = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(4)])  # square images
    x = rotations[turns, torch.arange(n, device=device)]
    offsets = torch.where(gate[2].unsqueeze(0), offsets, torch.zeros_like(offsets))
    x = _translate_reflect(x, offsets[0], offsets[1])
    image = x[:, :1]
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    shift_by = per_sample(torch.where(gate[3], brightness, torch.zeros_like(brightness)).to(x.dtype))
    scale_by = per_sample(torch.where(gate[4], contrast, torch.ones_like(contrast)).to(x.dtype))
    coloured = (image + shift_by - mean) * scale_by + mean
    image = torch.where(per_sample(gate[3] | gate[4]), coloured, image)
    return torch.cat([image, x[:, 1:]], dim=1)


def _translate_reflect(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``out[n, :, r, c] = x[n, :, r − dy[n], c − dx[n]]``, indices reflected at the borders (by
    indexing: reflection padding has no deterministic CUDA backward)."""
    n, _, h, w = x.shape

    def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
        index = index.abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)

    rows = reflect(torch.arange(h, device=x.device).view(1, h, 1) - dy.view(n, 1, 1), h).expand(n, h, w)
    cols = reflect(torch.arange(w, device=x.device).view(1, 1, w) - dx.view(n, 1, 1), w).expand(n, h, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
