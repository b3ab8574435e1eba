import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from medsynth.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobQueued(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("attempt", "worker")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    worker: str
    def __init__(self, attempt: _Optional[int] = ..., worker: _Optional[str] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("fraction", "message")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    message: str
    def __init__(self, fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class JobSucceeded(_message.Message):
    __slots__ = ("result_keys",)
    class ResultKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESULT_KEYS_FIELD_NUMBER: _ClassVar[int]
    result_keys: _containers.ScalarMap[str, str]
    def __init__(self, result_keys: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("error", "attempts", "dead_lettered")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    error: str
    attempts: int
    dead_lettered: bool
    def __init__(self, error: _Optional[str] = ..., attempts: _Optional[int] = ..., dead_lettered: _Optional[bool] = ...) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScanIngested(_message.Message):
    __slots__ = ("dataset", "patient_id", "scan_id", "manifest_version", "image_key", "label_key")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_KEY_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    patient_id: str
    scan_id: str
    manifest_version: int
    image_key: str
    label_key: str
    def __init__(self, dataset: _Optional[str] = ..., patient_id: _Optional[str] = ..., scan_id: _Optional[str] = ..., manifest_version: _Optional[int] = ..., image_key: _Optional[str] = ..., label_key: _Optional[str] = ...) -> None: ...

class CohortReady(_message.Message):
    __slots__ = ("cohort_id", "generator_id", "count", "manifest_key")
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEY_FIELD_NUMBER: _ClassVar[int]
    cohort_id: str
    generator_id: str
    count: int
    manifest_key: str
    def __init__(self, cohort_id: _Optional[str] = ..., generator_id: _Optional[str] = ..., count: _Optional[int] = ..., manifest_key: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("schema_version", "event_id", "time", "job_id", "kind", "project", "queued", "started", "progress", "succeeded", "failed", "cancelled", "scan_ingested", "cohort_ready")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    SCAN_INGESTED_FIELD_NUMBER: _ClassVar[int]
    COHORT_READY_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    event_id: str
    time: _timestamp_pb2.Timestamp
    job_id: str
    kind: _jobs_pb2.JobKind
    project: str
    queued: JobQueued
    started: JobStarted
    progress: JobProgress
    succeeded: JobSucceeded
    failed: JobFailed
    cancelled: JobCancelled
    scan_ingested: ScanIngested
    cohort_ready: CohortReady
    def __init__(self, schema_version: _Optional[int] = ..., event_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., kind: _Optional[_Union[_jobs_pb2.JobKind, str]] = ..., project: _Optional[str] = ..., queued: _Optional[_Union[JobQueued, _Mapping]] = ..., started: _Optional[_Union[JobStarted, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., succeeded: _Optional[_Union[JobSucceeded, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ..., cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ..., scan_ingested: _Optional[_Union[ScanIngested, _Mapping]] = ..., cohort_ready: _Optional[_Union[CohortReady, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("command", "topic", "partition", "offset", "error", "attempts", "time")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    command: bytes
    topic: str
    partition: int
    offset: int
    error: str
    attempts: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, command: _Optional[bytes] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
