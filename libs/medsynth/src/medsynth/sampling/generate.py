"""The core of sampling: which noise each sample gets, and one pass of a family's sampling net.

Noise scheme (:data:`LATENT_SCHEME`): sample ``i`` of cohort seed ``s`` gets its noise tensors (the
shapes its :class:`~medsynth.generators.base.SamplingNet` lists in ``noise_shapes``, in order: a
latent vector first for every family so far, then e.g. per-layer noise maps) as successive
``torch.randn(shape)`` draws on the CPU from one ``torch.Generator`` seeded with :func:`latent_seed`
``(s, i)`` — the first 8 bytes (big-endian) of ``SHA-256("medsynth/latent/v1:<s>:<i>")`` with the
top bit cleared. Every sample therefore has its own noise, independent of the others, of the batch it
was drawn in and of the machine. (A generator with one latent draws exactly what medsynth's first
joint GAN drew, so its cohorts still regenerate.)

Bit-for-bit caveat: the latents are batch-independent, but the network's output is not always.
CPU convolution kernels may pick a different algorithm for a different batch size, so the pixels of
sample ``i`` drawn in a batch of 11 can differ in the last bit from the same sample drawn in a batch
of 16. Exact regeneration therefore replays the *batch layout* too (see
:func:`medsynth.sampling.cohort.regenerate`), on the same device model (the CPU, or one GPU model)
and software versions: a GPU differs from the CPU (TF32 and cuDNN convolutions) by about 1e-3.

:func:`generate` is the one function that turns ``(sampling net, seed, indices, condition)`` into
pixels; the TorchServe handler and :class:`~medsynth.sampling.backends.InProcessSampler` both call it.
"""

from __future__ import annotations

import hashlib
import operator
import os
import platform
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import SamplingNet, split_output

LATENT_SCHEME = "medsynth/latent/v1"
MAX_SEED = 2**63 - 1
MAX_INDEX = 2**40
# Largest number of samples one generator pass (one request) may draw.
MAX_BATCH = 4096


def latent_seed(seed: int, index: int) -> int:
    """The ``torch.Generator`` seed of sample ``index`` of cohort ``seed`` (see the module docstring)."""
    digest = hashlib.sha256(f"{LATENT_SCHEME}:{check_seed(seed)}:{_check_index(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def sample_noise(seed: int, indices: Iterable[int], shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The noise tensors of samples ``indices``: one float32 CPU tensor ``(len(indices), *shape)`` per
    shape, row ``k`` for sample ``indices[k]``.

    Each row depends only on ``(seed, indices[k], shapes)``: drawing samples 3..5 gives the same rows
    as drawing 0..9 and keeping 3..5.
    """
    shapes = [tuple(_check_shape(s)) for s in shapes]
    if not shapes:
        raise InvalidInput("a sampling net needs at least one noise tensor.")
    idx = check_indices(indices)
    out = [torch.empty(len(idx), *shape, dtype=torch.float32) for shape in shapes]
    g = torch.Generator(device="cpu")
    for row, i in enumerate(idx):
        g.manual_seed(latent_seed(seed, i))
        for tensor, shape in zip(out, shapes):
            tensor[row] = torch.randn(shape, generator=g, dtype=torch.float32)
    return out


def generate(net: SamplingNet, seed: int, indices: Iterable[int], condition: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw samples ``indices`` of cohort ``seed`` in one pass of ``net``.

    Returns ``(images, masks)``: images ``(N, 1, S, S)`` float32 in [0, 1], masks ``(N, S, S)``
    uint8 class ids, row ``k`` for ``indices[k]``. The net must be in eval mode (batch-norm running
    statistics; in train mode a sample would depend on its batch mates). It runs on the device its
    parameters are on; ``condition`` is the class label of every sample (class-conditioned nets only).
    """
    if not isinstance(net, SamplingNet):
        raise InvalidInput(f"generate() needs a SamplingNet, got {type(net).__name__}.")
    if net.training:
        raise InvalidInput("the sampling net is in train mode; call .eval() before sampling.")
    idx = check_indices(indices)
    if len(idx) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} samples per generator pass, got {len(idx)}.")
    device = _device_of(net)
    noise = [n.to(device) for n in sample_noise(seed, idx, net.noise_shapes)]
    labels = torch.full((len(idx),), 0 if condition is None else int(condition), dtype=torch.int64, device=device)
    with torch.inference_mode():
        images, masks = split_output(net(noise, labels).float())
    images_np = np.ascontiguousarray(images.cpu().numpy(), dtype=np.float32)
    masks_np = np.ascontiguousarray(masks.to(torch.uint8).cpu().numpy())
    return images_np, masks_np


def _device_of(net: torch.nn.Module) -> torch.device:
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_shape(shape: object) -> Sequence[int]:
    if not isinstance(shape, (tuple, list)) or not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise InvalidInput(f"a noise shape must be a non-empty tuple of positive integers, got {shape!r}.")
    return shape


def configure_determinism() -> None:
    """Process-wide settings that make :func:`generate` repeatable: deterministic algorithms (warning
    only where an op has none), no cuDNN autotuning. Call before the first CUDA operation."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def runtime_info(device: torch.device | str | None = None) -> dict[str, str]:
    """Versions of the software that computes the pixels (and the device), for provenance."""
    import medsynth

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "medsynth": medsynth.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(dev)
            info["cuda"] = str(torch.version.cuda)
    return info


# --- validation ------------------------------------------------------------------------------------


def check_seed(seed: object) -> int:
    """``seed`` as an int in ``0..2**63-1``, else :class:`InvalidInput`."""
    value = _as_int(seed, "seed")
    if not 0 <= value <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}, got {value}.")
    return value


def check_indices(indices: object) -> list[int]:
    """``indices`` as a non-empty list of sample indices in ``0..2**40``, else :class:`InvalidInput`."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, range, np.ndarray, Iterable)):
        raise InvalidInput(f"indices must be a sequence of integers, got {type(indices).__name__}.")
    idx = [_check_index(i) for i in indices]  # type: ignore[union-attr]
    if not idx:
        raise InvalidInput("indices must not be empty.")
    return idx


def _check_index(index: object) -> int:
    value = _as_int(index, "sample index")
    if not 0 <= value <= MAX_INDEX:
        raise InvalidInput(f"sample index must be between 0 and {MAX_INDEX}, got {value}.")
    return value


def _as_int(value: object, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{what} must be an integer, got {value!r}.")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInput(f"{what} must be an integer, got {value!r}.") from None
