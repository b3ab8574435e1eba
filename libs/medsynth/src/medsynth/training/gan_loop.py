"""Training loop of the joint image + mask GAN, resumable bit for bit.

Store layout under ``prefix`` (used literally: pass ``"runs/abc/"`` with its trailing slash)::

    {prefix}checkpoints/step-00000200.pt    every ``checkpoint_every`` steps (checkpoint format 1)
    {prefix}checkpoints/latest.json         {"key": <newest checkpoint>, "step": int}, written after it
    {prefix}generator.pt                    the final checkpoint (same format)
    {prefix}curves.json                     {"step": [...], "loss_d": [...], "loss_g": [...]}

At start, if ``latest.json`` exists the run continues from the checkpoint it names (this is how a
redelivered job resumes); once the run has finished it points at ``generator.pt``, so a redelivery of a
finished job only rewrites the final outputs.

Determinism: initial weights come from ``config.seed`` (drawn inside :func:`torch.random.fork_rng`,
so the caller's global generator is left alone) and every step's batch, latents and augmentation
from :func:`~medsynth.training.data.step_generator` ``(seed, step)``. Checkpoints hold weights,
BatchNorm statistics, Adam state, the EMA copy and the partial loss window, so a run resumed from
step ``k`` ends with exactly the weights of an uninterrupted run, provided it runs on the same kind
of device with the same torch build and, on the CPU, the same number of intra-op threads (convolution
reductions are split by thread; checkpoints record this ``environment`` and a resume elsewhere logs a
warning). ``torch.use_deterministic_algorithms`` is switched on for the duration of the run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsynth.core.errors import Conflict, InvalidInput
from medsynth.models.gan import Discriminator, Generator, init_weights
from medsynth.store.base import ObjectStore, check_prefix
from medsynth.training.augment import diff_augment
from medsynth.training.checkpoint import (
    RNG_SCHEME,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from medsynth.training.config import TrainConfig
from medsynth.training.data import TrainingData, fake_to_input, prepare_data, sample_batch, step_generator
from medsynth.training.losses import discriminator_loss, generator_loss

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, dict[str, float]], None]

# Options that may change between a checkpoint and the run resuming from it (they do not affect weights).
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every"})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_gan` produced.

    Attributes:
        step: steps completed (``config.steps``).
        final_key: store key of the final checkpoint (``{prefix}generator.pt``).
        resumed_from: the step the run resumed from, or None for a fresh run.
        curves: ``{"step": [...], "loss_d": [...], "loss_g": [...]}``, one point per log step, each the
            mean over the steps since the previous point.
        checkpoint: the final checkpoint (see :func:`~medsynth.training.checkpoint.load_generator`).
    """

    step: int
    final_key: str
    resumed_from: int | None
    curves: dict[str, list[float]]
    checkpoint: Checkpoint


@dataclass
class Nets:
    """The trained networks and their optimisers."""

    generator: Generator
    generator_ema: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam


def train_gan(
    config: TrainConfig,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    store: ObjectStore,
    prefix: str,
    on_progress: ProgressCallback | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train (or resume training) a joint image + mask GAN and store its checkpoints under ``prefix``.

    Args:
        config: the run's options.
        images: ``(N, 1, S, S)`` floats in [0, 1].
        masks: ``(N, S, S)`` integer labels in ``[0, num_classes)``.
        store: where checkpoints, curves and the final generator go.
        prefix: store key prefix of this run (literal; usually ends with ``/``).
        on_progress: called as ``on_progress(step, {"loss_g", "loss_d", "steps_per_s"})`` every
            ``log_every`` steps, after that step's checkpoint (if any) is stored. It may raise to
            cancel; the exception propagates and the newest checkpoint stays valid.
        device: torch device to train on.

    Returns:
        The final step, the key of the final checkpoint and the loss curves.

    Raises:
        InvalidInput: bad arrays or prefix, or an unreadable checkpoint in the store.
        Conflict: the store holds a checkpoint of a different run under ``prefix``.
    """
    check_prefix(prefix)
    device = torch.device(device)
    data = prepare_data(images, masks, config.generator, device)
    with deterministic_algorithms():
        resumed = find_resume_checkpoint(store, prefix, config)
        if resumed is not None:
            _warn_if_environment_changed(resumed, device)
        nets, curves = restore_state(config, resumed, device)
        start = resumed.step if resumed else 0
        logger.info("training %s from step %d to %d on %s", prefix, start, config.steps, device)
        _train_steps(nets, curves, config, data, start, _Sink(store, prefix, on_progress))
        final = snapshot(nets, config, config.steps, curves)
        final_key = write_final(store, prefix, final)
    return TrainResult(config.steps, final_key, start if resumed else None, curves.points(), final)


@dataclass
class _Sink:
    """Where the loop's outputs go: the store and the caller's progress callback."""

    store: ObjectStore
    prefix: str
    on_progress: ProgressCallback | None


def _train_steps(
    nets: Nets, curves: LossCurves, config: TrainConfig, data: TrainingData, start: int, sink: _Sink
) -> None:
    timer = _Throughput(start)
    for step in range(start, config.steps):
        loss_d, loss_g = train_step(nets, config, data, step)
        done = step + 1
        update_ema(nets.generator_ema, nets.generator, config.ema_decay, done)
        curves.add(loss_d, loss_g)
        point = curves.flush(done) if done % config.log_every == 0 else None
        if done % config.checkpoint_every == 0:
            write_checkpoint(sink.store, sink.prefix, snapshot(nets, config, done, curves))
        if point is not None:
            _report(done, {**point, "steps_per_s": timer.rate(done)}, sink.on_progress)


def _report(step: int, metrics: dict[str, float], on_progress: ProgressCallback | None) -> None:
    logger.info(
        "step %d: loss_d %.4f, loss_g %.4f, %.2f steps/s",
        step, metrics["loss_d"], metrics["loss_g"], metrics["steps_per_s"],
    )
    if on_progress is not None:
        try:
            on_progress(step, metrics)
        except BaseException as exc:
            logger.info("training stopped after step %d by on_progress: %r", step, exc)
            raise


# One step -----------------------------------------------------------------------------------------


def train_step(nets: Nets, config: TrainConfig, data: TrainingData, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One discriminator update then one generator update, all randomness from ``(config.seed, step)``.

    The generator runs once; the discriminator sees the same fake batch (detached) for its update and
    again (through the updated D) for the generator's loss, as in the DCGAN reference loop.

    Returns:
        The detached discriminator and generator losses.
    """
    rng = step_generator(config.seed, step)
    real = sample_batch(data, config.batch_size, rng)
    z = torch.randn(config.batch_size, config.generator.latent_dim, generator=rng).to(data.images.device)
    augment = (lambda x: diff_augment(x, rng)) if config.diff_augment else (lambda x: x)
    fake = fake_to_input(nets.generator(z))

    d = nets.discriminator
    d.requires_grad_(True)
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d = discriminator_loss(config.loss, d(augment(real)), d(augment(fake.detach())))
    loss_d.backward()
    nets.opt_d.step()

    d.requires_grad_(False)  # the generator's backward pass needs no D gradients
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g = generator_loss(config.loss, d(augment(fake)))
    loss_g.backward()
    nets.opt_g.step()
    d.requires_grad_(True)
    return loss_d.detach(), loss_g.detach()


@torch.no_grad()
def update_ema(ema: Generator, model: Generator, decay: float, step: int) -> None:
    """``ema ← β·ema + (1-β)·model`` with ``β = min(decay, (1 + step) / (10 + step))``; buffers
    (BatchNorm statistics) copied. ``decay == 0`` copies the weights exactly."""
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        if beta == 0:
            p_ema.copy_(p)
        else:
            p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


# State ---------------------------------------------------------------------------------------------


def init_nets(config: TrainConfig, device: torch.device) -> Nets:
    """Fresh networks with DCGAN initialisation drawn from ``config.seed`` (on the CPU, then moved)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = Generator(config.generator)
        generator.apply(init_weights)
        discriminator = Discriminator(config.generator)
        discriminator.apply(init_weights)
    generator.to(device).train()
    discriminator.to(device).train()
    ema = copy.deepcopy(generator).requires_grad_(False).eval()
    return Nets(
        generator=generator,
        generator_ema=ema,
        discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=config.betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=config.betas),
    )


def restore_state(config: TrainConfig, checkpoint: Checkpoint | None, device: torch.device) -> tuple[Nets, LossCurves]:
    """Networks and curves at the start of a run: fresh, or as ``checkpoint`` left them."""
    nets = init_nets(config, device)
    if checkpoint is None:
        return nets, LossCurves(device=device)
    nets.generator.load_state_dict(checkpoint.generator)
    nets.generator_ema.load_state_dict(checkpoint.generator_ema)
    nets.discriminator.load_state_dict(checkpoint.discriminator)
    nets.opt_g.load_state_dict(checkpoint.opt_g)
    nets.opt_d.load_state_dict(checkpoint.opt_d)
    return nets, LossCurves.from_metrics(checkpoint.metrics, device=device)


def snapshot(nets: Nets, config: TrainConfig, step: int, curves: LossCurves) -> Checkpoint:
    """The current training state as a :class:`Checkpoint` (tensors copied to the CPU)."""
    return Checkpoint(
        config=config,
        step=step,
        generator=_cpu_state(nets.generator.state_dict()),
        generator_ema=_cpu_state(nets.generator_ema.state_dict()),
        discriminator=_cpu_state(nets.discriminator.state_dict()),
        opt_g=copy.deepcopy(nets.opt_g.state_dict()),
        opt_d=copy.deepcopy(nets.opt_d.state_dict()),
        rng={"scheme": RNG_SCHEME, "seed": config.seed},
        metrics={**curves.to_metrics(), "environment": environment(_device_of(nets.generator))},
    )


def environment(device: torch.device) -> dict[str, Any]:
    """What bit-exact resumption depends on besides the checkpoint: torch build, device, CPU threads."""
    return {"torch": str(torch.__version__), "device": str(device), "threads": torch.get_num_threads()}


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = type(state)((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata  # type: ignore[attr-defined]
    return out


class LossCurves:
    """Loss curves: one point per log step, the mean of each loss over the steps since the last point.

    The running sums stay on the training device (no host sync per step) in float64, and are saved in
    checkpoints so that a resumed run records exactly the curve of an uninterrupted one.
    """

    def __init__(self, *, device: torch.device, points: dict[str, list[float]] | None = None,
                 sums: tuple[float, float] = (0.0, 0.0), count: int = 0) -> None:
        self._points = copy.deepcopy(points) if points else {"step": [], "loss_d": [], "loss_g": []}
        self._sums = torch.tensor(sums, dtype=torch.float64, device=device)
        self._count = count

    def add(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> None:
        self._sums += torch.stack([loss_d, loss_g]).to(torch.float64)
        self._count += 1

    def flush(self, step: int) -> dict[str, float]:
        """Close the window: append and return its means ``{"loss_d", "loss_g"}``."""
        loss_d, loss_g = (self._sums / max(self._count, 1)).tolist()
        self._points["step"].append(step)
        self._points["loss_d"].append(loss_d)
        self._points["loss_g"].append(loss_g)
        self._sums.zero_()
        self._count = 0
        return {"loss_d": loss_d, "loss_g": loss_g}

    def points(self) -> dict[str, list[float]]:
        return copy.deepcopy(self._points)

    def to_metrics(self) -> dict[str, Any]:
        sum_d, sum_g = self._sums.tolist()
        return {"curves": self.points(), "window": {"sum_d": sum_d, "sum_g": sum_g, "count": self._count}}

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], *, device: torch.device) -> LossCurves:
        try:
            window = metrics.get("window", {})
            return cls(device=device, points=metrics.get("curves"),
                       sums=(float(window.get("sum_d", 0.0)), float(window.get("sum_g", 0.0))),
                       count=int(window.get("count", 0)))
        except (AttributeError, TypeError, ValueError) as exc:
            raise InvalidInput(f"corrupt checkpoint: unreadable metrics: {exc}") from exc


# Store ---------------------------------------------------------------------------------------------


def latest_key(prefix: str) -> str:
    return f"{prefix}checkpoints/latest.json"


def step_key(prefix: str, step: int) -> str:
    return f"{prefix}checkpoints/step-{step:08d}.pt"


def final_key(prefix: str) -> str:
    return f"{prefix}generator.pt"


def write_checkpoint(store: ObjectStore, prefix: str, checkpoint: Checkpoint) -> str:
    """Store ``checkpoint`` at its step key, then point ``latest.json`` at it. Returns the key."""
    key = step_key(prefix, checkpoint.step)
    store.put_bytes(key, save_checkpoint(checkpoint))
    store.put_json(latest_key(prefix), {"key": key, "step": checkpoint.step})
    return key


def write_final(store: ObjectStore, prefix: str, checkpoint: Checkpoint) -> str:
    """Store the final checkpoint and the curves, then point ``latest.json`` at the final checkpoint."""
    key = final_key(prefix)
    store.put_bytes(key, save_checkpoint(checkpoint))
    store.put_json(f"{prefix}curves.json", checkpoint.metrics["curves"])
    store.put_json(latest_key(prefix), {"key": key, "step": checkpoint.step})
    logger.info("training %s finished at step %d: %s", prefix, checkpoint.step, key)
    return key


def find_resume_checkpoint(store: ObjectStore, prefix: str, config: TrainConfig) -> Checkpoint | None:
    """The checkpoint ``latest.json`` names, if any, after checking it belongs to this run.

    Raises:
        InvalidInput: ``latest.json`` or the checkpoint it names is unreadable.
        Conflict: the checkpoint was trained with different options, or is past ``config.steps``.
    """
    pointer_key = latest_key(prefix)
    if not store.exists(pointer_key):
        return None
    pointer = store.get_json(pointer_key)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("key"), str):
        raise InvalidInput(f"{pointer_key!r} does not name a checkpoint: {pointer!r}.")
    checkpoint = load_checkpoint(store.get_bytes(pointer["key"]))
    _check_same_run(checkpoint, config, pointer["key"])
    logger.info("resuming %s from %s (step %d)", prefix, pointer["key"], checkpoint.step)
    return checkpoint


def _warn_if_environment_changed(checkpoint: Checkpoint, device: torch.device) -> None:
    before, now = checkpoint.metrics.get("environment"), environment(device)
    if isinstance(before, dict) and before != now:
        logger.warning(
            "resuming step %d in a different environment (%s, was %s): the run continues correctly but "
            "will not match an uninterrupted run bit for bit", checkpoint.step, now, before,
        )


def _check_same_run(checkpoint: Checkpoint, config: TrainConfig, key: str) -> None:
    old, new = checkpoint.config.to_dict(), config.to_dict()
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise Conflict(f"cannot resume from {key!r}: it was trained with different options ({diffs}).")
    if checkpoint.step > config.steps:
        raise Conflict(f"cannot resume from {key!r}: it is at step {checkpoint.step}, past steps={config.steps}.")


# Helpers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Run the body with ``torch.use_deterministic_algorithms(True, warn_only=True)`` and cuDNN
    benchmarking off, restoring the previous (process-wide) settings afterwards."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
        torch.backends.cudnn.deterministic = previous[3]


class _Throughput:
    """Steps per second since the previous report."""

    def __init__(self, step: int) -> None:
        self._step, self._time = step, time.perf_counter()

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return rate
