from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    PREPARE_DATASET: _ClassVar[JobKind]
    TRAIN_GENERATOR: _ClassVar[JobKind]
    SAMPLE_COHORT: _ClassVar[JobKind]
    TRAIN_SEGMENTER: _ClassVar[JobKind]
    EVALUATE: _ClassVar[JobKind]

class ViewMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIEW_MODE_UNSPECIFIED: _ClassVar[ViewMode]
    SLICES_2D: _ClassVar[ViewMode]
    PATCHES_3D: _ClassVar[ViewMode]
JOB_KIND_UNSPECIFIED: JobKind
PREPARE_DATASET: JobKind
TRAIN_GENERATOR: JobKind
SAMPLE_COHORT: JobKind
TRAIN_SEGMENTER: JobKind
EVALUATE: JobKind
VIEW_MODE_UNSPECIFIED: ViewMode
SLICES_2D: ViewMode
PATCHES_3D: ViewMode

class PrepareDataset(_message.Message):
    __slots__ = ("dataset", "version", "mode", "size", "axis", "val_fraction", "test_fraction", "seed", "keep_empty", "keep_empty_eval", "unlabeled")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KEEP_EMPTY_FIELD_NUMBER: _ClassVar[int]
    KEEP_EMPTY_EVAL_FIELD_NUMBER: _ClassVar[int]
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    mode: ViewMode
    size: int
    axis: int
    val_fraction: float
    test_fraction: float
    seed: int
    keep_empty: bool
    keep_empty_eval: bool
    unlabeled: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[ViewMode, str]] = ..., size: _Optional[int] = ..., axis: _Optional[int] = ..., val_fraction: _Optional[float] = ..., test_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., keep_empty: _Optional[bool] = ..., keep_empty_eval: _Optional[bool] = ..., unlabeled: _Optional[str] = ...) -> None: ...

class TrainingOptions(_message.Message):
    __slots__ = ("steps", "batch_size", "lr_g", "lr_d", "betas", "ema_decay", "checkpoint_every", "log_every", "seed", "precision", "time_budget_s")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_G_FIELD_NUMBER: _ClassVar[int]
    LR_D_FIELD_NUMBER: _ClassVar[int]
    BETAS_FIELD_NUMBER: _ClassVar[int]
    EMA_DECAY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    steps: int
    batch_size: int
    lr_g: float
    lr_d: float
    betas: _containers.RepeatedScalarFieldContainer[float]
    ema_decay: float
    checkpoint_every: int
    log_every: int
    seed: int
    precision: str
    time_budget_s: float
    def __init__(self, steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr_g: _Optional[float] = ..., lr_d: _Optional[float] = ..., betas: _Optional[_Iterable[float]] = ..., ema_decay: _Optional[float] = ..., checkpoint_every: _Optional[int] = ..., log_every: _Optional[int] = ..., seed: _Optional[int] = ..., precision: _Optional[str] = ..., time_budget_s: _Optional[float] = ...) -> None: ...

class GeneratorData(_message.Message):
    __slots__ = ("image_size", "num_classes", "num_conditions")
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    image_size: int
    num_classes: int
    num_conditions: int
    def __init__(self, image_size: _Optional[int] = ..., num_classes: _Optional[int] = ..., num_conditions: _Optional[int] = ...) -> None: ...

class JointGanOptions(_message.Message):
    __slots__ = ("loss", "latent_dim", "base_channels", "critic_norm", "spectral_norm", "n_critic", "clip_value", "gp_weight", "diff_augment", "fake_masks")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    BASE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CRITIC_NORM_FIELD_NUMBER: _ClassVar[int]
    SPECTRAL_NORM_FIELD_NUMBER: _ClassVar[int]
    N_CRITIC_FIELD_NUMBER: _ClassVar[int]
    CLIP_VALUE_FIELD_NUMBER: _ClassVar[int]
    GP_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DIFF_AUGMENT_FIELD_NUMBER: _ClassVar[int]
    FAKE_MASKS_FIELD_NUMBER: _ClassVar[int]
    loss: str
    latent_dim: int
    base_channels: int
    critic_norm: str
    spectral_norm: bool
    n_critic: int
    clip_value: float
    gp_weight: float
    diff_augment: bool
    fake_masks: str
    def __init__(self, loss: _Optional[str] = ..., latent_dim: _Optional[int] = ..., base_channels: _Optional[int] = ..., critic_norm: _Optional[str] = ..., spectral_norm: _Optional[bool] = ..., n_critic: _Optional[int] = ..., clip_value: _Optional[float] = ..., gp_weight: _Optional[float] = ..., diff_augment: _Optional[bool] = ..., fake_masks: _Optional[str] = ...) -> None: ...

class SpadeOptions(_message.Message):
    __slots__ = ("latent_dim", "base_channels", "spade_hidden", "disc_channels", "num_scales", "feature_matching", "spectral_norm", "mask_latent_dim", "mask_base_channels", "mask_bank_size", "rotation", "scale", "translation", "elastic", "elastic_grid", "diff_augment")
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    BASE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SPADE_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    DISC_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_SCALES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MATCHING_FIELD_NUMBER: _ClassVar[int]
    SPECTRAL_NORM_FIELD_NUMBER: _ClassVar[int]
    MASK_LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    MASK_BASE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MASK_BANK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    ELASTIC_FIELD_NUMBER: _ClassVar[int]
    ELASTIC_GRID_FIELD_NUMBER: _ClassVar[int]
    DIFF_AUGMENT_FIELD_NUMBER: _ClassVar[int]
    latent_dim: int
    base_channels: int
    spade_hidden: int
    disc_channels: int
    num_scales: int
    feature_matching: float
    spectral_norm: bool
    mask_latent_dim: int
    mask_base_channels: int
    mask_bank_size: int
    rotation: float
    scale: float
    translation: float
    elastic: float
    elastic_grid: int
    diff_augment: bool
    def __init__(self, latent_dim: _Optional[int] = ..., base_channels: _Optional[int] = ..., spade_hidden: _Optional[int] = ..., disc_channels: _Optional[int] = ..., num_scales: _Optional[int] = ..., feature_matching: _Optional[float] = ..., spectral_norm: _Optional[bool] = ..., mask_latent_dim: _Optional[int] = ..., mask_base_channels: _Optional[int] = ..., mask_bank_size: _Optional[int] = ..., rotation: _Optional[float] = ..., scale: _Optional[float] = ..., translation: _Optional[float] = ..., elastic: _Optional[float] = ..., elastic_grid: _Optional[int] = ..., diff_augment: _Optional[bool] = ...) -> None: ...

class StyleGan2Options(_message.Message):
    __slots__ = ("latent_dim", "style_dim", "mapping_layers", "channel_base", "channel_max", "conditional", "style_mixing", "r1_gamma", "r1_every", "mbstd_group", "augment", "ada_target", "ada_interval", "ada_kimg")
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    STYLE_DIM_FIELD_NUMBER: _ClassVar[int]
    MAPPING_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_BASE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MAX_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_FIELD_NUMBER: _ClassVar[int]
    STYLE_MIXING_FIELD_NUMBER: _ClassVar[int]
    R1_GAMMA_FIELD_NUMBER: _ClassVar[int]
    R1_EVERY_FIELD_NUMBER: _ClassVar[int]
    MBSTD_GROUP_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    ADA_TARGET_FIELD_NUMBER: _ClassVar[int]
    ADA_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ADA_KIMG_FIELD_NUMBER: _ClassVar[int]
    latent_dim: int
    style_dim: int
    mapping_layers: int
    channel_base: int
    channel_max: int
    conditional: bool
    style_mixing: float
    r1_gamma: float
    r1_every: int
    mbstd_group: int
    augment: str
    ada_target: float
    ada_interval: int
    ada_kimg: float
    def __init__(self, latent_dim: _Optional[int] = ..., style_dim: _Optional[int] = ..., mapping_layers: _Optional[int] = ..., channel_base: _Optional[int] = ..., channel_max: _Optional[int] = ..., conditional: _Optional[bool] = ..., style_mixing: _Optional[float] = ..., r1_gamma: _Optional[float] = ..., r1_every: _Optional[int] = ..., mbstd_group: _Optional[int] = ..., augment: _Optional[str] = ..., ada_target: _Optional[float] = ..., ada_interval: _Optional[int] = ..., ada_kimg: _Optional[float] = ...) -> None: ...

class DiffusionOptions(_message.Message):
    __slots__ = ("channels", "num_res_blocks", "attention", "num_head_channels", "prediction", "schedule", "train_timesteps", "sampler", "sample_steps", "eta", "variant", "latent", "autoencoder_steps", "autoencoder_channels", "latent_channels", "kl_weight", "mask_bank_size", "rotation", "scale", "translation", "elastic", "elastic_grid")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_RES_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    NUM_HEAD_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    AUTOENCODER_STEPS_FIELD_NUMBER: _ClassVar[int]
    AUTOENCODER_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LATENT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASK_BANK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    ELASTIC_FIELD_NUMBER: _ClassVar[int]
    ELASTIC_GRID_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[int]
    num_res_blocks: int
    attention: bool
    num_head_channels: int
    prediction: str
    schedule: str
    train_timesteps: int
    sampler: str
    sample_steps: int
    eta: float
    variant: str
    latent: bool
    autoencoder_steps: int
    autoencoder_channels: _containers.RepeatedScalarFieldContainer[int]
    latent_channels: int
    kl_weight: float
    mask_bank_size: int
    rotation: float
    scale: float
    translation: float
    elastic: float
    elastic_grid: int
    def __init__(self, channels: _Optional[_Iterable[int]] = ..., num_res_blocks: _Optional[int] = ..., attention: _Optional[bool] = ..., num_head_channels: _Optional[int] = ..., prediction: _Optional[str] = ..., schedule: _Optional[str] = ..., train_timesteps: _Optional[int] = ..., sampler: _Optional[str] = ..., sample_steps: _Optional[int] = ..., eta: _Optional[float] = ..., variant: _Optional[str] = ..., latent: _Optional[bool] = ..., autoencoder_steps: _Optional[int] = ..., autoencoder_channels: _Optional[_Iterable[int]] = ..., latent_channels: _Optional[int] = ..., kl_weight: _Optional[float] = ..., mask_bank_size: _Optional[int] = ..., rotation: _Optional[float] = ..., scale: _Optional[float] = ..., translation: _Optional[float] = ..., elastic: _Optional[float] = ..., elastic_grid: _Optional[int] = ...) -> None: ...

class TrainGenerator(_message.Message):
    __slots__ = ("view_id", "dataset", "training", "data", "condition_on", "joint_gan", "spade", "stylegan2", "diffusion")
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONDITION_ON_FIELD_NUMBER: _ClassVar[int]
    JOINT_GAN_FIELD_NUMBER: _ClassVar[int]
    SPADE_FIELD_NUMBER: _ClassVar[int]
    STYLEGAN2_FIELD_NUMBER: _ClassVar[int]
    DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    view_id: str
    dataset: str
    training: TrainingOptions
    data: GeneratorData
    condition_on: str
    joint_gan: JointGanOptions
    spade: SpadeOptions
    stylegan2: StyleGan2Options
    diffusion: DiffusionOptions
    def __init__(self, view_id: _Optional[str] = ..., dataset: _Optional[str] = ..., training: _Optional[_Union[TrainingOptions, _Mapping]] = ..., data: _Optional[_Union[GeneratorData, _Mapping]] = ..., condition_on: _Optional[str] = ..., joint_gan: _Optional[_Union[JointGanOptions, _Mapping]] = ..., spade: _Optional[_Union[SpadeOptions, _Mapping]] = ..., stylegan2: _Optional[_Union[StyleGan2Options, _Mapping]] = ..., diffusion: _Optional[_Union[DiffusionOptions, _Mapping]] = ...) -> None: ...

class SampleCohort(_message.Message):
    __slots__ = ("generator_id", "count", "seed", "formats", "batch_size", "mask_source", "condition", "sample_steps", "eta", "release")
    GENERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MASK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    generator_id: str
    count: int
    seed: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    mask_source: str
    condition: int
    sample_steps: int
    eta: float
    release: ReleaseGate
    def __init__(self, generator_id: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., mask_source: _Optional[str] = ..., condition: _Optional[int] = ..., sample_steps: _Optional[int] = ..., eta: _Optional[float] = ..., release: _Optional[_Union[ReleaseGate, _Mapping]] = ...) -> None: ...

class ReleaseGate(_message.Message):
    __slots__ = ("policy", "max_flagged_fraction", "max_extra_draws", "threshold_ratio", "threshold_quantile")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_FLAGGED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_EXTRA_DRAWS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_RATIO_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    max_flagged_fraction: float
    max_extra_draws: float
    threshold_ratio: float
    threshold_quantile: float
    def __init__(self, policy: _Optional[str] = ..., max_flagged_fraction: _Optional[float] = ..., max_extra_draws: _Optional[float] = ..., threshold_ratio: _Optional[float] = ..., threshold_quantile: _Optional[float] = ...) -> None: ...

class TrainSegmenter(_message.Message):
    __slots__ = ("view_id", "cohort_id", "synthetic_ratio", "augment", "dataset", "source", "synthetic_patients", "model", "steps", "batch_size", "seed", "early_stopping", "patience", "val_every", "min_steps", "min_delta")
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_RATIO_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_PATIENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    VAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    MIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    view_id: str
    cohort_id: str
    synthetic_ratio: float
    augment: bool
    dataset: str
    source: str
    synthetic_patients: int
    model: str
    steps: int
    batch_size: int
    seed: int
    early_stopping: bool
    patience: int
    val_every: int
    min_steps: int
    min_delta: float
    def __init__(self, view_id: _Optional[str] = ..., cohort_id: _Optional[str] = ..., synthetic_ratio: _Optional[float] = ..., augment: _Optional[bool] = ..., dataset: _Optional[str] = ..., source: _Optional[str] = ..., synthetic_patients: _Optional[int] = ..., model: _Optional[str] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., early_stopping: _Optional[bool] = ..., patience: _Optional[int] = ..., val_every: _Optional[int] = ..., min_steps: _Optional[int] = ..., min_delta: _Optional[float] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("cohort_id", "view_id", "segmentation_run_ids", "dataset", "max_samples", "reference_run_id")
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    cohort_id: str
    view_id: str
    segmentation_run_ids: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    max_samples: int
    reference_run_id: str
    def __init__(self, cohort_id: _Optional[str] = ..., view_id: _Optional[str] = ..., segmentation_run_ids: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., max_samples: _Optional[int] = ..., reference_run_id: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("schema_version", "job_id", "kind", "project", "prepare_dataset", "train_generator", "sample_cohort", "train_segmenter", "evaluate")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COHORT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SEGMENTER_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    job_id: str
    kind: JobKind
    project: str
    prepare_dataset: PrepareDataset
    train_generator: TrainGenerator
    sample_cohort: SampleCohort
    train_segmenter: TrainSegmenter
    evaluate: Evaluate
    def __init__(self, schema_version: _Optional[int] = ..., job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., project: _Optional[str] = ..., prepare_dataset: _Optional[_Union[PrepareDataset, _Mapping]] = ..., train_generator: _Optional[_Union[TrainGenerator, _Mapping]] = ..., sample_cohort: _Optional[_Union[SampleCohort, _Mapping]] = ..., train_segmenter: _Optional[_Union[TrainSegmenter, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ...) -> None: ...
