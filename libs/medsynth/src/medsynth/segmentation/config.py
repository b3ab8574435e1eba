"""What a segmentation training run does: data source, augmentation, architecture and optimiser
settings, as one frozen, validated, JSON-able spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from medsynth.core.errors import InvalidInput

SOURCES = ("real", "synthetic", "mixed")
MODELS = ("unet", "swin-unetr")
SWIN_DIVISOR = 32  # SwinUNETR: patch size 2, then four 2× patch mergings
DEFAULT_PATIENCE = 5  # validation checks without improvement before early stopping
EARLY_STOPPING_MAX_VAL_EVERY = 100  # default check interval of early-stopping runs is at most this


def default_val_every(steps: int, early_stopping: bool) -> int:
    """Steps between validation checks when a request leaves it out: ``max(1, steps // 10)`` (ten
    checks per run, as runs always had); with early stopping at most 100, so that a generous
    ``steps`` cap does not make the patience window (``patience × val_every`` steps) huge."""
    every = max(1, steps // 10)
    return min(every, EARLY_STOPPING_MAX_VAL_EVERY) if early_stopping else every


@dataclass(frozen=True)
class SegmentationSpec:
    """Settings of one segmentation training run.

    Attributes:
        source: where training batches come from: ``"real"`` (the real training split only),
            ``"synthetic"`` (the synthetic cohort only) or ``"mixed"`` (both, in every batch).
        synthetic_ratio: for ``"mixed"``, the fraction of each batch drawn from the synthetic
            cohort (strictly between 0 and 1; the count is rounded and kept at least 1 of each
            source). Ignored by the other sources but still checked to lie in [0, 1].
        synthetic_patients: for ``"mixed"``, the number of patients' worth of synthetic slices that were
            added to the real ones (the job picks that many cohort samples and sets ``synthetic_ratio``
            to their share of the pool); recorded here, ``None`` for a ratio-mixed run.
        augment: classical augmentation of training batches (flips, small affine, intensity
            jitter; see :mod:`medsynth.segmentation.augment`).
        model: ``"unet"`` (MONAI 2D UNet) or ``"swin-unetr"`` (MONAI SwinUNETR, ``spatial_dims=2``;
            needs an image size divisible by 32, at least 64, and the ``einops`` package).
        steps: optimiser steps; with ``early_stopping``, the most the run may take (the cap).
        batch_size: training batch size.
        lr: Adam learning rate.
        seed: seeds weight initialisation, batch sampling and augmentation.
        val_every: evaluate on the real validation split every this many steps (and at the end).
        early_stopping: stop at a validation plateau: once ``patience`` checks in a row have not
            beaten the best validation Dice so far by more than ``min_delta``, and the step is at
            least ``min_steps``. The best-validation weights are kept either way.
        patience: validation checks without improvement before stopping (at least 1).
        min_steps: no early stop before this step (at most ``steps``).
        min_delta: the gain in validation Dice that counts as an improvement (in [0, 1)).
        num_classes: mask classes including background.
        channels: UNet widths per level; strides are 2 between levels, so the image size must be
            divisible by ``2 ** (len(channels) - 1)``.
        swin_feature_size: SwinUNETR embedding width (a multiple of 12).
    """

    source: str = "real"
    synthetic_ratio: float = 0.5
    synthetic_patients: int | None = None
    augment: bool = True
    model: str = "unet"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    val_every: int = 100
    early_stopping: bool = False
    patience: int = DEFAULT_PATIENCE
    min_steps: int = 0
    min_delta: float = 0.0
    num_classes: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    swin_feature_size: int = 24

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        _check_choice("source", self.source, SOURCES)
        _check_choice("model", self.model, MODELS)
        _check_number("synthetic_ratio", self.synthetic_ratio, 0.0, 1.0)
        if self.source == "mixed" and not 0.0 < self.synthetic_ratio < 1.0:
            raise InvalidInput(f"synthetic_ratio must lie strictly between 0 and 1 for source 'mixed', got {self.synthetic_ratio}.")
        if self.synthetic_patients is not None:
            _check_int("synthetic_patients", self.synthetic_patients, 1, 1_000_000)
            if self.source != "mixed":
                raise InvalidInput(f"synthetic_patients needs source 'mixed', got {self.source!r}.")
        if not isinstance(self.augment, bool):
            raise InvalidInput(f"augment must be a bool, got {self.augment!r}.")
        _check_int("steps", self.steps, 1, 10_000_000)
        _check_int("batch_size", self.batch_size, 1, 65_536)
        _check_number("lr", self.lr, 0.0, 10.0)
        if self.lr <= 0:
            raise InvalidInput(f"lr must be positive, got {self.lr}.")
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("val_every", self.val_every, 1, 10_000_000)
        if not isinstance(self.early_stopping, bool):
            raise InvalidInput(f"early_stopping must be a bool, got {self.early_stopping!r}.")
        _check_int("patience", self.patience, 1, 10_000_000)
        _check_int("min_steps", self.min_steps, 0, self.steps)
        _check_number("min_delta", self.min_delta, 0.0, 1.0)
        if self.min_delta >= 1.0:
            raise InvalidInput(f"min_delta must be below 1 (Dice gains are at most 1), got {self.min_delta}.")
        _check_int("num_classes", self.num_classes, 2, 64)
        self._check_architecture()
        if self.source == "mixed" and self.batch_size < 2:
            raise InvalidInput(f"batch_size must be at least 2 for source 'mixed' (one item of each source), got {self.batch_size}.")

    def _check_architecture(self) -> None:
        if not 2 <= len(self.channels) <= 6:
            raise InvalidInput(f"channels must list 2 to 6 widths, got {self.channels!r}.")
        for width in self.channels:
            _check_int("channels entry", width, 1, 4096)
        _check_int("swin_feature_size", self.swin_feature_size, 12, 768)
        if self.swin_feature_size % 12:
            raise InvalidInput(f"swin_feature_size must be a multiple of 12, got {self.swin_feature_size}.")

    @property
    def size_divisor(self) -> int:
        """Image sizes the model accepts are multiples of this."""
        return SWIN_DIVISOR if self.model == "swin-unetr" else 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error (missing ones take defaults)."""
        if not isinstance(data, dict):
            raise InvalidInput(f"a segmentation spec must be a mapping, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown segmentation spec fields: {', '.join(unknown)}.")
        return cls(**data)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInput(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}.")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be an integer between {lo} and {hi}, got {value!r}.")


def _check_number(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be a number between {lo} and {hi}, got {value!r}.")
