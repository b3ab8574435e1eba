"""The registry of generator families by name, and :class:`GeneratorSpec`: family + options +
training options + data — everything that says what a generator is, as stored in checkpoints,
exports, registry entries and cohort manifests.

Adding a family: write its module (a :class:`~medsynth.generators.base.GeneratorFamily` subclass with
its options model), add one line to :data:`FAMILIES`, a message to ``protos/medsynth/v1/jobs.proto``'s
``TrainGenerator.family`` oneof, and its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from medsynth.core.errors import InvalidInput, describe_invalid
from medsynth.generators.base import DataSpec, FamilyOptions, GeneratorFamily, TrainingOptions
from medsynth.generators.diffusion import Diffusion
from medsynth.generators.joint import JointGan
from medsynth.generators.spade import Spade
from medsynth.generators.stylegan2 import StyleGan2

FAMILIES: dict[str, GeneratorFamily] = {
    family.name: family
    for family in (
        JointGan(),
        Spade(),
        StyleGan2(),
        Diffusion(),
    )
}

# The REST and spec form of a family's options: a union discriminated on ``family``.
AnyFamilyOptions = Annotated[Union[tuple(f.options_type for f in FAMILIES.values())], Field(discriminator="family")]  # noqa: UP007
_OPTIONS = TypeAdapter(AnyFamilyOptions)


def default_options() -> FamilyOptions:
    """The options a request that names no family gets: the first registered family's defaults."""
    return next(iter(FAMILIES.values())).options_type()


def get_family(name: str) -> GeneratorFamily:
    """The family registered as ``name``; :class:`InvalidInput` naming the known ones otherwise."""
    family = FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise InvalidInput(f"unknown generator family {name!r}; known: {sorted(FAMILIES)}.")
    return family


def parse_options(data: Mapping[str, Any] | FamilyOptions) -> FamilyOptions:
    """A family's options from plain data (``family`` names the family); errors name the bad field."""
    if isinstance(data, FamilyOptions):
        return data
    if not isinstance(data, Mapping):
        raise InvalidInput(f"generator options must be a mapping, got {type(data).__name__}.")
    get_family(data.get("family"))  # an unknown family reads better than pydantic's tag error
    try:
        return _OPTIONS.validate_python(dict(data))
    except ValidationError as exc:
        raise InvalidInput(f"invalid {data.get('family')} options: {describe_invalid(exc, skip=1, whole='options')}") from None


def parse_training(data: Mapping[str, Any] | TrainingOptions) -> TrainingOptions:
    if isinstance(data, TrainingOptions):
        return data
    try:
        return TrainingOptions.model_validate(dict(data))
    except (ValidationError, TypeError, ValueError) as exc:
        detail = describe_invalid(exc, whole="options") if isinstance(exc, ValidationError) else str(exc)
        raise InvalidInput(f"invalid training options: {detail}") from None


@dataclass(frozen=True)
class GeneratorSpec:
    """What a generator is: its family and options, the training options (resolved: learning rates and
    betas filled from the family's defaults) and the data it learns to produce. Validated on construction."""

    options: FamilyOptions
    training: TrainingOptions
    data: DataSpec

    def __post_init__(self) -> None:
        family = get_family(self.options.family)
        family.check(self.options, self.data)
        defaults = family.default_training(self.options)
        filled = {k: tuple(v) if k == "betas" else v for k, v in defaults.items() if getattr(self.training, k) is None}
        if filled:
            object.__setattr__(self, "training", self.training.model_copy(update=filled))
        family.check_training(self.options, self.training)

    @property
    def family(self) -> GeneratorFamily:
        return get_family(self.options.family)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {
            "family": self.options.family,
            "options": self.options.model_dump(mode="json"),
            "training": self.training.resolved(),
            "data": self.data.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorSpec:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a generator spec must be a mapping, got {type(data).__name__}.")
        missing = sorted({"family", "options", "training", "data"} - set(data))
        if missing:
            raise InvalidInput(f"generator spec is missing {missing}.")
        options = parse_options(data["options"])
        if options.family != data["family"]:
            raise InvalidInput(f"generator spec names family {data['family']!r} but its options are {options.family!r}.")
        return cls(options=options, training=parse_training(data["training"]), data=DataSpec.from_dict(data["data"]))
