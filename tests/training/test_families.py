"""What every registered family promises the seam: image sizes 64² and 128², a description, its own
options only, sampling nets that load the trained nets' weights, mode checks, and valid presets."""

from __future__ import annotations

import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import DataSpec, MaskSource, SampleMode, prepare_data
from medsynth.generators.presets import PRESETS, preset
from medsynth.generators.registry import FAMILIES, GeneratorSpec, parse_options, parse_training
from medsynth.sampling.generate import generate
from medsynth.training.loop import init_state

from training_data import TINY_OPTIONS, family_names, squares

FAMILY_NAMES = family_names()


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_draws_image_mask_pairs_at_64_and_128(family: str, size: int) -> None:
    spec = GeneratorSpec(parse_options({"family": family, **TINY_OPTIONS[family]}), parse_training({"steps": 1}), DataSpec(size, 3))
    images, masks = squares(4, size=size)
    state = init_state(spec, prepare_data(images, masks * 2, spec.data, torch.device("cpu")))
    nets = spec.family.sampling_nets(spec.options, spec.data)
    for name, net in nets.items():
        net.load_state_dict((state.ema.get(name) or state.nets[name]).state_dict(), strict=True)
        net.eval()
    for source in spec.family.mask_sources_for(spec.options):
        net = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode(mask_source=source))
        out_images, out_masks = generate(net, 1, range(2))
        assert out_images.shape == (2, 1, size, size) and out_masks.shape == (2, size, size)
        assert 0 <= out_images.min() and out_images.max() <= 1 and out_masks.max() < 3


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_describe_lists_options_with_defaults_and_rejects_other_families_options(family: str) -> None:
    info = FAMILIES[family].describe()
    assert info["family"] == family and info["options"] and "family" not in info["options"]
    assert info["mask_sources"][0] == "generated" and info["losses"] == list(FAMILIES[family].loss_names)
    foreign = next(name for other in FAMILY_NAMES if other != family
                   for name in FAMILIES[other].options_type.model_fields if name not in FAMILIES[family].options_type.model_fields)
    with pytest.raises(InvalidInput, match=f"{foreign}: Extra inputs are not permitted"):
        parse_options({"family": family, foreign: 1})


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_modes_a_generator_lacks_are_refused(family: str) -> None:
    spec = GeneratorSpec(parse_options({"family": family, **TINY_OPTIONS[family]}), parse_training({"steps": 1}), DataSpec(32, 2))
    with pytest.raises(InvalidInput, match="without class conditioning"):
        spec.family.check_mode(spec.options, spec.data, SampleMode(condition=0))
    if MaskSource.real_deformed not in spec.family.mask_sources_for(spec.options):
        with pytest.raises(InvalidInput, match="has no mask source 'real-deformed'"):
            spec.family.check_mode(spec.options, spec.data, SampleMode(mask_source=MaskSource.real_deformed))
    if not spec.family.iterative:
        with pytest.raises(InvalidInput, match="samples in one pass"):
            spec.family.check_mode(spec.options, spec.data, SampleMode(sample_steps=10))
    with pytest.raises(InvalidInput, match=r"makes images of .* not 48"):
        GeneratorSpec(spec.options, spec.training, DataSpec(48, 2))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_spec_whose_cohort_mask_source_it_has(name: str) -> None:
    chosen = preset(name)
    spec = GeneratorSpec(parse_options(chosen["generator"]), parse_training({**chosen["training"], "steps": 100_000}), DataSpec(64, 3))
    assert MaskSource(chosen["cohort"]["mask_source"]) in spec.family.mask_sources_for(spec.options)
