"""A cohort's sampling mode (mask source, class condition), checked against a registered generator."""

from __future__ import annotations

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import MaskSource, SampleMode
from medsynth.generators.entry import GeneratorEntry


def sample_mode(entry: GeneratorEntry, mask_source: str, condition: int | None,
                sample_steps: int | None = None, eta: float | None = None) -> SampleMode:
    """The cohort's sampling mode, checked against what the registered generator can do
    (:class:`InvalidInput` naming the problem: the job fails at once, nothing is written)."""
    try:
        source = MaskSource(mask_source or MaskSource.generated.value)
    except ValueError:
        raise InvalidInput(f"mask_source must be one of {[s.value for s in MaskSource]}, got {mask_source!r}.") from None
    mode = SampleMode(mask_source=source, condition=condition, sample_steps=sample_steps, eta=eta)
    spec = entry.generator_spec()
    spec.family.check_mode(spec.options, spec.data, mode)
    return mode
