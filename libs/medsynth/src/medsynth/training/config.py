"""The fully resolved options of one GAN training run.

A :class:`TrainConfig` is frozen and validated on construction; :meth:`TrainConfig.to_dict` gives the
JSON- and ``torch.load(weights_only=True)``-safe form stored in every checkpoint, and
:meth:`TrainConfig.from_dict` reads it back (rejecting unknown keys and naming every bad value).

Default loss: **hinge**. Its discriminator loss saturates once a sample is classified with margin 1
(D stops pushing on samples it already gets right, which keeps the DCGAN discriminator from running
away), a discriminator that wins outright shows in the curves as ``loss_d → 0``, and it is the loss of
the SNGAN/BigGAN line that later recipes build on. ``bce`` (non-saturating DCGAN) and ``lsgan`` stay
available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import GanLoss, GeneratorConfig

_INT_FIELDS = ("steps", "batch_size", "checkpoint_every", "log_every", "seed")
_FLOAT_FIELDS = ("lr_g", "lr_d", "ema_decay")
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of one training run (keyword-only).

    Attributes:
        generator: architecture of generator and discriminator.
        steps: total optimisation steps (one D update and one G update each).
        loss: adversarial loss; hinge by default (see the module docstring).
        batch_size: real and fake samples per step.
        lr_g, lr_d, betas: Adam settings of the generator and discriminator.
        ema_decay: decay of the generator's exponential moving average (0 disables: the EMA copy
            then equals the raw generator). Ramped up as ``min(decay, (1 + t) / (10 + t))`` so that
            short runs are not dominated by the initial weights.
        diff_augment: apply DiffAugment (brightness/contrast on the image channel, translation and
            cutout on all channels) to every discriminator input, real and fake alike.
        checkpoint_every: write a resumable checkpoint every this many steps.
        log_every: record a curve point and call ``on_progress`` every this many steps.
        seed: seeds the initial weights and, with the step number, all per-step randomness.
    """

    steps: int
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: GanLoss = GanLoss.hinge
    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999
    diff_augment: bool = False
    checkpoint_every: int = 200
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept the plain forms too (a mapping, a loss name, a list of betas), stored normalised.
        object.__setattr__(self, "generator", _generator_from(self.generator))
        object.__setattr__(self, "loss", _loss_from(self.loss))
        object.__setattr__(self, "betas", _betas_from(self.betas))
        _check_generator(self.generator)
        for name in _INT_FIELDS:
            _check_int(name, getattr(self, name), minimum=0 if name == "seed" else 1)
        if self.seed > _MAX_SEED:
            raise InvalidInput(f"seed must be at most {_MAX_SEED}, got {self.seed}.")
        for name in ("lr_g", "lr_d"):
            value = _check_float(name, getattr(self, name))
            if value <= 0:
                raise InvalidInput(f"{name} must be > 0, got {value!r}.")
        decay = _check_float("ema_decay", self.ema_decay)
        if not 0 <= decay < 1:
            raise InvalidInput(f"ema_decay must be in [0, 1) (0 disables the EMA), got {decay!r}.")
        _check_betas(self.betas)
        if not isinstance(self.diff_augment, bool):
            raise InvalidInput(f"diff_augment must be true or false, got {self.diff_augment!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, numbers, strings, bools): JSON- and weights_only-safe."""
        out = asdict(self)
        out["generator"] = self.generator.to_dict()
        out["loss"] = self.loss.value
        out["betas"] = [float(b) for b in self.betas]
        for name in _FLOAT_FIELDS:
            out[name] = float(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config from plain data (as :meth:`to_dict` writes it).

        Raises:
            InvalidInput: unknown or missing keys, or a value of the wrong type or range.
        """
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a training config must be a mapping, got {type(data).__name__}.")
        _reject_unknown("training config", data, {f.name for f in fields(cls)})
        if "steps" not in data:
            raise InvalidInput("training config is missing the required key 'steps'.")
        return cls(**data)


def _generator_from(value: Any) -> GeneratorConfig:
    if isinstance(value, GeneratorConfig):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"generator must be a mapping of generator options, got {value!r}.")
    _reject_unknown("generator config", value, {f.name for f in fields(GeneratorConfig)})
    for name, v in value.items():
        _check_int(f"generator.{name}", v, minimum=1)
    return GeneratorConfig(**value)


def _loss_from(value: Any) -> GanLoss:
    if isinstance(value, GanLoss):
        return value
    try:
        return GanLoss(value)
    except ValueError:
        allowed = ", ".join(repr(v.value) for v in GanLoss)
        raise InvalidInput(f"loss must be one of {allowed}, got {value!r}.") from None


def _betas_from(value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InvalidInput(f"betas must be a pair of numbers in [0, 1), got {value!r}.")
    return (value[0], value[1]) if not isinstance(value, tuple) else value


def _check_generator(config: GeneratorConfig) -> None:
    for name in ("latent_dim", "base_channels"):
        _check_int(f"generator.{name}", getattr(config, name), minimum=1)


def _check_betas(betas: tuple[Any, Any]) -> None:
    for i, b in enumerate(betas):
        value = _check_float(f"betas[{i}]", b)
        if not 0 <= value < 1:
            raise InvalidInput(f"betas[{i}] must be in [0, 1), got {value!r}.")


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}.")
    return value


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _reject_unknown(what: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidInput(f"unknown {what} key(s) {unknown}; allowed: {sorted(known)}.")
