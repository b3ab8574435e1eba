"""The study request: a view, generator families, seeds, segmenters and arms."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

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
    model_config = ConfigDict(extra="forbid")
    models: list[SegmenterModel] = Field([SegmenterModel.unet, SegmenterModel.swin_unetr], min_length=1, max_length=2)
    steps: int = Field(600, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=2, le=1024)


class StudyCreate(BaseModel):
    """A grid of generator families × seeds × segmenters × arms on one prepared view."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    dataset: Id
    view_id: Id
    families: list[StudyFamily] = Field(min_length=1, max_length=8)
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, max_length=10, description="Each generator, cohort and segmenter per seed.")
    arms: StudyArms = Field(default_factory=StudyArms)
    segmentation: StudySegmentation = Field(default_factory=StudySegmentation)
    cohort_size: int = Field(1000, ge=2, le=100_000, description="Image + mask pairs sampled per generator and seed.")
    max_eval_samples: int = Field(2000, ge=2, le=50_000, description="Images per side for FID/KID and the audits.")

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
