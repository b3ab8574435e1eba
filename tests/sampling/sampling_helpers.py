"""Shared test helpers for tests/sampling (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.generators.base import DataSpec, SampleMode, SamplingNet, prepare_data
from medsynth.generators.registry import FAMILIES, GeneratorSpec, parse_options, parse_training

REPO = Path(__file__).resolve().parents[2]
HANDLER_PATH = REPO / "services" / "sampler" / "handler.py"
MODEL_NAME = "medsynth-test-gen"
MODEL_VERSION = "1.0"
PROVENANCE = {"generator_id": "gen-test", "checkpoint": {"key": "ckpt/test.pt", "sha256": "0" * 64}, "dataset_version": 1}

# Small options of every family (image size 32, narrow networks): fast to build, trace and serve.
SMALL_OPTIONS: dict[str, dict] = {
    "joint-gan": {"base_channels": 8},
    "spade": {"latent_dim": 16, "base_channels": 8, "mask_latent_dim": 16, "mask_base_channels": 4, "mask_bank_size": 8},
    "diffusion": {"channels": [8, 16], "num_head_channels": 8, "train_timesteps": 50, "sample_steps": 4},
    "stylegan2": {"latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16, "mbstd_group": 2},
}
# Generators exported and served besides one of every family's defaults: variants with other samplers.
VARIANTS: dict[str, tuple[str, dict]] = {
    "diffusion-mask-conditioned": ("diffusion", {"variant": "mask-conditioned", "mask_bank_size": 8}),
}


@dataclass(frozen=True)
class SmallGenerator:
    """A random generator of one family: its spec, its sampling networks and the default sampling net."""

    spec: GeneratorSpec
    nets: dict[str, nn.Module]
    net: SamplingNet

    @property
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: net.state_dict() for name, net in self.nets.items()}


def small_generator(seed: int = 1234, *, family: str = "joint-gan", image_size: int = 32, mode: SampleMode = SampleMode(),
                    **options: object) -> SmallGenerator:
    """Random weights, wider than the initialisation of training (whose untrained images are a flat
    grey) and non-trivial batch-norm statistics, so samples have contrast. ``options`` override the
    family's small ones."""
    spec = small_spec(family, image_size, **options)
    images = np.random.default_rng(seed).random((8, 1, image_size, image_size)).astype(np.float32)
    masks = (images[:, 0] * 3).astype(np.uint8).clip(0, 2)
    data = prepare_data(images, masks, spec.data, torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = spec.family.init_state(spec.options, spec.training, data)
        nets = spec.family.sampling_nets(spec.options, spec.data)
        for name, net in nets.items():
            net.load_state_dict(state.nets[name].state_dict())
            _liven(net)
    for net in nets.values():
        net.eval()
    return SmallGenerator(spec, nets, spec.family.sampling_net(spec.options, spec.data, nets, mode).eval())


def small_spec(family: str, image_size: int = 32, **options: object) -> GeneratorSpec:
    """The spec of a small generator of ``family``: its small options with ``options`` on top, 3 classes."""
    return GeneratorSpec(parse_options({"family": family, **SMALL_OPTIONS[family], **options}), parse_training({"steps": 1}),
                         DataSpec(image_size, 3))


def _liven(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            module.weight.data.normal_(0.0, 0.1)
        if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None:
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def served_generators() -> dict[str, tuple[str, dict]]:
    """Archive name suffix → (family, options) of every small generator the TorchServe tests serve:
    each family's (``fam-<family>``) and each of :data:`VARIANTS` (``fam-<variant>``)."""
    return {**{family: (family, {}) for family in family_names()}, **VARIANTS}
