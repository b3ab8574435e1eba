"""The one checkpoint format of joint image + mask GAN training, and its versioned loader.

On disk (``torch.save`` of a plain dict; everything in it loads with ``torch.load(weights_only=True)``:
tensors, dicts, lists, tuples, numbers, strings, bools, None)::

    {
      "format_version": 1,
      "kind": "joint-gan",
      "config": TrainConfig.to_dict(),         # fully resolved options of the run
      "step": int,                             # optimisation steps completed
      "generator": state_dict,                 # raw generator (train-time BatchNorm statistics included)
      "generator_ema": state_dict,             # EMA of the generator's weights; buffers copied
      "discriminator": state_dict,
      "opt_g": Adam state_dict, "opt_d": Adam state_dict,
      "rng": {"scheme": "per-step-seed", "seed": int},
      "metrics": {"curves": {...}, "window": {...}},
    }

``rng``: the training loop draws no number from a global generator. Initial weights come from
``seed``; every step's randomness (batch indices, latents, augmentation) from a fresh CPU generator
seeded from ``(seed, step)``. Resuming therefore needs only ``seed`` and ``step``; the record says so
explicitly instead of carrying global generator states that nothing reads.

:func:`load_checkpoint` dispatches on ``format_version``; a new format gets a new loader that
converts it to :class:`Checkpoint`, so old checkpoints keep loading.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import Generator
from medsynth.training.config import TrainConfig

FORMAT_VERSION = 1
KIND = "joint-gan"
RNG_SCHEME = "per-step-seed"

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Checkpoint:
    """One training state, as read from or written to the checkpoint format (the current version)."""

    config: TrainConfig
    step: int
    generator: StateDict
    generator_ema: StateDict
    discriminator: StateDict
    opt_g: dict[str, Any]
    opt_d: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Serialise ``checkpoint`` in the current format (tensors moved to the CPU)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "config": checkpoint.config.to_dict(),
        "step": int(checkpoint.step),
        "generator": _cpu(checkpoint.generator),
        "generator_ema": _cpu(checkpoint.generator_ema),
        "discriminator": _cpu(checkpoint.discriminator),
        "opt_g": _cpu(checkpoint.opt_g),
        "opt_d": _cpu(checkpoint.opt_d),
        "rng": _cpu(checkpoint.rng),
        "metrics": _cpu(checkpoint.metrics),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes) -> Checkpoint:
    """Read a checkpoint of any supported format version (tensors on the CPU).

    Raises:
        InvalidInput: ``"corrupt checkpoint: ..."`` for bytes that are not a readable checkpoint,
            or an unsupported ``format_version`` / ``kind``.
    """
    raw = _unpickle(data)
    version = raw.get("format_version")
    loader = _LOADERS.get(version) if isinstance(version, int) and not isinstance(version, bool) else None
    if loader is None:
        raise InvalidInput(
            f"unsupported checkpoint format_version {version!r}; this version of medsynth reads "
            f"{sorted(_LOADERS)}."
        )
    return loader(raw)


def load_generator(
    checkpoint: Checkpoint | bytes, *, ema: bool = True, device: str | torch.device = "cpu"
) -> Generator:
    """The generator of a checkpoint, in eval mode.

    Args:
        checkpoint: a loaded :class:`Checkpoint` or checkpoint bytes.
        ema: take the exponential-moving-average weights (the ones to sample from) rather than the raw ones.
        device: where to put the network.
    """
    if isinstance(checkpoint, (bytes, bytearray, memoryview)):
        checkpoint = load_checkpoint(bytes(checkpoint))
    generator = Generator(checkpoint.config.generator)
    state = checkpoint.generator_ema if ema else checkpoint.generator
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        raise InvalidInput(f"corrupt checkpoint: generator weights do not fit its config: {exc}") from exc
    return generator.to(device).eval()


# Loading ---------------------------------------------------------------------------------------


def _unpickle(data: bytes) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"a checkpoint must be bytes, got {type(data).__name__}.")
    try:
        raw = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for bad archives and pickles
        raise InvalidInput(f"corrupt checkpoint: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"corrupt checkpoint: expected a dict at the top level, got {type(raw).__name__}.")
    return raw


_V1_KEYS = frozenset(
    {"format_version", "kind", "config", "step", "generator", "generator_ema", "discriminator",
     "opt_g", "opt_d", "rng", "metrics"}
)


def _load_v1(raw: dict[str, Any]) -> Checkpoint:
    missing = sorted(_V1_KEYS - raw.keys())
    if missing:
        raise InvalidInput(f"corrupt checkpoint: format 1 checkpoint is missing {missing}.")
    if raw["kind"] != KIND:
        raise InvalidInput(f"not a {KIND!r} checkpoint: kind is {raw['kind']!r}.")
    step = raw["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidInput(f"corrupt checkpoint: step must be a non-negative integer, got {step!r}.")
    try:
        config = TrainConfig.from_dict(raw["config"])
    except InvalidInput as exc:
        raise InvalidInput(f"corrupt checkpoint: its config is invalid: {exc}") from exc
    for name in ("generator", "generator_ema", "discriminator"):
        _check_state_dict(name, raw[name])
    for name in ("opt_g", "opt_d", "rng", "metrics"):
        if not isinstance(raw[name], dict):
            raise InvalidInput(f"corrupt checkpoint: {name} must be a dict, got {type(raw[name]).__name__}.")
    return Checkpoint(
        config=config,
        step=step,
        generator=raw["generator"],
        generator_ema=raw["generator_ema"],
        discriminator=raw["discriminator"],
        opt_g=raw["opt_g"],
        opt_d=raw["opt_d"],
        rng=raw["rng"],
        metrics=raw["metrics"],
    )


_LOADERS: dict[int, Callable[[dict[str, Any]], Checkpoint]] = {1: _load_v1}


def _check_state_dict(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"corrupt checkpoint: {name} must be a state dict, got {type(value).__name__}.")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise InvalidInput(f"corrupt checkpoint: {name} entry {key!r} is not a named tensor.")


def _cpu(value: Any) -> Any:
    """``value`` with every tensor moved to the CPU (containers rebuilt, state-dict metadata kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        out = type(value)((k, _cpu(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
