"""Exports that run on the GPU: every family's sampling net traced on the CPU (as the archive traces it)
holds no constant of the CPU — no ``prim::Constant[value="cpu"]`` device argument and no tensor constant —
so ``torch.jit.load(map_location="cuda")`` gives a module that runs on the GPU (tests/cuda loads one there).
Constants are non-persistent buffers (checkpoints and state dicts unchanged), and MONAI's timestep
embedding is swapped for an equal device-free one while tracing only."""

from __future__ import annotations

import re

import pytest
import torch

from medsynth.generators.base import DataSpec, MaskSource, SampleMode
from medsynth.generators.diffusion import timestep_embedding
from medsynth.generators.registry import GeneratorSpec, parse_options, parse_training
from medsynth.models.stylegan2 import Discriminator, Generator
from medsynth.sampling.archive import trace_sampling_net
from medsynth.sampling.generate import sample_noise
from training_data import TINY_OPTIONS

CASES = {
    "joint-gan": ("joint-gan", {}),
    "spade": ("spade", {}),
    "stylegan2-conditional": ("stylegan2", {"conditional": True}),
    "diffusion": ("diffusion", {}),
    "diffusion-mask-conditioned": ("diffusion", {"variant": "mask-conditioned"}),
    "diffusion-latent": ("diffusion", {"latent": True, "autoencoder_channels": [8, 8], "latent_channels": 2, "autoencoder_steps": 1}),
}
DEVICE_CONSTANT = re.compile(r'Device = prim::Constant\[value="(cpu|cuda[^"]*)"\]')


def _nets(family: str, options: dict):
    conditions = 3 if options.get("conditional") else 0
    spec = GeneratorSpec(parse_options({"family": family, **TINY_OPTIONS[family], **options}), parse_training({"steps": 4}),
                         DataSpec(32, 2, conditions))
    torch.manual_seed(0)
    nets = spec.family.sampling_nets(spec.options, spec.data)
    if "autoencoder" in nets:
        nets["autoencoder"].scale_factor.fill_(1.0)
    if "mask_bank" in nets:
        nets["mask_bank"].masks = torch.randint(0, 2, (4, 32, 32), dtype=torch.uint8)
    return spec, nets, (0 if conditions else None)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated:FutureWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_cpu_trace_holds_no_constant_of_the_cpu(case: str) -> None:
    spec, nets, condition = _nets(*CASES[case])
    for source in spec.family.mask_sources_for(spec.options):
        net = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode(mask_source=source, condition=condition))
        traced = trace_sampling_net(net)
        graph = str(traced.inlined_graph)
        assert not DEVICE_CONSTANT.findall(graph), (case, source, [l.strip() for l in graph.splitlines() if DEVICE_CONSTANT.search(l)][:5])
        assert "prim::Constant[value=<Tensor>]" not in graph, (case, source)  # tensor constants stay on the tracing device
        noise = sample_noise(5, range(2), net.noise_shapes)  # the example's batch: StyleGAN2's grouped convolution
        cond = torch.full((2,), condition or 0, dtype=torch.int64)  # traces with its batch size as a constant
        with torch.no_grad():
            assert torch.equal(traced(noise, cond), net(noise, cond)), (case, source)


def test_the_device_free_timestep_embedding_is_monais_bit_for_bit_and_only_swapped_in_while_tracing() -> None:
    from monai.networks.nets import diffusion_model_unet

    original = diffusion_model_unet.get_timestep_embedding
    t = torch.tensor([0, 1, 17, 499, 999])
    for dim in (8, 15, 32, 128):
        assert torch.equal(timestep_embedding(t, dim), original(t, dim))
    spec, nets, _ = _nets("diffusion", {})
    net = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode(mask_source=MaskSource.generated))
    with net.tracing():
        assert diffusion_model_unet.get_timestep_embedding is timestep_embedding
    assert diffusion_model_unet.get_timestep_embedding is original


def test_stylegan2_filters_are_buffers_outside_the_state_dict() -> None:
    """The FIR taps and style-mixing indices move with the module and cost no copy per call, and stored
    checkpoints (whose state dicts never had them) still load strictly."""
    g = Generator(32, 2, latent_dim=8, style_dim=8, mapping_layers=1, channel_base=256, channel_max=16)
    d = Discriminator(32, 3, channel_base=256, channel_max=16)
    for net in (g, d):
        names = {name for name, _ in net.named_buffers()}
        assert names and not names & set(net.state_dict()), names
    assert {"layer_index", "synthesis.fir", "synthesis.layers.1.fir"} <= {name for name, _ in g.named_buffers()}
    fresh = Generator(32, 2, latent_dim=8, style_dim=8, mapping_layers=1, channel_base=256, channel_max=16)
    fresh.load_state_dict(g.state_dict(), strict=True)
    assert g.to(torch.float64).synthesis.fir.dtype == torch.float64
