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
    __slots__ = ("dataset", "version", "mode", "size", "axis", "val_fraction", "test_fraction", "seed", "keep_empty")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KEEP_EMPTY_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    mode: ViewMode
    size: int
    axis: int
    val_fraction: float
    test_fraction: float
    seed: int
    keep_empty: bool
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[ViewMode, str]] = ..., size: _Optional[int] = ..., axis: _Optional[int] = ..., val_fraction: _Optional[float] = ..., test_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., keep_empty: _Optional[bool] = ...) -> None: ...

class TrainGenerator(_message.Message):
    __slots__ = ("view_id", "config_json", "dataset")
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    view_id: str
    config_json: str
    dataset: str
    def __init__(self, view_id: _Optional[str] = ..., config_json: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class SampleCohort(_message.Message):
    __slots__ = ("generator_id", "count", "seed", "formats", "batch_size")
    GENERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    generator_id: str
    count: int
    seed: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    def __init__(self, generator_id: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class TrainSegmenter(_message.Message):
    __slots__ = ("view_id", "cohort_id", "synthetic_ratio", "augment", "config_json", "dataset")
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_RATIO_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    view_id: str
    cohort_id: str
    synthetic_ratio: float
    augment: bool
    config_json: str
    dataset: str
    def __init__(self, view_id: _Optional[str] = ..., cohort_id: _Optional[str] = ..., synthetic_ratio: _Optional[float] = ..., augment: _Optional[bool] = ..., config_json: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("cohort_id", "view_id", "segmentation_run_ids", "config_json", "dataset")
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    cohort_id: str
    view_id: str
    segmentation_run_ids: _containers.RepeatedScalarFieldContainer[str]
    config_json: str
    dataset: str
    def __init__(self, cohort_id: _Optional[str] = ..., view_id: _Optional[str] = ..., segmentation_run_ids: _Optional[_Iterable[str]] = ..., config_json: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("schema_version", "job_id", "kind", "prepare_dataset", "train_generator", "sample_cohort", "train_segmenter", "evaluate")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PREPARE_DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COHORT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SEGMENTER_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    job_id: str
    kind: JobKind
    prepare_dataset: PrepareDataset
    train_generator: TrainGenerator
    sample_cohort: SampleCohort
    train_segmenter: TrainSegmenter
    evaluate: Evaluate
    def __init__(self, schema_version: _Optional[int] = ..., job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., prepare_dataset: _Optional[_Union[PrepareDataset, _Mapping]] = ..., train_generator: _Optional[_Union[TrainGenerator, _Mapping]] = ..., sample_cohort: _Optional[_Union[SampleCohort, _Mapping]] = ..., train_segmenter: _Optional[_Union[TrainSegmenter, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ...) -> None: ...
