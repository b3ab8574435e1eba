"""Prometheus metrics shared by every service (exposed on each service's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("medsynth_jobs_total", "Commands handled by workers, by kind and outcome.", ["kind", "outcome"])
JOB_SECONDS = Histogram(
    "medsynth_job_duration_seconds",
    "Wall time of one handler attempt.",
    ["kind"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
)
DEAD_LETTERS = Counter("medsynth_dead_letters_total", "Commands sent to a dead-letter topic.", ["kind"])
RECONCILER_REPUBLISHED = Counter("medsynth_reconciler_republished_total", "Queued jobs republished.")
RECONCILER_ERRORS = Counter("medsynth_reconciler_errors_total", "Reconciler passes that raised.")
INGESTED = Counter("medsynth_ingest_scans_total", "Scan uploads by outcome.", ["outcome"])
INGESTED_BYTES = Counter("medsynth_ingest_bytes_total", "Bytes of accepted scan uploads.")
DICOM_INSTANCES = Counter("medsynth_ingest_dicom_instances_total", "DICOM instances received, by way in and outcome.",
                          ["via", "outcome"])
TRAIN_STEPS_PER_S = Gauge("medsynth_trainer_steps_per_second", "Generator training speed of the current job.")
TRAIN_LOSS = Gauge("medsynth_trainer_loss", "Latest logged generator-training loss, by family and loss name.", ["family", "loss"])
TRAIN_STEP = Gauge("medsynth_trainer_step", "Step of the current generator-training job.")
COHORT_SAMPLES = Counter("medsynth_sampler_samples_total", "Synthetic samples written.", ["backend"])
JOBS_BY_STATE = Gauge("medsynth_job_records", "Job records by kind and state (counted by the api's reconciler each pass).", ["kind", "state"])
GATE_WITHHELD = Counter("medsynth_sampler_withheld_total", "Draws the memorization gate withheld as near-copies of training images.")
GATE_REFUSED = Counter("medsynth_sampler_refused_total", "Cohorts the memorization gate refused (block, or a filter past its cap).")

AUDIT_FAILURES = Counter("medsynth_audit_failures_total", "Requests whose audit record could not be written.")
AUTH_REFUSED = Counter("medsynth_auth_refused_total", "Requests refused by the guard, by status (401, 403, 429).", ["status"])
HTTP_REQUESTS = Counter("medsynth_http_requests_total", "HTTP requests by method, route template and status.", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "medsynth_http_request_duration_seconds", "HTTP request latency by method and route template.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TORCHSERVE_REQUESTS = Counter("medsynth_torchserve_requests_total",
                              "Requests the sampler sent to TorchServe, by API (inference, management) and status "
                              "(the HTTP status, or 'unreachable').", ["api", "status"])
TORCHSERVE_SECONDS = Histogram(
    "medsynth_torchserve_request_duration_seconds", "TorchServe request latency seen by the sampler, by API.", ["api"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge("medsynth_consumer_lag", "Commands not yet consumed by this worker's group, per assigned partition.",
                     ["group", "topic", "partition"])

OUTCOMES = ("succeeded", "failed", "cancelled", "error")  # error: an attempt that failed and is retried


def declare_worker_series(kinds) -> None:
    """Create the zero-valued series of a worker's kinds, so that a dashboard sees 0 (not "no data")
    before the first job, failure or dead letter."""
    for kind in kinds:
        DEAD_LETTERS.labels(kind.value)
        for outcome in OUTCOMES:
            JOBS.labels(kind.value, outcome)


#: The DICOM ways in and what each counts (medsynth.api.routes.dicom, medsynth.api.dicom_listener).
DICOM_OUTCOMES = {"upload": ("ingested", "quarantined"), "stow-rs": ("staged", "quarantined", "failed"),
                  "c-store": ("staged", "quarantined", "failed")}


def declare_ingest_series() -> None:
    """The ingest service's zero-valued series (accepted scans, DICOM instances by way in and outcome)."""
    INGESTED.labels("accepted")
    for via, outcomes in DICOM_OUTCOMES.items():
        for outcome in outcomes:
            DICOM_INSTANCES.labels(via, outcome)
