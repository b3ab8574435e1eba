"""The one device setting (``MEDSYNTH_DEVICE``): where the trainer, the segmenter, the evaluator's feature
extractors and the in-process sampler run.

``auto`` picks the first CUDA device when torch sees one, else the CPU; it is for a laptop or the demo.
Where a GPU was reserved for the process (the chart's GPU pool, compose's GPU override) the setting is
``cuda``: then a machine on which torch cannot use the GPU is an error, raised when the service starts
and again when a job picks its device, never a silent fall back to the CPU. Torch cannot use a GPU
when the NVIDIA driver is older than the CUDA runtime of the wheels (PyTorch's CUDA 13 wheels need
driver 580 or newer; ``torch.cuda.is_available()`` is then False) or when the GPU's compute
capability is not among those the wheels were built for (:func:`cuda_problem`).
"""

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
    machine where torch cannot use one (no GPU, a driver too old for the wheels' CUDA runtime, a GPU
    the wheels have no kernels for) is an :class:`InvalidInput` naming why, not a silent fallback."""
    import torch

    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and cuda_problem(0) is None else "cpu")
    if name.startswith("cuda"):
        device = torch.device(name)
        if not torch.cuda.is_available():
            raise InvalidInput(
                f"device {name!r} was asked for (MEDSYNTH_DEVICE), but torch {torch.__version__} sees no CUDA device on "
                f"this machine: no GPU reserved for the process, or an NVIDIA driver older than its CUDA "
                f"{torch.version.cuda} runtime needs (CUDA 13 wheels: driver 580 or newer). Set MEDSYNTH_DEVICE=cpu to run on the CPU."
            )
        problem = cuda_problem(device.index or 0)
        if problem is not None:
            raise InvalidInput(f"device {name!r} was asked for (MEDSYNTH_DEVICE), but {problem}")
        return device
    return torch.device(name)


def cuda_problem(index: int = 0) -> str | None:
    """Why torch cannot run kernels on CUDA device ``index`` (a missing device, or a compute capability
    below every architecture this torch build has kernels for), or ``None`` when it can."""
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        return f"this machine has {count} CUDA device(s); cuda:{index} does not exist."
    major, minor = torch.cuda.get_device_capability(index)
    built = sorted(int(m.group(1)) for m in (re.match(r"^(?:sm|compute)_(\d+)", a) for a in torch.cuda.get_arch_list()) if m)
    if built and major * 10 + minor < built[0]:
        return (
            f"{torch.cuda.get_device_name(index)} has compute capability {major}.{minor}, and torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) has kernels for {built[0] // 10}.{built[0] % 10} and newer only."
        )
    return None


def require_device(name: str) -> None:
    """At a service's start: an explicit ``cuda`` setting that this machine cannot honour stops the
    service with the reason (:func:`pick_device`), before it takes any job."""
    if check_device(name).startswith("cuda"):
        pick_device(name)
