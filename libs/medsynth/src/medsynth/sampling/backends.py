"""One sampling interface, two backends: TorchServe, or the generator in this process.

Both compute pixels with :func:`medsynth.sampling.generate.generate` under the same determinism
settings, so for the same weights, seed, indices (drawn as one batch), device model and software
versions they give identical bits. (Not across devices: a CUDA GPU's TF32 and cuDNN convolutions differ
from the CPU's in the last bits, and two GPU models may pick different kernels.)
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from medsynth.generators.base import SampleMode
from medsynth.generators.registry import GeneratorSpec
from medsynth.sampling.archive import net_weights, weights_fingerprint
from medsynth.sampling.generate import LATENT_SCHEME, check_indices, check_seed, generate, runtime_info
from medsynth.sampling.torchserve import SamplerUnavailable, TorchServeClient

log = logging.getLogger(__name__)

__all__ = ["InProcessSampler", "Sampler", "SamplerUnavailable", "TorchServeSampler"]


class Sampler(ABC):
    """Draws samples of a cohort seed in one sampling mode. Implementations must be deterministic: the
    same ``(seed, indices)`` gives the same bits every time."""

    @abstractmethod
    def draw(self, seed: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``indices`` of ``seed`` in one generator pass: images ``(N, 1, S, S)`` float32 in
        [0, 1] and masks ``(N, S, S)`` uint8, row ``k`` for ``indices[k]``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Provenance of the samples: ``backend``, ``generator`` (the spec: family, options, training,
        data), ``mode``, ``noise_shapes``, ``weights_fingerprint``, ``latent_scheme`` and ``software``
        (versions and device of whatever computes the pixels)."""


class InProcessSampler(Sampler):
    """Runs a family's sampling net here, over ``nets`` (put in eval mode; moved to ``device`` if given).

    A process that samples with it calls :func:`~medsynth.sampling.generate.configure_determinism` first,
    as the TorchServe handler does (the sample-cohort handler does): the settings are process-wide, so
    the constructor leaves that to the process."""

    def __init__(self, spec: GeneratorSpec, nets: dict[str, torch.nn.Module], mode: SampleMode = SampleMode(),
                 *, device: torch.device | str | None = None) -> None:
        if device is not None:
            nets = {name: net.to(device) for name, net in nets.items()}
        self.spec = spec
        self.mode = mode
        self.net = spec.family.sampling_net(spec.options, spec.data, nets, mode).eval()
        self.device = torch.device(device) if device is not None else _device(nets)
        self._fingerprint = weights_fingerprint(net_weights(nets))

    def draw(self, seed: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        return generate(self.net, seed, indices, self.mode.condition)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "in-process",
            "generator": self.spec.to_dict(),
            "mode": self.mode.to_dict(),
            "noise_shapes": [list(s) for s in self.net.noise_shapes],
            "weights_fingerprint": self._fingerprint,
            "latent_scheme": LATENT_SCHEME,
            "software": runtime_info(self.device),
        }


def _device(nets: dict[str, torch.nn.Module]) -> torch.device:
    for net in nets.values():
        for tensor in (*net.parameters(), *net.buffers()):
            return tensor.device
    return torch.device("cpu")


class TorchServeSampler(Sampler):
    """Asks the medsynth handler of model ``model_name`` on a TorchServe server, in sampling ``mode``.
    Unreachable or failing servers raise :class:`SamplerUnavailable`."""

    def __init__(self, client: TorchServeClient, model_name: str, mode: SampleMode = SampleMode()) -> None:
        self.client = client
        self.model_name = model_name
        self.mode = mode
        self._description: dict[str, Any] | None = None

    def draw(self, seed: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices)
        images, masks = self.client.infer(self.model_name, {**_payload(check_seed(seed), idx), **self.mode.to_dict()})
        _check_shapes(images, masks, len(idx), self.client.inference_url)
        return images, masks

    def describe(self) -> dict[str, Any]:
        if self._description is None:
            answer = self.client.describe(self.model_name, self.mode.to_dict())
            self._description = {
                "backend": "torchserve",
                "model_name": self.model_name,
                "model_version": answer.get("version"),
                "inference_url": self.client.inference_url,
                "generator": answer.get("generator"),
                "mode": answer.get("mode"),
                "noise_shapes": answer.get("noise_shapes"),
                "weights_fingerprint": answer.get("weights_fingerprint"),
                "weights_sha256": answer.get("weights_sha256"),
                "latent_scheme": answer.get("latent_scheme"),
                "software": answer.get("software"),
            }
        return dict(self._description)


def _payload(seed: int, idx: list[int]) -> dict[str, Any]:
    """A contiguous run is sent as start/count, anything else as an explicit index list."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return {"seed": seed, "start": idx[0], "count": len(idx)}
    return {"seed": seed, "indices": idx}


def _check_shapes(images: np.ndarray, masks: np.ndarray, n: int, url: str) -> None:
    ok = (
        images.dtype == np.float32
        and masks.dtype == np.uint8
        and images.ndim == 4
        and images.shape[:2] == (n, 1)
        and masks.shape == (n, *images.shape[2:])
    )
    if not ok:
        raise SamplerUnavailable(
            f"TorchServe at {url} returned images {images.dtype}{images.shape} and masks {masks.dtype}{masks.shape}; "
            f"expected float32 ({n}, 1, S, S) and uint8 ({n}, S, S)."
        )
