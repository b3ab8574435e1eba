"""The study request: a view, generator families, seeds, segmenters and arms."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medsynth.commands.requests import ConditionOn, Id, Name, Seed
from medsynth.generators.base import MaskSource, TrainingOptions
from medsynth.generators.registry import AnyFamilyOptions

Ratio = Annotated[float, Field(gt=0, lt=1, description="Share of each training batch drawn from the synthetic cohort.")]


class SegmenterModel(str, Enum):
    unet = "unet"
    swin_unetr = "swin-unetr"


class StudyFamily(BaseModel):
    """One generator of the grid: trained once per seed, then sampled into a cohort per seed."""

    model_config = ConfigDict(extra="forbid")
    label: Name | None = Field(None, description="How tables name it; default the family's name (labels must differ).")
    generator: AnyFamilyOptions
    training: TrainingOptions = Field(default_factory=lambda: TrainingOptions())
    condition_on: ConditionOn = ConditionOn.none
    mask_source: MaskSource = Field(MaskSource.generated, description="Where its cohort's masks come from.")

    @property
    def name(self) -> str:
        return self.label or self.generator.family


class StudyArms(BaseModel):
    """What each segmenter is trained on besides real data only, which every study has (the baseline of
    relative Dice, and the encoder FID is measured with); every arm is tested on the view's held-out
    real patients."""

    model_config = ConfigDict(extra="forbid")
    synthetic: bool = Field(True, description="One family's cohort only.")
    ratios: list[Ratio] = Field([0.25, 0.5, 0.75], max_length=9, description="Real + synthetic, at these shares of each batch.")
    synthetic_patients: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        [], max_length=9,
        description="Real + N patients' worth of synthetic slices, for each N (seed 001's axis); the cohort must hold the largest.")
    augmentation: list[bool] = Field([False], min_length=1, max_length=2,
                                     description="Classical augmentation off ([false]), on ([true]) or both.")

    @model_validator(mode="after")
    def _distinct(self) -> StudyArms:
        for name in ("ratios", "synthetic_patients", "augmentation"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name} must not repeat a value")
        return self


class StudySegmentation(BaseModel):
    """How every segmenter of the study trains: one rule for all arms, real-only included.

    With ``early_stopping`` (the default) each run stops at its own plateau of the Dice on the real
    validation patients, with ``steps`` as the cap, and is tested with its best-validation weights:
    the real-only baseline (the denominator of relative Dice) is then trained as far as validation
    says it still gains, not cut off at a step count where it is still climbing, and every other arm
    gets the same chance. False: every run trains exactly ``steps`` (studies before early stopping).
    """

    model_config = ConfigDict(extra="forbid")
    models: list[SegmenterModel] = Field([SegmenterModel.unet, SegmenterModel.swin_unetr], min_length=1, max_length=2)
    steps: int = Field(5000, ge=1, le=1_000_000, description="Optimiser steps; with early_stopping, the cap.")
    batch_size: int = Field(32, ge=2, le=1024)
    early_stopping: bool = Field(True, description="Every arm stops at its validation plateau (same rule for all).")
    patience: int | None = Field(None, ge=1, le=10_000, description="Early stopping: checks without improvement (default 5).")
    val_every: int | None = Field(None, ge=1, le=1_000_000,
                                  description="Steps between validation checks; default max(1, steps // 10), with early stopping at most 100.")
    min_steps: int = Field(0, ge=0, le=1_000_000, description="Early stopping: never stop before this step.")

    @model_validator(mode="after")
    def _consistent(self) -> StudySegmentation:
        for name in ("val_every", "min_steps"):
            value = getattr(self, name)
            if value is not None and value > self.steps:
                raise ValueError(f"segmentation {name} ({value}) must not exceed steps ({self.steps})")
        if not self.early_stopping and (self.patience is not None or self.min_steps):
            raise ValueError("segmentation patience and min_steps apply to early stopping only: set early_stopping true")
        return self

    def request_fields(self) -> dict[str, Any]:
        """The fields of each segmentation request that carry this training rule; the early-stopping
        ones only when it is on (so a fixed-step study asks for exactly what it asked before)."""
        out: dict[str, Any] = {"steps": self.steps, "batch_size": self.batch_size}
        if self.val_every is not None:
            out["val_every"] = self.val_every
        if self.early_stopping:
            out["early_stopping"] = True
            out["min_steps"] = self.min_steps
            if self.patience is not None:
                out["patience"] = self.patience
        return out


class StudyCreate(BaseModel):
    """A grid of generator families × seeds × segmenters × arms on one prepared view."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    dataset: Id
    view_id: Id
    families: list[StudyFamily] = Field(min_length=1, max_length=12)
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, max_length=10, description="Each generator, cohort and segmenter per seed.")
    arms: StudyArms = Field(default_factory=StudyArms)
    segmentation: StudySegmentation = Field(default_factory=StudySegmentation)
    cohort_size: int = Field(1000, ge=2, le=100_000, description="Image + mask pairs sampled per generator and seed.")
    max_eval_samples: int = Field(2000, ge=2, le=50_000, description="Images per side for FID/KID and the audits.")
    fid_extractor: Literal["study", "per-seed"] = Field(
        "study", description="study: every evaluation measures FID/KID and precision/recall through ONE encoder, that of the "
                             "first seed's real-only run (first segmenter model, first augmentation setting), so that families "
                             "and seeds are scored with the same yardstick; per-seed: each seed's own real-only run (studies "
                             "recorded before this field), whose FIDs do not compare across seeds.")

    @classmethod
    def from_record(cls, spec: dict[str, Any]) -> StudyCreate:
        """The request a study record holds (``StudyRecord.spec``, a dump of this model). A record written
        before early stopping has no ``segmentation.early_stopping``: its runs trained for their steps,
        and the rest of them must too (not the new default), so that one study keeps one rule and its
        jobs keep their keys. Likewise a record written before one FID extractor per study has no
        ``fid_extractor``: its evaluations keep their per-seed extractors (and their keys)."""
        segmentation = spec.get("segmentation")
        if isinstance(segmentation, dict) and "early_stopping" not in segmentation:
            spec = {**spec, "segmentation": {**segmentation, "early_stopping": False}}
        if "fid_extractor" not in spec:
            spec = {**spec, "fid_extractor": "per-seed"}
        return cls.model_validate(spec)

    @model_validator(mode="after")
    def _grid(self) -> StudyCreate:
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ValueError(f"family labels must differ (set label to tell two {names} apart)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must not repeat")
        if len(set(self.segmentation.models)) != len(self.segmentation.models):
            raise ValueError("segmentation models must not repeat")
        if not (self.arms.synthetic or self.arms.ratios or self.arms.synthetic_patients):
            raise ValueError("a study compares arms and this one has only real data: ask for synthetic, ratios or synthetic_patients")
        return self
