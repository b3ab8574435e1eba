"""The one device setting (``MEDSYNTH_DEVICE``): where the trainer and the in-process sampler run."""

from __future__ import annotations

import re

from medsynth.core.errors import InvalidInput

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: str) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; :class:`InvalidInput` otherwise."""
    if not isinstance(name, str) or not _DEVICE_RE.match(name):
        raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, got {name!r}.")
    return name


def pick_device(name: str = "auto"):  # -> torch.device (torch imported here, not at module load)
    """``auto``: the first CUDA device when one is present, else the CPU. An explicit ``cuda`` on a
    machine without CUDA is an error, not a silent fallback."""
    import torch

    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device {name!r} was asked for, but torch sees no CUDA device on this machine.")
    return torch.device(name)
