"""What a client asks for: the request body of each job kind, and the bounds of ids, names and seeds.

Bodies are checked here (pydantic: types, ranges, cross-field rules) and against the store by
:mod:`medsynth.commands.build`, which turns each into its job's command. The REST routes and the
study runner take the same bodies.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medsynth.generators.base import MAX_SEED, MaskSource, TrainingOptions
from medsynth.generators.registry import AnyFamilyOptions, default_options
from medsynth.sampling.gate import GateOptions

# Bounds of what a request may carry: ids and names are short, numbers fit the protobuf fields
# (uint32 / uint64) and the seed rule, so that no valid request fails later as a 500.
Id = Annotated[str, Field(min_length=1, max_length=200, description="A job, dataset or view id.")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Random seed (0 to 2^63 - 1).")]
UINT32_MAX = 2**32 - 1


class ViewMode(str, Enum):
    slices2d = "slices2d"
    patches3d = "patches3d"


class PrepareDatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(0, ge=0, le=UINT32_MAX, description="Dataset version; 0 = the newest at submission time.")
    mode: ViewMode = ViewMode.slices2d
    size: int = Field(64, ge=8, le=1024, description="Edge length of each slice or patch, in voxels.")
    axis: int = Field(2, ge=0, le=2, description="Slicing axis in RAS orientation (2 = axial).")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: Seed = 0
    keep_empty: bool = Field(False, description="Keep slices/patches without any foreground label, in every split.")
    keep_empty_eval: bool = Field(
        True, description="Keep them in the val and test splits whatever keep_empty says, so that segmenters are selected and "
                          "tested on whole patients (a false positive on an empty slice counts). False: as keep_empty.")
    unlabeled: Literal["include", "exclude"] = Field(
        "include", description="Scans without a label map: include (every slice kept, flagged unlabeled: the view counts them, and "
                               "jobs that need masks refuse a view whose splits hold any) or exclude (left out of the view, listed in it).")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="1-64 letters, digits, '.', '_', '-'.")]


class ConditionOn(str, Enum):
    none = "none"
    slice_position = "slice-position"  # thirds of each scan's slices: 0 inferior, 1 middle, 2 superior


class GeneratorCreate(BaseModel):
    """Train a generator of any family on a prepared view's training split."""

    model_config = ConfigDict(extra="forbid")

    dataset: Id
    view_id: Id
    generator: AnyFamilyOptions = Field(
        default_factory=default_options,
        description="The family (`family`) and its options; `GET /v1/generator-families` lists both.",
    )
    training: TrainingOptions = Field(default_factory=lambda: TrainingOptions(), description="Options of the training loop.")
    condition_on: ConditionOn = Field(ConditionOn.none, description="Class labels for class-conditioned families.")


class OutputFormat(str, Enum):
    nifti = "nifti"
    png = "png"
    dicom = "dicom"  # each sample a DICOM image (synthetic identity) and its mask a DICOM-SEG


class CohortCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generator_id: Id
    count: int = Field(ge=1, le=100_000, description="Number of image + mask pairs.")
    seed: Seed = 0
    formats: list[OutputFormat] = Field(default_factory=lambda: [OutputFormat.nifti, OutputFormat.png])
    batch_size: int = Field(64, ge=1, le=4096)
    mask_source: MaskSource = Field(
        MaskSource.generated,
        description="generated: masks drawn by the generator; real-deformed (families that have it): training "
        "patients' masks under random deformation — the manifest then says the masks derive from training patients.",
    )
    condition: int | None = Field(None, ge=0, le=UINT32_MAX, description="Class label, for generators trained with condition_on.")
    sample_steps: int | None = Field(None, ge=1, le=4000, description="Diffusion: denoising steps (default: the generator's).")
    eta: float | None = Field(None, ge=0, le=1, description="Diffusion with DDIM: η (default: the generator's).")
    release: GateOptions = Field(
        default_factory=GateOptions,
        description="The memorization gate every cohort passes before release: report, filter (default) or block.",
    )


class SegmentationSource(str, Enum):
    real = "real"
    synthetic = "synthetic"
    mixed = "mixed"


class SegmentationCreate(BaseModel):
    """Train a 2D segmenter and test it on the view's held-out real patients."""

    model_config = ConfigDict(extra="forbid")
    dataset: Id
    view_id: Id
    source: SegmentationSource = SegmentationSource.real
    cohort_id: Id | None = Field(None, description="Required for synthetic and mixed training.")
    synthetic_ratio: float = Field(0.5, ge=0, le=1, description="Mixed: share of each batch drawn from the cohort.")
    synthetic_patients: int | None = Field(
        None, ge=1, le=100_000,
        description="Mixed: real data plus this many patients' worth of synthetic slices (the cohort's first N x the view's "
                    "training slices per patient); batches draw from the union uniformly, so the synthetic share follows the "
                    "pool sizes and synthetic_ratio is not used.",
    )
    augment: bool = False
    model: str = Field("unet", pattern="^(unet|swin-unetr)$")
    steps: int = Field(600, ge=1, le=1_000_000, description="Optimiser steps; with early_stopping, the most it may take.")
    batch_size: int = Field(32, ge=1, le=1024)
    seed: Seed = 0
    early_stopping: bool = Field(
        False, description="Stop once the Dice on the real validation patients has not improved for `patience` checks "
                           "(not before `min_steps`); the best-validation weights are tested either way. False: train all `steps`.")
    val_every: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Steps between validation checks (and one after the last step). Default max(1, steps // 10); "
                    "with early_stopping at most 100.")
    patience: int | None = Field(None, ge=1, le=10_000,
                                 description="Early stopping: validation checks without improvement before it stops (default 5).")
    min_steps: int = Field(0, ge=0, le=1_000_000, description="Early stopping: never stop before this step.")
    min_delta: float = Field(0.0, ge=0, lt=1, description="Early stopping: the validation Dice gain that counts as an improvement.")

    @field_validator("val_every", "min_steps")
    @classmethod
    def _within_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        steps = info.data.get("steps")
        if value is not None and steps is not None and value > steps:
            raise ValueError(f"{info.field_name} ({value}) must not exceed steps ({steps})")
        return value

    @field_validator("patience", "min_steps", "min_delta")
    @classmethod
    def _only_with_early_stopping(cls, value: Any, info: ValidationInfo) -> Any:
        # validators run on the values a client sent, not on defaults; a default sent explicitly is fine
        if value != cls.model_fields[info.field_name].default and not info.data.get("early_stopping", False):
            raise ValueError(f"{info.field_name} applies to early stopping only: set early_stopping true")
        return value

    @model_validator(mode="after")
    def _patients_only_when_mixed(self) -> SegmentationCreate:
        if self.synthetic_patients is not None and self.source is not SegmentationSource.mixed:
            raise ValueError(f"synthetic_patients adds synthetic data to real data: it needs source mixed, not {self.source.value}")
        return self


class EvaluationCreate(BaseModel):
    """Score a cohort against the real data its generator learned from."""

    model_config = ConfigDict(extra="forbid")
    cohort_id: Id
    segmentation_run_ids: list[Id] = Field(default_factory=list, max_length=64, description="Runs to put in the utility table.")
    max_samples: int = Field(2000, ge=2, le=50_000)
    reference_run_id: Id | None = Field(
        None, description="A finished real-only segmentation run on the generator's dataset and view whose encoder extracts the "
                          "FID/KID and precision/recall features: the fixed yardstick every cohort compared should share. "
                          "Default: the real-only run among segmentation_run_ids (the results name which run it was).")
