"""The generator seam: what every generator family provides, and the types the family-agnostic
parts (training loop, checkpoints, export, samplers, REST, protos) exchange with it.

A family is a :class:`GeneratorFamily` subclass registered by name in
:mod:`medsynth.generators.registry`. It owns

* its options: a frozen pydantic model (:class:`FamilyOptions` subclass, ``family`` the discriminator);
* its networks and optimisers (:meth:`GeneratorFamily.init_state`), which of them keep an EMA copy;
* its training step (:meth:`GeneratorFamily.train_step`): any number of updates of any of its networks,
  all randomness drawn from the step's generator;
* how it samples: :meth:`GeneratorFamily.sampling_net` builds a :class:`SamplingNet` — a pure function
  from per-sample noise (and a class condition) to an image + mask — from the networks the export holds;
* where its options change them, the mask sources and losses of a generator and the stages of its
  training run (:meth:`GeneratorFamily.mask_sources_for`, :meth:`~GeneratorFamily.loss_names_for`,
  :meth:`~GeneratorFamily.stages`).

Everything else — resume, EMA, checkpoints every N steps, curves, progress, cancellation, export to
TorchServe, in-process sampling, cohort manifests — is generic and never imports a concrete family.

Tensor conventions (all families):

* images ``(N, 1, S, S)`` in [-1, 1] while training and inside a :class:`SamplingNet`;
* masks ``(N, S, S)`` int64 class ids in ``[0, num_classes)``, or one-hot ``(N, C, S, S)``;
* a :class:`SamplingNet` returns ``(N, 1 + C, S, S)``: channel 0 the image in [-1, 1], channels 1..C
  class scores whose argmax is the mask.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from medsynth.core.errors import InvalidInput

MAX_SEED = 2**63 - 1


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 in the training step (CUDA or CPU); weights stay float32


class MaskSource(str, Enum):
    """Where a cohort's masks come from."""

    generated = "generated"          # drawn by the generator itself (joint) or by a trained mask generator
    real_deformed = "real-deformed"  # training masks under random affine + elastic deformation


class TrainingOptions(BaseModel):
    """Options of the training loop, the same for every family. ``None`` learning rates and betas take
    the family's defaults (:meth:`GeneratorFamily.default_training`), resolved before training starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(1500, ge=1, le=10_000_000, description="Training steps (a family's step may update several networks).")
    batch_size: int = Field(32, ge=2, le=4096)
    lr_g: float | None = Field(None, gt=0, le=1, description="Generator learning rate; null: the family's default.")
    lr_d: float | None = Field(None, gt=0, le=1, description="Discriminator/critic learning rate; null: the family's default.")
    betas: tuple[float, float] | None = Field(None, description="Adam betas; null: the family's default.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the generator weights; 0 disables it.")
    checkpoint_every: int = Field(250, ge=1, le=10_000_000)
    log_every: int = Field(50, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the initial weights and every step's randomness.")
    precision: Precision = Field(Precision.fp32, description="bf16: autocast the training step to bfloat16.")
    time_budget_s: float | None = Field(
        None, gt=0, le=30 * 24 * 3600,
        description="Stop at the first log step after this many seconds of training (this attempt's), even "
        "before `steps` (never before the family's minimum, e.g. past latent diffusion's autoencoder stage); the "
        "generator records the steps it reached. Null: train all `steps`.",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(math.isfinite(b) and 0 <= b < 1 for b in value):
            raise ValueError(f"betas must be two numbers in [0, 1), got {value!r}")
        return value

    def resolved(self) -> dict[str, Any]:
        """Plain data, JSON- and ``torch.load(weights_only=True)``-safe."""
        out = self.model_dump(mode="json")
        if out["betas"] is not None:
            out["betas"] = [float(b) for b in out["betas"]]
        return out


# Options of the training loop that may change between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every", "time_budget_s"})


class FamilyOptions(BaseModel):
    """Base of every family's options; subclasses add ``family: Literal["<name>"]`` and their fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str


@dataclass(frozen=True)
class DataSpec:
    """What a generator is trained to produce, derived from the training view."""

    image_size: int
    num_classes: int              # mask classes, background included
    num_conditions: int = 0       # class-conditioning labels; 0: unconditional

    def __post_init__(self) -> None:
        for name, low in (("image_size", 8), ("num_classes", 2), ("num_conditions", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"data.{name} must be an integer >= {low}, got {value!r}.")
        if self.num_classes > 16:
            raise InvalidInput(f"data.num_classes must be at most 16 (background included), got {self.num_classes}.")

    def to_dict(self) -> dict[str, int]:
        return {"image_size": self.image_size, "num_classes": self.num_classes, "num_conditions": self.num_conditions}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"data spec must be a mapping, got {type(data).__name__}.")
        unknown = sorted(set(data) - {"image_size", "num_classes", "num_conditions"})
        if unknown:
            raise InvalidInput(f"unknown data spec key(s) {unknown}.")
        return cls(**dict(data))


# Training data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """Real training items on one device: images ``(N, 1, S, S)`` in [-1, 1] float32, masks ``(N, S, S)``
    int64, conditions ``(N,)`` int64 (all zero when unconditional)."""

    images: torch.Tensor
    masks: torch.Tensor
    conditions: torch.Tensor
    spec: DataSpec

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device


@dataclass(frozen=True)
class Batch:
    """A batch of real items: ``images`` in [-1, 1], ``masks`` int64, ``one_hot`` float, ``conditions``."""

    images: torch.Tensor
    masks: torch.Tensor
    one_hot: torch.Tensor
    conditions: torch.Tensor

    def joint(self) -> torch.Tensor:
        """Image and one-hot mask stacked: ``(B, 1 + C, S, S)``."""
        return torch.cat([self.images, self.one_hot], dim=1)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (a random draw from a step's CPU generator) on ``device``. On CUDA: one asynchronous
    copy from pinned memory — the host does not wait for the GPU's queued work, as a copy from pageable
    memory makes it do (PyTorch's pinned-memory cache keeps the staging block until the copy is done).
    Elsewhere the plain ``.to(device)`` (a no-op on the CPU)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def real_batch(data: TrainingData, batch_size: int, rng: torch.Generator) -> Batch:
    """``batch_size`` items drawn uniformly with replacement (indices from ``rng``)."""
    index = host_to_device(torch.randint(0, len(data), (batch_size,), generator=rng), data.device)
    masks = data.masks[index]
    one_hot = F.one_hot(masks, data.spec.num_classes).permute(0, 3, 1, 2).to(data.images.dtype)
    return Batch(images=data.images[index], masks=masks, one_hot=one_hot, conditions=data.conditions[index])


def prepare_data(
    images: np.ndarray, masks: np.ndarray, spec: DataSpec, device: torch.device, conditions: np.ndarray | None = None
) -> TrainingData:
    """Check the caller's arrays (images ``(N, 1, S, S)`` in [0, 1], masks ``(N, S, S)`` in
    ``[0, num_classes)``, optional conditions ``(N,)`` in ``[0, num_conditions)``) and move them to ``device``.

    Raises:
        InvalidInput: naming the offending shape, dtype or value range.
    """
    size = spec.image_size
    _check_images(images, size)
    _check_masks(masks, size, spec.num_classes)
    if images.shape[0] != masks.shape[0]:
        raise InvalidInput(f"images and masks must pair up, got {images.shape[0]} images and {masks.shape[0]} masks.")
    cond = _check_conditions(conditions, images.shape[0], spec.num_conditions)
    image_t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) * 2 - 1
    mask_t = torch.from_numpy(np.ascontiguousarray(masks).astype(np.int64))
    return TrainingData(images=image_t.to(device), masks=mask_t.to(device), conditions=cond.to(device), spec=spec)


def _check_images(images: np.ndarray, size: int) -> None:
    if not isinstance(images, np.ndarray):
        raise InvalidInput(f"images must be a numpy array, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1:] != (1, size, size) or images.shape[0] == 0:
        raise InvalidInput(f"images must have shape (N >= 1, 1, {size}, {size}), got {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise InvalidInput(f"images must be floating point in [0, 1], got dtype {images.dtype}.")
    if not np.isfinite(images).all():
        raise InvalidInput("images contain NaN or infinite values.")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise InvalidInput(f"images must lie in [0, 1], got values in [{low}, {high}].")


def _check_masks(masks: np.ndarray, size: int, num_classes: int) -> None:
    if not isinstance(masks, np.ndarray):
        raise InvalidInput(f"masks must be a numpy array, got {type(masks).__name__}.")
    if masks.ndim != 3 or masks.shape[1:] != (size, size) or masks.shape[0] == 0:
        raise InvalidInput(f"masks must have shape (N >= 1, {size}, {size}), got {masks.shape}.")
    if not np.issubdtype(masks.dtype, np.integer):
        raise InvalidInput(f"masks must hold integer class labels, got dtype {masks.dtype}.")
    low, high = int(masks.min()), int(masks.max())
    if low < 0 or high >= num_classes:
        raise InvalidInput(f"mask labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), got [{low}, {high}].")


def _check_conditions(conditions: np.ndarray | None, n: int, num_conditions: int) -> torch.Tensor:
    if conditions is None:
        if num_conditions:
            raise InvalidInput(f"the generator is class-conditioned ({num_conditions} classes) but no conditions were given.")
        return torch.zeros(n, dtype=torch.int64)
    conditions = np.asarray(conditions)
    if conditions.shape != (n,) or not np.issubdtype(conditions.dtype, np.integer):
        raise InvalidInput(f"conditions must be {n} integers, got {conditions.dtype}{conditions.shape}.")
    if num_conditions and (conditions.min() < 0 or conditions.max() >= num_conditions):
        raise InvalidInput(f"conditions must lie in [0, {num_conditions - 1}], got [{conditions.min()}, {conditions.max()}].")
    return torch.from_numpy(conditions.astype(np.int64))


# Training state -----------------------------------------------------------------------------------


@dataclass
class TrainState:
    """A family's networks and optimisers by name.

    ``ema`` holds an exponential-moving-average copy of some of ``nets`` (same names), updated by the
    loop after every step (its batch-norm statistics re-estimated with its own weights before every
    checkpoint); ``extra`` holds whatever else the family carries across steps (plain data
    and tensors only: it goes into checkpoints as is), e.g. an adaptive augmentation probability.
    """

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema: dict[str, nn.Module] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


Losses = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepContext:
    """What a family's training step gets besides its state: the options, data and this step's randomness.

    Every random number is drawn from ``rng``, a CPU generator, in the order the step asks for them, so a
    run's numbers are the same on every device (and a resumed run continues them exactly); each draw
    reaches a CUDA device as one asynchronous pinned copy (:func:`host_to_device`), not a host
    synchronisation. (Drawing them all at once would need each family to declare its draws up front;
    drawing on the device would change the numbers, and the CPU runs' records, with the device.)"""

    options: FamilyOptions
    training: TrainingOptions  # resolved: lr and betas are numbers
    data: TrainingData
    step: int                  # 0-based index of this step
    rng: torch.Generator       # CPU generator seeded from (seed, step): the step's only randomness
    autocast: Callable[[], Any]  # context manager: bf16 autocast if requested, else a no-op

    def batch(self) -> Batch:
        return real_batch(self.data, self.training.batch_size, self.rng)

    def randn(self, *shape: int) -> torch.Tensor:
        return host_to_device(torch.randn(*shape, generator=self.rng), self.data.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return host_to_device(torch.rand(*shape, generator=self.rng), self.data.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return host_to_device(torch.randint(0, high, shape, generator=self.rng), self.data.device)


# Sampling -----------------------------------------------------------------------------------------


class SamplingNet(nn.Module):
    """A pure function ``(noise tensors, condition) → (N, 1 + C, S, S)`` built for one sampling mode.

    ``noise_shapes`` lists the per-sample shape of each noise tensor, in order; the generic sampler
    draws them for sample ``i`` from one CPU generator seeded from ``(cohort seed, i)``, so every
    sample is a function of its own index only. ``condition`` is ``(N,)`` int64 (ignored by
    unconditional nets). Being a plain module of tensors, it traces with :func:`torch.jit.trace`.

    Device-portable: a trace made on the CPU must run on a GPU after ``torch.jit.load(map_location=...)``,
    so a forward pass creates no tensor with an explicit ``device=`` (a trace records it as a constant
    of the tracing device): constants are (non-persistent) buffers, new tensors come from ``new_*``/
    ``*_like`` of an input. Where a library's code does (MONAI's timestep embedding), :meth:`tracing`
    swaps in an equal, device-free version for the time of the trace.

    Subclasses set ``noise_shapes`` and define ``forward(noise: list[Tensor], condition: Tensor) -> Tensor``.
    """

    noise_shapes: tuple[tuple[int, ...], ...]

    def tracing(self) -> contextlib.AbstractContextManager[None]:
        """A context to trace this net in (see above); nothing to do by default."""
        return contextlib.nullcontext()


def critic_input(output: torch.Tensor, straight_through: bool = True) -> torch.Tensor:
    """Generator output (image, mask logits) → discriminator input: image, and the mask as softmax
    probabilities or — ``straight_through`` — exactly one-hot in the forward pass like real masks (soft
    fakes are an easy tell for the discriminator) with the softmax gradient in the backward pass."""
    soft = torch.softmax(output[:, 1:].float(), dim=1).to(output.dtype)
    if straight_through:
        hard = F.one_hot(soft.argmax(dim=1), soft.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
        soft = hard - soft.detach() + soft
    return torch.cat([output[:, :1], soft], dim=1)


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A :class:`SamplingNet` output → image in [0, 1] ``(N, 1, S, S)`` and integer mask ``(N, S, S)``."""
    return ((output[:, :1].clamp(-1, 1) + 1) / 2), output[:, 1:].argmax(dim=1)


@dataclass(frozen=True)
class SampleMode:
    """How a cohort is drawn: the mask source, an optional class condition and, for iterative samplers
    (diffusion), the number of sampling steps and DDIM's η (None: the generator's own options)."""

    mask_source: MaskSource = MaskSource.generated
    condition: int | None = None
    sample_steps: int | None = None
    eta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``sample_steps`` and ``eta`` appear only when set."""
        out: dict[str, Any] = {"mask_source": self.mask_source.value, "condition": self.condition}
        out.update({k: v for k, v in (("sample_steps", self.sample_steps), ("eta", self.eta)) if v is not None})
        return out


# The family interface -----------------------------------------------------------------------------


class GeneratorFamily(ABC):
    """One generator family. Subclasses set the class attributes and implement the four methods."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    options_type: ClassVar[type[FamilyOptions]]
    image_sizes: ClassVar[tuple[int, ...]] = (32, 64, 128)
    # Every mask source of the family; a generator has those of mask_sources_for(its options).
    mask_sources: ClassVar[tuple[MaskSource, ...]] = (MaskSource.generated,)
    # Names of every loss train_step may return, in the order curves and progress show them; a
    # generator reports those of loss_names_for(its options).
    loss_names: ClassVar[tuple[str, ...]]
    # Whether sampling iterates (diffusion): only then may a cohort choose sample_steps and eta.
    iterative: ClassVar[bool] = False
    # Version of this family's networks/state layout inside checkpoint format 2.
    state_version: ClassVar[int] = 1

    def default_training(self, options: FamilyOptions) -> dict[str, Any]:
        """Defaults for ``lr_g``, ``lr_d`` and ``betas`` when the request leaves them null."""
        return {"lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999]}

    def check(self, options: FamilyOptions, data: DataSpec) -> None:
        """Cross-checks between options and data; raise :class:`InvalidInput` naming the problem."""
        if data.image_size not in self.image_sizes:
            raise InvalidInput(f"family {self.name!r} makes images of {list(self.image_sizes)} pixels, not {data.image_size}.")

    def check_training(self, options: FamilyOptions, training: TrainingOptions) -> None:
        """Cross-checks between options and training options; raise :class:`InvalidInput` naming the problem."""

    def conditional(self, options: FamilyOptions) -> bool:
        """Whether a generator of these options takes a class condition."""
        return False

    def mask_sources_for(self, options: FamilyOptions) -> tuple[MaskSource, ...]:
        """The mask sources a generator of these options samples with (some of :attr:`mask_sources`)."""
        return self.mask_sources

    def loss_names_for(self, options: FamilyOptions) -> tuple[str, ...]:
        """The losses a generator of these options reports, in curve order (some of :attr:`loss_names`).
        A staged family's step returns those of its current stage only."""
        return self.loss_names

    def minimum_steps(self, options: FamilyOptions) -> int:
        """Steps a run completes before a time budget may stop it (a staged family: into its last stage,
        so that a budgeted run always ends with a generator that samples)."""
        return 1

    def passes_per_sample(self, options: FamilyOptions, mode: SampleMode) -> int:
        """Network passes one sample costs in ``mode`` (an iterative sampler: its steps); cohort
        requests to a model server are cut to fit ``sampler_passes_per_request``."""
        return 1

    def stages(self, options: FamilyOptions, steps_done: int, extra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """For the registry entry: the training stages of a run that completed ``steps_done`` steps and
        left ``extra`` (:attr:`TrainState.extra`), by name, each with its steps and what it measured.
        Empty: one stage, the whole run."""
        return {}

    @abstractmethod
    def init_state(self, options: FamilyOptions, training: TrainingOptions, data: TrainingData) -> TrainState:
        """Fresh networks on ``data.device`` (initial weights drawn from the global generator, which the
        loop seeds) and their optimisers. ``data`` is there for families that keep real items (a mask
        bank); most use only ``data.spec``."""

    @abstractmethod
    def train_step(self, state: TrainState, ctx: StepContext) -> Losses:
        """One training step; returns detached losses named in :meth:`loss_names_for` (all of them, or a
        staged family's current stage's)."""

    @abstractmethod
    def sampling_nets(self, options: FamilyOptions, data: DataSpec) -> dict[str, nn.Module]:
        """Fresh (untrained) modules of the networks sampling needs, by name, to load exported weights into.
        Names must be names of :meth:`init_state`'s nets; the export takes their EMA weights where kept."""

    @abstractmethod
    def sampling_net(self, options: FamilyOptions, data: DataSpec, nets: Mapping[str, nn.Module], mode: SampleMode) -> SamplingNet:
        """The :class:`SamplingNet` for ``mode`` over the loaded ``nets`` (check ``mode`` first).

        The training loop also builds it over the live EMA networks (raw ones where no EMA copy is kept)
        of every mode, to re-estimate their batch-norm statistics on the inputs sampling gives them."""

    def check_mode(self, options: FamilyOptions, data: DataSpec, mode: SampleMode) -> None:
        """Reject a sampling mode this generator cannot serve, naming why."""
        sources = self.mask_sources_for(options)
        if mode.mask_source not in sources:
            allowed = [s.value for s in sources]
            raise InvalidInput(f"this {self.name!r} generator has no mask source {mode.mask_source.value!r}; it has {allowed}.")
        if mode.condition is None and self.conditional(options):
            raise InvalidInput(
                f"this {self.name!r} generator is class-conditioned: pass a condition in [0, {data.num_conditions - 1}]."
            )
        if mode.condition is not None:
            if not self.conditional(options):
                raise InvalidInput(f"this {self.name!r} generator was trained without class conditioning; do not pass a condition.")
            if not 0 <= mode.condition < data.num_conditions:
                raise InvalidInput(f"condition must be in [0, {data.num_conditions - 1}], got {mode.condition}.")
        if not self.iterative and (mode.sample_steps is not None or mode.eta is not None):
            raise InvalidInput(f"family {self.name!r} samples in one pass: sample_steps and eta do not apply.")

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/generator-families`` and ``medsynth generators families`` show."""
        schema = self.options_type.model_json_schema()
        return {
            "family": self.name,
            "title": self.title,
            "description": self.description,
            "image_sizes": list(self.image_sizes),
            "mask_sources": [s.value for s in self.mask_sources],
            "losses": list(self.loss_names),
            "options": {k: v for k, v in schema.get("properties", {}).items() if k != "family"},
        }
