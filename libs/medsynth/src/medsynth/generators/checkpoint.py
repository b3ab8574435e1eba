"""The one checkpoint format of generator training (every family), and its versioned loader.

On disk (``torch.save`` of a plain dict; everything in it loads with ``torch.load(weights_only=True)``:
tensors, dicts, lists, tuples, numbers, strings, bools, None)::

    {
      "format_version": 2,
      "family": "joint-gan",                   # registry name of the generator family
      "state_version": 1,                      # the family's layout of nets/extra
      "spec": GeneratorSpec.to_dict(),         # family options, resolved training options, data
      "step": int,                             # training steps completed
      "nets": {name: state_dict},              # raw networks (train-time BatchNorm statistics included)
      "ema": {name: state_dict},               # EMA copies of some nets (same names); BatchNorm statistics
                                               # re-estimated with the EMA weights (format-1 files, and
                                               # earlier format-2 files: the raw net's, copied)
      "optimizers": {name: state_dict},
      "extra": {...},                          # family state carried across steps (e.g. ADA's p)
      "rng": {"scheme": "per-step-seed", "seed": int},
      "metrics": {"curves": {...}, "window": {...}, "environment": {...}},
    }

``rng``: the training loop draws no number from a global generator. Initial weights come from the
seed; every step's randomness from a fresh CPU generator seeded from ``(seed, step)``.

:func:`load_checkpoint` dispatches on ``format_version``, then checks the family is known and its
``state_version`` readable. Format 1 (medsynth's first joint GAN: ``kind "joint-gan"``, a
``TrainConfig`` and generator/generator_ema/discriminator/opt_g/opt_d) is converted on load into a
joint-gan format-2 checkpoint with ``fake_masks: softmax`` — the behaviour it was trained with.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import DataSpec
from medsynth.generators.registry import GeneratorSpec, parse_options, parse_training

FORMAT_VERSION = 2
RNG_SCHEME = "per-step-seed"

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Checkpoint:
    """One training state, as read from or written to the checkpoint format (the current version)."""

    spec: GeneratorSpec
    step: int
    nets: dict[str, StateDict]
    ema: dict[str, StateDict]
    optimizers: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def sampling_weights(self) -> dict[str, StateDict]:
        """The weights sampling uses: each of the family's sampling nets, from its EMA copy where one is
        kept (a net the checkpoint lacks is left out, for :func:`build_sampling_nets` to name)."""
        names = self.spec.family.sampling_nets(self.spec.options, self.spec.data)
        return {name: self.ema.get(name, self.nets.get(name)) for name in names if name in self.ema or name in self.nets}


def save_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Serialise ``checkpoint`` in the current format (tensors moved to the CPU)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "family": checkpoint.spec.options.family,
        "state_version": checkpoint.spec.family.state_version,
        "spec": checkpoint.spec.to_dict(),
        "step": int(checkpoint.step),
        "nets": _cpu(checkpoint.nets),
        "ema": _cpu(checkpoint.ema),
        "optimizers": _cpu(checkpoint.optimizers),
        "extra": _cpu(checkpoint.extra),
        "rng": _cpu(checkpoint.rng),
        "metrics": _cpu(checkpoint.metrics),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes, *, family: str | None = None) -> Checkpoint:
    """Read a checkpoint of any supported format version (tensors on the CPU).

    Args:
        family: if given, the family the caller expects; a checkpoint of another family is refused.

    Raises:
        InvalidInput: ``"corrupt checkpoint: ..."`` for bytes that are not a readable checkpoint, an
            unsupported ``format_version``, an unknown family or a family other than ``family``.
    """
    raw = _unpickle(data)
    version = raw.get("format_version")
    loader = _LOADERS.get(version) if isinstance(version, int) and not isinstance(version, bool) else None
    if loader is None:
        raise InvalidInput(
            f"unsupported checkpoint format_version {version!r}; this version of medsynth reads {sorted(_LOADERS)}."
        )
    checkpoint = loader(raw)
    if family is not None and checkpoint.spec.options.family != family:
        raise InvalidInput(f"this is a {checkpoint.spec.options.family!r} checkpoint, not a {family!r} one.")
    return checkpoint


def load_sampling_nets(checkpoint: Checkpoint | bytes, *, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """The networks sampling needs, with their EMA weights, in eval mode on ``device``."""
    if isinstance(checkpoint, (bytes, bytearray, memoryview)):
        checkpoint = load_checkpoint(bytes(checkpoint))
    return build_sampling_nets(checkpoint.spec, checkpoint.sampling_weights(), device=device)


def build_sampling_nets(spec: GeneratorSpec, weights: Mapping[str, StateDict], *, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """``spec``'s sampling networks with ``weights`` loaded strictly (eval mode, on ``device``).

    Raises:
        InvalidInput: a network is missing from ``weights`` or its weights do not fit the spec.
    """
    nets = spec.family.sampling_nets(spec.options, spec.data)
    missing = sorted(set(nets) - set(weights))
    if missing:
        raise InvalidInput(f"corrupt checkpoint: no weights for the {spec.options.family} network(s) {missing}.")
    for name, net in nets.items():
        try:
            net.load_state_dict(dict(weights[name]), strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())
            raise InvalidInput(f"corrupt checkpoint: {name} weights do not fit its {spec.options.family} config: {reason}") from exc
        net.to(device).eval()
    return nets


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


_V2_KEYS = frozenset(
    {"format_version", "family", "state_version", "spec", "step", "nets", "ema", "optimizers", "extra", "rng", "metrics"}
)


def _load_v2(raw: dict[str, Any]) -> Checkpoint:
    _require(raw, _V2_KEYS, 2)
    try:
        spec = GeneratorSpec.from_dict(raw["spec"])
    except InvalidInput as exc:
        raise InvalidInput(f"corrupt checkpoint: its spec is invalid: {exc}") from exc
    if raw["family"] != spec.options.family:
        raise InvalidInput(f"corrupt checkpoint: family {raw['family']!r} but spec of {spec.options.family!r}.")
    if raw["state_version"] != spec.family.state_version:
        raise InvalidInput(
            f"unsupported {spec.options.family} state_version {raw['state_version']!r}; "
            f"this version of medsynth reads {spec.family.state_version}."
        )
    for group in ("nets", "ema", "optimizers", "extra", "rng", "metrics"):
        if not isinstance(raw[group], dict):
            raise InvalidInput(f"corrupt checkpoint: {group} must be a dict, got {type(raw[group]).__name__}.")
    for group in ("nets", "ema"):
        for name, state in raw[group].items():
            _check_state_dict(f"{group}.{name}", state)
    return Checkpoint(
        spec=spec, step=_step(raw["step"]), nets=raw["nets"], ema=raw["ema"], optimizers=raw["optimizers"],
        extra=raw["extra"], rng=raw["rng"], metrics=raw["metrics"],
    )  # fmt: skip


_V1_KEYS = frozenset(
    {"format_version", "kind", "config", "step", "generator", "generator_ema", "discriminator", "opt_g", "opt_d", "rng", "metrics"}
)


def _load_v1(raw: dict[str, Any]) -> Checkpoint:
    """Format 1: medsynth's first joint GAN, converted to a joint-gan format-2 checkpoint."""
    _require(raw, _V1_KEYS, 1)
    if raw["kind"] != "joint-gan":
        raise InvalidInput(f"not a 'joint-gan' checkpoint: kind is {raw['kind']!r}.")
    try:
        spec = spec_from_v1_config(raw["config"])
    except (InvalidInput, KeyError, TypeError) as exc:
        raise InvalidInput(f"corrupt checkpoint: its format-1 config is invalid: {exc}") from exc
    for name in ("generator", "generator_ema", "discriminator"):
        _check_state_dict(name, raw[name])
    for name in ("opt_g", "opt_d", "rng", "metrics"):
        if not isinstance(raw[name], dict):
            raise InvalidInput(f"corrupt checkpoint: {name} must be a dict, got {type(raw[name]).__name__}.")
    return Checkpoint(
        spec=spec,
        step=_step(raw["step"]),
        nets={"generator": raw["generator"], "discriminator": raw["discriminator"]},
        ema={"generator": raw["generator_ema"]},
        optimizers={"generator": raw["opt_g"], "discriminator": raw["opt_d"]},
        rng=raw["rng"],
        metrics=raw["metrics"],
    )


def spec_from_v1_config(config: Mapping[str, Any]) -> GeneratorSpec:
    """A format-1 ``TrainConfig`` dict as a joint-gan :class:`GeneratorSpec`."""
    gen = config["generator"]
    options = parse_options({
        "family": "joint-gan", "loss": config["loss"], "latent_dim": gen["latent_dim"],
        "base_channels": gen["base_channels"], "critic_norm": "batch", "diff_augment": config["diff_augment"],
        "fake_masks": "softmax",
    })  # fmt: skip
    training = parse_training({
        k: config[k] for k in ("steps", "batch_size", "lr_g", "lr_d", "betas", "ema_decay", "checkpoint_every", "log_every", "seed")
    })  # fmt: skip
    return GeneratorSpec(options=options, training=training, data=DataSpec(gen["image_size"], gen["num_classes"]))


_LOADERS: dict[int, Callable[[dict[str, Any]], Checkpoint]] = {1: _load_v1, 2: _load_v2}


def _require(raw: dict[str, Any], keys: frozenset[str], version: int) -> None:
    missing = sorted(keys - raw.keys())
    if missing:
        raise InvalidInput(f"corrupt checkpoint: format {version} checkpoint is missing {missing}.")


def _step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidInput(f"corrupt checkpoint: step must be a non-negative integer, got {step!r}.")
    return step


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
