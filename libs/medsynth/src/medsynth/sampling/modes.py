"""A cohort's sampling mode (mask source, class condition), checked against a registered generator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import MaskSource, SampleMode
from medsynth.generators.registry import GeneratorSpec
from medsynth.generators.checkpoint import spec_from_v1_config


def sample_mode(registry: Mapping[str, Any], mask_source: str, condition: int | None,
                sample_steps: int | None = None, eta: float | None = None) -> SampleMode:
    """The cohort's sampling mode, checked against what the registered generator can do
    (:class:`InvalidInput` naming the problem: the job fails at once, nothing is written)."""
    try:
        source = MaskSource(mask_source or MaskSource.generated.value)
    except ValueError:
        raise InvalidInput(f"mask_source must be one of {[s.value for s in MaskSource]}, got {mask_source!r}.") from None
    mode = SampleMode(mask_source=source, condition=condition, sample_steps=sample_steps, eta=eta)
    spec = generator_spec(registry)
    spec.family.check_mode(spec.options, spec.data, mode)
    return mode


def generator_spec(registry: Mapping[str, Any]) -> GeneratorSpec:
    """The spec of a registered generator (entries written before generator families hold the first
    joint GAN's config instead, converted here)."""
    if "spec" in registry:
        return GeneratorSpec.from_dict(registry["spec"])
    return spec_from_v1_config(registry["config"])
