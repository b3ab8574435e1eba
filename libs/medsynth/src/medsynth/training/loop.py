"""The training loop of every generator family, resumable bit for bit.

Store layout under ``prefix`` (used literally: pass ``"runs/abc/"`` with its trailing slash)::

    {prefix}checkpoints/step-00000200.pt    every ``checkpoint_every`` steps (checkpoint format 2)
    {prefix}checkpoints/latest.json         {"key": <newest checkpoint>, "step": int}, written after it
    {prefix}generator.pt                    the final checkpoint (same format)
    {prefix}curves.json                     {"step": [...], "<loss>": [...], ...}

At start, if ``latest.json`` exists the run continues from the checkpoint it names (this is how a
redelivered job resumes); once the run has finished it points at ``generator.pt``, so a redelivery of a
finished job only rewrites the final outputs.

The family (:mod:`medsynth.generators`) owns networks, optimisers and the step; this loop owns
everything around it: seeding, resume, EMA, curves, checkpoints, progress and cancellation.

EMA and batch norm: the loop averages parameters only. Batch-norm statistics belong to the weights
upstream of each layer, so the raw network's (which :func:`update_ema` copies between checkpoints) do
not fit the averaged weights; before every checkpoint the EMA networks' statistics are re-estimated
with the EMA weights themselves (:func:`recompute_ema_batch_norm`, :mod:`medsynth.training.batch_norm`).

Determinism: initial weights come from ``training.seed`` (drawn inside :func:`torch.random.fork_rng`,
so the caller's global generator is left alone) and every step's randomness from
:func:`step_generator` ``(seed, step)``. Checkpoints hold weights, BatchNorm statistics, optimiser
state, EMA copies, the family's extra state and the partial loss window, so a run resumed from step
``k`` ends with exactly the weights of an uninterrupted run, provided it runs on the same kind of
device with the same torch build and, on the CPU, the same number of intra-op threads (reductions
are split by thread; checkpoints record this ``environment`` and a resume elsewhere logs a warning).
``torch.use_deterministic_algorithms`` is switched on for the duration of the run.
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
from torch import nn

from medsynth.core.errors import Conflict, InvalidInput
from medsynth.generators.base import (
    RESUMABLE_CHANGES, Precision, SampleMode, StepContext, TrainingData, TrainState, prepare_data,
)
from medsynth.generators.registry import GeneratorSpec
from medsynth.store.base import ObjectStore, check_prefix
from medsynth.training import batch_norm
from medsynth.generators.checkpoint import RNG_SCHEME, Checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_generator` produced.

    Attributes:
        step: steps completed (``spec.training.steps``, or fewer when the time budget ran out).
        final_key: store key of the final checkpoint (``{prefix}generator.pt``).
        resumed_from: the step the run resumed from, or None for a fresh run.
        curves: ``{"step": [...], "<loss>": [...]}``, one point per log step, each the mean over the
            steps since the previous point that reported the loss (None where none did: a staged family).
        checkpoint: the final checkpoint.
    """

    step: int
    final_key: str
    resumed_from: int | None
    curves: dict[str, list[float]]
    checkpoint: Checkpoint


def train_generator(
    spec: GeneratorSpec,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    store: ObjectStore,
    prefix: str,
    conditions: np.ndarray | None = None,
    on_progress: ProgressCallback | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train (or resume training) a generator of ``spec`` and store its checkpoints under ``prefix``.

    Args:
        spec: family, options, training options and data spec of the run.
        images: ``(N, 1, S, S)`` floats in [0, 1].
        masks: ``(N, S, S)`` integer labels in ``[0, num_classes)``.
        conditions: ``(N,)`` class labels, for a class-conditioned generator.
        store: where checkpoints, curves and the final generator go.
        prefix: store key prefix of this run (literal; usually ends with ``/``).
        on_progress: called as ``on_progress(step, {<losses>, "steps_per_s"})`` every ``log_every``
            steps, after that step's checkpoint (if any) is stored. It may raise to cancel; the
            exception propagates and the newest checkpoint stays valid.
        device: torch device to train on.

    Raises:
        InvalidInput: bad arrays or prefix, or an unreadable checkpoint in the store.
        Conflict: the store holds a checkpoint of a different run under ``prefix``.
    """
    check_prefix(prefix)
    device = torch.device(device)
    data = prepare_data(images, masks, spec.data, device, conditions)
    with deterministic_algorithms():
        resumed = find_resume_checkpoint(store, prefix, spec)
        if resumed is not None:
            _warn_if_environment_changed(resumed, device)
        state, curves = restore_state(spec, data, resumed)
        start = resumed.step if resumed else 0
        if resumed is not None and resumed.metrics.get("stopped_by_time_budget"):
            end = start  # a finished, time-budgeted run: a redelivery rewrites its outputs only
        else:
            logger.info("training %s (%s) from step %d to %d on %s", prefix, spec.options.family, start, spec.training.steps, device)
            end = _train_steps(state, curves, spec, data, start, _Sink(store, prefix, on_progress))
        recompute_ema_batch_norm(state, spec, end)
        final = snapshot(state, spec, end, curves)
        if end < spec.training.steps:
            final.metrics["stopped_by_time_budget"] = True
        final_key = write_final(store, prefix, final)
    return TrainResult(end, final_key, start if resumed else None, curves.points(), final)


@dataclass
class _Sink:
    """Where the loop's outputs go: the store and the caller's progress callback."""

    store: ObjectStore
    prefix: str
    on_progress: ProgressCallback | None


def _train_steps(state: TrainState, curves: LossCurves, spec: GeneratorSpec, data: TrainingData, start: int, sink: _Sink) -> int:
    """Steps ``start..steps-1``, or fewer when the time budget runs out; returns the steps completed."""
    timer = _Throughput(start)
    training = spec.training
    family = spec.family
    deadline = time.monotonic() + training.time_budget_s if training.time_budget_s else None
    minimum = family.minimum_steps(spec.options)  # a budget never stops a run before it can sample
    for step in range(start, training.steps):
        ctx = StepContext(
            options=spec.options, training=training, data=data, step=step,
            rng=step_generator(training.seed, step), autocast=_autocast(training.precision, data.device),
        )  # fmt: skip
        losses = family.train_step(state, ctx)
        done = step + 1
        for name, ema in state.ema.items():
            update_ema(ema, state.nets[name], training.ema_decay, done)
        curves.add(losses)
        point = curves.flush(done) if done % training.log_every == 0 else None
        if done % training.checkpoint_every == 0:
            recompute_ema_batch_norm(state, spec, done)
            write_checkpoint(sink.store, sink.prefix, snapshot(state, spec, done, curves))
        if point is not None:
            _report(done, {**point, "steps_per_s": timer.rate(done)}, sink.on_progress)
            if deadline is not None and time.monotonic() >= deadline and minimum <= done < training.steps:
                logger.info("time budget of %.0fs reached after step %d of %d", training.time_budget_s, done, training.steps)
                return done
    return training.steps


def _autocast(precision: Precision, device: torch.device) -> Callable[[], Any]:
    if precision is Precision.bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _report(step: int, metrics: dict[str, float], on_progress: ProgressCallback | None) -> None:
    logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if on_progress is not None:
        try:
            on_progress(step, metrics)
        except BaseException as exc:
            logger.info("training stopped after step %d by on_progress: %r", step, exc)
            raise


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step)`` alone (mixed by :class:`numpy.random.SeedSequence`)."""
    words = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    mixed = (int(words[0]) << 31) ^ int(words[1])  # < 2**63
    return torch.Generator(device="cpu").manual_seed(mixed)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema ← β·ema + (1-β)·model`` with ``β = min(decay, (1 + step) / (10 + step))``; buffers copied.
    ``decay == 0`` copies the weights exactly.

    Copied batch-norm statistics are the raw network's, which do not fit the averaged weights: they
    are placeholders until :func:`recompute_ema_batch_norm` re-estimates them before a checkpoint.

    One multi-tensor (``torch._foreach_*``) operation per group, not one kernel per parameter: on a GPU
    a few launches per step; on the CPU it is the same per-tensor ``lerp_``/``copy_``, bit for bit."""
    beta = min(decay, (1 + step) / (10 + step))
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA copy has {len(ema_params)} parameters, the network {len(params)}.")
    if ema_params:
        if beta == 0:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1 - beta)
    ema_buffers, buffers = list(ema.buffers()), list(model.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError(f"EMA copy has {len(ema_buffers)} buffers, the network {len(buffers)}.")
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)


def recompute_ema_batch_norm(state: TrainState, spec: GeneratorSpec, step: int) -> None:
    """Re-estimate the batch-norm statistics of the EMA networks with the EMA weights (in place).

    Family-agnostic: the family's own :class:`~medsynth.generators.base.SamplingNet` of every mask
    source (and every class condition of a conditioned generator) runs over the EMA networks (raw ones
    where no EMA copy is kept, e.g. a mask bank) in eval mode, on standard-normal noise of its
    ``noise_shapes`` as the sampler draws it, from generators seeded by ``(seed, step)``; see
    :mod:`medsynth.training.batch_norm` for the estimate. The result depends on the EMA weights, the
    spec and ``step`` only (not on the statistics the EMA copy held), so resumed runs stay bit-exact.
    Nothing to do for EMA networks without batch norm, or when ``ema_decay == 0``: then the EMA copy
    *is* the raw network, whose statistics were tracked with its own weights. The step's randomness
    and the global generator are left alone.
    """
    layers = batch_norm.batch_norm_layers(state.ema.values())
    if not layers or spec.training.ema_decay == 0:
        return
    family, options, data = spec.family, spec.options, spec.data
    nets = {**state.nets, **state.ema}
    modes = [
        SampleMode(mask_source=source, condition=condition)
        for source in family.mask_sources_for(options)
        for condition in (range(data.num_conditions) if family.conditional(options) else (None,))
    ]
    training_flags = {m: m.training for net in nets.values() for m in net.modules()}
    try:
        samplers = [family.sampling_net(options, data, nets, mode) for mode in modes]  # eval mode
        device = next(t for net in state.ema.values() for t in (*net.parameters(), *net.buffers())).device
        words = np.random.SeedSequence([int(spec.training.seed), int(step), 0x454D41424E]).generate_state(2, dtype=np.uint32)
        base = ((int(words[0]) << 31) ^ int(words[1])) % 2**62

        def source(k: int) -> Callable[[int, int], None]:
            sampler, condition = samplers[k], modes[k].condition or 0

            def forward(i: int, n: int) -> None:  # batch i of mode k: the same noise every time
                rng = torch.Generator(device="cpu").manual_seed(base + i * len(samplers) + k)
                noise = [torch.randn(n, *shape, generator=rng).to(device) for shape in sampler.noise_shapes]
                sampler(noise, torch.full((n,), condition, dtype=torch.int64, device=device))

            return forward

        batches = -(-batch_norm.SAMPLES // batch_norm.BATCH)
        missed = batch_norm.recompute_batch_norm([source(k) for k in range(len(samplers))], layers, batches)
    finally:
        for module, flag in training_flags.items():  # sampling_net set eval() on raw nets too
            module.training = flag
    if missed:
        logger.warning("%d batch-norm layer(s) of the EMA networks are not reached by any sampling mode; "
                       "their statistics stay the raw network's", len(missed))


# State ---------------------------------------------------------------------------------------------


def init_state(spec: GeneratorSpec, data: TrainingData) -> TrainState:
    """Fresh networks drawn from ``spec.training.seed`` (the caller's global generator is left alone),
    with an eval-mode EMA copy of each network the family keeps one of."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.training.seed)
        state = spec.family.init_state(spec.options, spec.training, data)
    state.ema = {name: copy.deepcopy(net).requires_grad_(False).eval() for name, net in state.ema.items()}
    return state


def restore_state(spec: GeneratorSpec, data: TrainingData, checkpoint: Checkpoint | None) -> tuple[TrainState, LossCurves]:
    """Networks and curves at the start of a run: fresh, or as ``checkpoint`` left them."""
    state = init_state(spec, data)
    names = spec.family.loss_names_for(spec.options)
    if checkpoint is None:
        return state, LossCurves(names, device=data.device)
    try:
        for group, modules in (("nets", state.nets), ("ema", state.ema)):
            stored = getattr(checkpoint, group)
            if set(stored) != set(modules):
                raise InvalidInput(f"{group} {sorted(stored)} != {sorted(modules)}")
            for name, module in modules.items():
                module.load_state_dict(stored[name])
        for name, optimizer in state.optimizers.items():
            optimizer.load_state_dict(checkpoint.optimizers[name])
    except (RuntimeError, KeyError, ValueError, InvalidInput) as exc:
        raise InvalidInput(f"corrupt checkpoint: it does not fit its {spec.options.family} spec: {exc}") from exc
    state.extra = _to_device(copy.deepcopy(checkpoint.extra), data.device)
    return state, LossCurves.from_metrics(names, checkpoint.metrics, device=data.device)


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor moved to ``device`` (checkpoints hold CPU tensors)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def snapshot(state: TrainState, spec: GeneratorSpec, step: int, curves: LossCurves) -> Checkpoint:
    """The current training state as a :class:`Checkpoint` (tensors copied to the CPU)."""
    device = next(t for net in state.nets.values() for t in (*net.parameters(), *net.buffers())).device
    return Checkpoint(
        spec=spec,
        step=step,
        nets={name: _cpu_state(net.state_dict()) for name, net in state.nets.items()},
        ema={name: _cpu_state(net.state_dict()) for name, net in state.ema.items()},
        optimizers={name: copy.deepcopy(opt.state_dict()) for name, opt in state.optimizers.items()},
        extra=copy.deepcopy(state.extra),
        rng={"scheme": RNG_SCHEME, "seed": spec.training.seed},
        metrics={**curves.to_metrics(), "environment": environment(device)},
    )


def environment(device: torch.device) -> dict[str, Any]:
    """What bit-exact resumption depends on besides the checkpoint: torch build, device, CPU threads."""
    return {"torch": str(torch.__version__), "device": str(device), "threads": torch.get_num_threads()}


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = type(state)((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata  # type: ignore[attr-defined]
    return out


class LossCurves:
    """Loss curves: one point per log step, the mean of each named loss over the steps since the last point.

    A step may report some of the names only (a staged family reports its current stage's losses): each
    loss is averaged over the steps that reported it, and a point where no step did holds ``None``.
    The running sums stay on the training device (no host sync per step) in float64, and are saved in
    checkpoints so that a resumed run records exactly the curve of an uninterrupted one.
    """

    def __init__(self, names: tuple[str, ...], *, device: torch.device, points: dict[str, list[float | None]] | None = None,
                 sums: list[float] | None = None, counts: list[int] | None = None) -> None:
        self.names = tuple(names)
        self._points = copy.deepcopy(points) if points else {"step": [], **{n: [] for n in self.names}}
        if set(self._points) != {"step", *self.names}:
            raise InvalidInput(f"curves hold {sorted(self._points)}, expected step and {list(self.names)}.")
        self._sums = torch.tensor(sums or [0.0] * len(self.names), dtype=torch.float64, device=device)
        self._counts = list(counts or [0] * len(self.names))
        if len(self._sums) != len(self.names) or len(self._counts) != len(self.names):
            raise InvalidInput(f"a loss window needs one sum and one count per loss {list(self.names)}.")

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        """Add one step's losses: some or all of :attr:`names`."""
        unknown = sorted(set(losses) - set(self.names))
        if unknown or not losses:
            raise InvalidInput(f"the training step returned losses {sorted(losses)}, expected some of {list(self.names)}.")
        zero = self._sums.new_zeros(())
        self._sums += torch.stack([losses[n].detach().to(torch.float64).reshape(()) if n in losses else zero for n in self.names])
        self._counts = [c + 1 if n in losses else c for n, c in zip(self.names, self._counts, strict=True)]

    def flush(self, step: int) -> dict[str, float]:
        """Close the window: append its means (``None`` for a loss no step reported) and return the
        means of the losses reported, by name."""
        divisors = torch.tensor([max(c, 1) for c in self._counts], dtype=torch.float64, device=self._sums.device)
        values = (self._sums / divisors).tolist()
        means = {n: v for n, v, c in zip(self.names, values, self._counts, strict=True) if c}
        self._points["step"].append(step)
        for name in self.names:
            self._points[name].append(means.get(name))
        self._sums.zero_()
        self._counts = [0] * len(self.names)
        return means

    def points(self) -> dict[str, list[float]]:
        return copy.deepcopy(self._points)

    def to_metrics(self) -> dict[str, Any]:
        return {"curves": self.points(), "window": {"sums": self._sums.tolist(), "counts": list(self._counts)}}

    @classmethod
    def from_metrics(cls, names: tuple[str, ...], metrics: dict[str, Any], *, device: torch.device) -> LossCurves:
        try:
            window = metrics.get("window", {})
            if "sum_d" in window:  # format 1: the joint GAN's two losses
                sums = [float(window["sum_d"]), float(window["sum_g"])]
            else:
                sums = [float(v) for v in window.get("sums", [0.0] * len(names))]
            if "counts" in window:
                counts = [int(c) for c in window["counts"]]
            else:  # before per-loss counts: every step reported every loss
                counts = [int(window.get("count", 0))] * len(names)
            return cls(names, device=device, points=metrics.get("curves"), sums=sums, counts=counts)
        except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
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


def find_resume_checkpoint(store: ObjectStore, prefix: str, spec: GeneratorSpec) -> Checkpoint | None:
    """The checkpoint ``latest.json`` names, if any, after checking it belongs to this run.

    Raises:
        InvalidInput: ``latest.json`` or the checkpoint it names is unreadable.
        Conflict: the checkpoint was trained with different options, or is past ``spec.training.steps``.
    """
    pointer_key = latest_key(prefix)
    if not store.exists(pointer_key):
        return None
    pointer = store.get_json(pointer_key)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("key"), str):
        raise InvalidInput(f"{pointer_key!r} does not name a checkpoint: {pointer!r}.")
    checkpoint = load_checkpoint(store.get_bytes(pointer["key"]))
    _check_same_run(checkpoint, spec, pointer["key"])
    logger.info("resuming %s from %s (step %d)", prefix, pointer["key"], checkpoint.step)
    return checkpoint


def _warn_if_environment_changed(checkpoint: Checkpoint, device: torch.device) -> None:
    before, now = checkpoint.metrics.get("environment"), environment(device)
    if isinstance(before, dict) and before != now:
        logger.warning(
            "resuming step %d in a different environment (%s, was %s): the run continues correctly but "
            "will not match an uninterrupted run bit for bit", checkpoint.step, now, before,
        )


def _check_same_run(checkpoint: Checkpoint, spec: GeneratorSpec, key: str) -> None:
    old, new = checkpoint.spec.to_dict(), spec.to_dict()
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in ("family", "options", "data") if old[k] != new[k]]
    changed += [
        f"{k}: {old['training'].get(k)!r} -> {v!r}"
        for k, v in new["training"].items() if k not in RESUMABLE_CHANGES and old["training"].get(k) != v
    ]
    if changed:
        raise Conflict(f"cannot resume from {key!r}: it was trained with different options ({', '.join(changed)}).")
    if checkpoint.step > spec.training.steps:
        raise Conflict(f"cannot resume from {key!r}: it is at step {checkpoint.step}, past steps={spec.training.steps}.")


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
