"""A trained generator's registry entry (``generators/<id>/generator.json``): what it is, what it was
trained on, where its checkpoint and TorchServe archive are, and what the run measured.

Entries are read back by sampling, evaluation, the bench and the command line, so they are typed and
validated on every read (:func:`load_entry`). Entries written by older versions still load:

* Format 1, the first joint GAN (before generator families): ``config`` instead of ``spec``; no
  ``mask_sources``, ``condition_on``, ``device``, ``steps_done``, ``stopped_by_time_budget`` or ``stages``.
* Format 2, generator families: ``spec``, ``mask_sources``, ``condition_on``, ``device``.
* Format 3: ``steps_done`` and ``stopped_by_time_budget``. Format 4 (today's): ``stages``.

What an old entry lacks gets the value that was true when it was written: :data:`LEGACY_FAMILY`
drew its masks itself, unconditioned; a run without a time budget did every step it was asked for,
in one stage. An entry that is not valid even so names the field at fault.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsynth.core.errors import InvalidInput, describe_invalid
from medsynth.generators.base import MaskSource
from medsynth.generators.checkpoint import spec_from_v1_config
from medsynth.generators.registry import GeneratorSpec
from medsynth.store.base import ObjectStore

#: The family of entries that name none: every generator before families were added was this one.
LEGACY_FAMILY = "joint-gan"


class GeneratorEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    generator_id: str
    family: str = LEGACY_FAMILY
    spec: dict[str, Any] | None = Field(None, description="GeneratorSpec.to_dict(); format 1 entries hold config instead.")
    config: dict[str, Any] | None = Field(None, description="Format 1 only: the first joint GAN's config.")
    mask_sources: list[MaskSource] = Field(default_factory=lambda: [MaskSource.generated])
    condition_on: str | None = None
    dataset: str
    dataset_version: int
    view_id: str
    checkpoint_key: str
    archive_key: str
    model_name: str
    weights_fingerprint: str
    steps_done: int = Field(description="Training steps completed. Entries before time budgets (formats 1, 2) ran every step "
                                        "they were asked for, and get that number.")
    stopped_by_time_budget: bool = False
    resumed_from: int | None = None
    device: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    curves_key: str
    registered_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _steps_of_runs_without_budgets(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "steps_done" not in raw:
            asked = (raw.get("spec") or {}).get("training") or raw.get("config") or {}
            if isinstance(asked, dict) and "steps" in asked:
                return {**raw, "steps_done": asked["steps"]}
        return raw

    @model_validator(mode="after")
    def _spec_or_config(self) -> GeneratorEntry:
        if self.spec is None and self.config is None:
            raise ValueError("an entry needs a spec (or, written before generator families, a config)")
        return self

    def generator_spec(self) -> GeneratorSpec:
        """The generator's spec; a format 1 entry's config is converted."""
        return GeneratorSpec.from_dict(self.spec) if self.spec is not None else spec_from_v1_config(self.config or {})

    def stored(self) -> dict[str, Any]:
        """The JSON written to the store (no ``config``: only format 1 entries have one)."""
        return self.model_dump(mode="json", exclude={"config"} if self.config is None else set())

    def options(self) -> dict[str, Any] | None:
        """The family's options as they were asked for (format 1: the config)."""
        return self.spec.get("options") if self.spec is not None else self.config


def entry_key(generator_id: str) -> str:
    return f"generators/{generator_id}/generator.json"


def parse_entry(raw: Any, where: str) -> GeneratorEntry:
    """``raw`` as an entry; :class:`InvalidInput` naming ``where`` and each field at fault."""
    try:
        return GeneratorEntry.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"generator entry {where} is not valid: {describe_invalid(exc, whole='entry')}") from None


def load_entry(store: ObjectStore, key: str) -> GeneratorEntry:
    """The entry stored at ``key`` (a generator job's result key ``generator``)."""
    return parse_entry(store.get_json(key), key)
