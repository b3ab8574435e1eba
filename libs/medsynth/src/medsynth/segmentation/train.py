"""Training a 2D segmenter on real, synthetic or mixed data, with model selection on REAL validation
patients.

Loss: ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``; optimiser: Adam. Every
``val_every`` steps (and after the last step) the model predicts the whole real validation split
and is scored by :func:`~medsynth.segmentation.evaluate.pooled_dice` (mean foreground Dice with
counts pooled over the split, empty slices included where the view keeps them, so false positives
there count); the best-scoring weights (earliest on ties) are kept and loaded into the returned model.

Stopping: after ``spec.steps`` (``stop_reason`` ``"cap"``), or, with ``spec.early_stopping``, at a
validation plateau (``"plateau"``): :class:`EarlyStopping` — ``patience`` checks in a row that do not
beat the best Dice so far by more than ``min_delta``, at a step of at least ``min_steps``. The run
then stops at that check; the weights tested are still the best-validation ones.

Determinism: weight initialisation, batch order and augmentation all derive from ``spec.seed`` (the
global torch RNG is forked, so callers' RNG state is untouched). On one machine with the same
thread count, the same spec and data give bit-identical weights.

Device: the job's (``device``; the worker passes :func:`medsynth.core.devices.pick_device` of
``MEDSYNTH_DEVICE``). Initial weights, batch order and augmentation are drawn on the CPU whatever the
device (so a run's random choices do not depend on it); each batch is then copied to the device. A
CUDA run is repeatable on the same GPU model and software, not bit-identical to a CPU run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.segmentation.augment import augment_batch
from medsynth.segmentation.config import SegmentationSpec
from medsynth.segmentation.data import BatchSampler, Pairs, as_pairs, batch_counts
from medsynth.segmentation.evaluate import evaluate_segmenter, pooled_dice, predict
from medsynth.segmentation.models import build_model, check_image_size, encoder

__all__ = ["EarlyStopping", "SegmentationResult", "train_segmenter", "evaluate_segmenter", "encoder"]

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class SegmentationResult:
    """Outcome of :func:`train_segmenter`.

    Attributes:
        spec: the run's settings.
        model: the network with the best validation weights loaded (in eval mode).
        state_dict: those weights (tensors detached from the model).
        best_step: the step they come from.
        best_val_dice: their validation score (pooled mean foreground Dice on real val).
        curves: ``{"train_loss": [loss per step], "val_step": [...], "val_dice": [...]}``.
        image_size: the side of the square training images.
        seconds: wall-clock training time.
        stopped_step: the last step trained (``spec.steps`` unless early stopping ended the run).
        stop_reason: ``"plateau"`` (early stopping) or ``"cap"`` (all ``spec.steps`` were trained).
    """

    spec: SegmentationSpec
    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    best_step: int
    best_val_dice: float
    curves: dict[str, list] = field(default_factory=dict)
    image_size: int = 0
    seconds: float = 0.0
    stopped_step: int = 0
    stop_reason: str = "cap"

    def summary(self) -> dict[str, Any]:
        """JSON-able description without the weights."""
        return {
            "spec": self.spec.to_dict(),
            "best_step": self.best_step,
            "best_val_dice": self.best_val_dice,
            "image_size": self.image_size,
            "seconds": self.seconds,
            "stopped_step": self.stopped_step,
            "stop_reason": self.stop_reason,
            "curves": self.curves,
        }


def train_segmenter(
    spec: SegmentationSpec,
    real_train: Mapping[str, np.ndarray] | None,
    real_val: Mapping[str, np.ndarray],
    synthetic: Mapping[str, np.ndarray] | tuple[np.ndarray, np.ndarray] | None = None,
    *,
    on_progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> SegmentationResult:
    """Train a segmenter and keep the weights that score best on the real validation split.

    Args:
        spec: settings; ``spec.source`` picks the training data.
        real_train: real training split (view-split dict); may be ``None`` for source "synthetic".
        real_val: real validation split, used only for model selection.
        synthetic: the synthetic cohort (dict with ``images``/``masks`` or a pair); required for
            sources "synthetic" and "mixed", ignored (with a warning) for "real".
        on_progress: called as ``on_progress(fraction, message)`` after each validation.
        device: where the model trains and validates (the returned model and weights stay there).

    Returns:
        The trained model, its best weights, the step they come from and the learning curves.

    Raises:
        InvalidInput: a needed split is missing or empty, arrays are malformed, labels exceed
            ``num_classes``, image sizes differ or do not suit the model.
    """
    train_real, train_syn, val = _prepare_data(spec, real_train, real_val, synthetic)
    started = time.monotonic()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec).to(device)  # initial weights drawn on the CPU, then moved
        outcome = _fit(spec, model, train_real, train_syn, val, on_progress or (lambda f, m: None), device)
    best_state, best_step, best_dice, curves, stop_reason = outcome
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.monotonic() - started
    stopped = len(curves["train_loss"])
    log.info("trained %s on %s for %d of %d steps (%s) in %.1fs: best real-val Dice %.4f at step %d",
             spec.model, spec.source, stopped, spec.steps, stop_reason, seconds, best_dice, best_step)
    return SegmentationResult(spec, model, best_state, best_step, best_dice, curves, val.size, seconds, stopped, stop_reason)


def _prepare_data(spec: SegmentationSpec, real_train: Any, real_val: Any, synthetic: Any) -> tuple[Pairs | None, Pairs | None, Pairs]:
    """Check the splits the source needs; returns ``(real train, synthetic, real val)`` pairs."""
    n_real, n_syn = batch_counts(spec.source, spec.batch_size, spec.synthetic_ratio)
    if n_syn and synthetic is None:
        raise InvalidInput(f"source {spec.source!r} trains on synthetic data, but no synthetic cohort was given.")
    if not n_syn and synthetic is not None:
        log.warning("source 'real': ignoring the synthetic cohort that was passed")
    if n_real and real_train is None:
        raise InvalidInput(f"source {spec.source!r} trains on real data, but real_train is None.")
    if real_val is None:
        raise InvalidInput("real_val is required: model selection uses the real validation split.")
    val = as_pairs(real_val, "real_val", spec.num_classes)
    train_real = as_pairs(real_train, "real_train", spec.num_classes) if n_real else None
    train_syn = as_pairs(synthetic, "synthetic", spec.num_classes) if n_syn else None
    for name, pairs in (("real_train", train_real), ("synthetic", train_syn)):
        if pairs is not None and pairs.size != val.size:
            raise InvalidInput(f"{name} images are {pairs.size}×{pairs.size} but real_val images are {val.size}×{val.size}.")
    check_image_size(spec, val.size)
    return train_real, train_syn, val


class EarlyStopping:
    """The plateau rule: ``update(step, dice)`` after each validation check says whether to stop.

    A check improves when its Dice beats the best so far by more than ``min_delta`` (the first
    check always does); the run stops once ``patience`` checks in a row have not, at a step of at
    least ``min_steps``. ``wait`` counts the checks since the last improvement.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, min_steps: int = 0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise InvalidInput(f"patience must be an integer of at least 1, got {patience!r}.")
        self.patience, self.min_delta, self.min_steps = patience, min_delta, min_steps
        self.best, self.wait = -math.inf, 0

    def update(self, step: int, dice: float) -> bool:
        if dice > self.best + self.min_delta:
            self.best, self.wait = dice, 0
        else:
            self.wait += 1
        return self.wait >= self.patience and step >= self.min_steps


def _fit(spec: SegmentationSpec, model: nn.Module, real: Pairs | None, syn: Pairs | None, val: Pairs,
         progress: Progress, device: torch.device) -> tuple[dict, int, float, dict, str]:
    """The training loop; returns ``(best state, best step, best val Dice, curves, stop reason)``.
    Batches are drawn and augmented on the CPU, then copied to ``device``."""
    sampler = BatchSampler(real, syn, batch_counts(spec.source, spec.batch_size, spec.synthetic_ratio), np.random.default_rng(spec.seed))
    aug_gen = torch.Generator().manual_seed(spec.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.lr)
    curves: dict[str, list] = {"train_loss": [], "val_step": [], "val_dice": []}
    best_state, best_step, best_dice = _snapshot(model), 0, -math.inf
    stopper = EarlyStopping(spec.patience, spec.min_delta, spec.min_steps) if spec.early_stopping else None
    val_images = val.images.to(device)
    for step in range(1, spec.steps + 1):
        images, masks, _ = sampler.next()
        if spec.augment:
            images, masks = augment_batch(images, masks, aug_gen)
        curves["train_loss"].append(_train_step(model, loss_fn, optimiser, images.to(device), masks.to(device)))
        if step % spec.val_every == 0 or step == spec.steps:
            dice = pooled_dice(predict(model, val_images).cpu(), val.masks, spec.num_classes)
            curves["val_step"].append(step)
            curves["val_dice"].append(dice)
            if dice > best_dice:
                best_state, best_step, best_dice = _snapshot(model), step, dice
            log.debug("step %d: loss %.4f, real-val Dice %.4f", step, curves["train_loss"][-1], dice)
            if stopper is not None and stopper.update(step, dice) and step < spec.steps:
                progress(1.0, f"step {step}/{spec.steps}: val Dice {dice:.3f}; stopped, no gain in {stopper.wait} checks "
                              f"(best {best_dice:.3f} at {best_step})")
                return best_state, best_step, best_dice, curves, "plateau"
            progress(step / spec.steps, f"step {step}/{spec.steps}: val Dice {dice:.3f} (best {best_dice:.3f} at {best_step})")
    return best_state, best_step, best_dice, curves, "cap"


def _train_step(model: nn.Module, loss_fn: nn.Module, optimiser: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor) -> float:
    model.train()
    optimiser.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), masks[:, None])
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is not finite ({loss.item()}); try a lower lr.")
    loss.backward()
    optimiser.step()
    return float(loss.item())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
