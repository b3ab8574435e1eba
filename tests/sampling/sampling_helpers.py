"""Shared test helpers for tests/sampling (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from medsynth.models.gan import Generator, GeneratorConfig, init_weights

REPO = Path(__file__).resolve().parents[2]
HANDLER_PATH = REPO / "services" / "sampler" / "handler.py"
MODEL_NAME = "medsynth-test-gen"
MODEL_VERSION = "1.0"
PROVENANCE = {"generator_id": "gen-test", "checkpoint": {"key": "ckpt/test.pt", "sha256": "0" * 64}, "dataset_version": 1}


def small_generator(seed: int = 1234, *, image_size: int = 32) -> Generator:
    """A random generator small enough to be fast. Wider weights than the DCGAN init (whose untrained
    images are a flat grey) and non-trivial batch-norm statistics, so samples have contrast."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(GeneratorConfig(image_size=image_size, base_channels=8))
        generator.apply(init_weights)
        for module in generator.modules():
            if isinstance(module, torch.nn.ConvTranspose2d):
                module.weight.data.normal_(0.0, 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return generator.eval()
