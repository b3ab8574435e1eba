"""The one typed settings object. Built by :func:`load_settings`, never at import time."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_S3_SECRET = "medsynth-dev-secret"


class Environment(str, Enum):
    development = "development"
    production = "production"


class StoreBackend(str, Enum):
    local = "local"
    s3 = "s3"


class SamplerBackend(str, Enum):
    torchserve = "torchserve"
    inprocess = "inprocess"


class DicomPeer(BaseModel):
    """A DICOM node allowed to push instances (C-STORE) and where they go."""

    ae_title: str = Field(min_length=1, max_length=16)
    project: str = "default"
    dataset: str


class DicomNode(BaseModel):
    """A DICOM node cohorts may be sent to (C-STORE)."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)


class Settings(BaseSettings):
    """Every knob of every service; each is read from ``MEDSYNTH_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MEDSYNTH_", extra="ignore")

    environment: Environment = Environment.development
    home: Path = Field(Path(".medsynth"), description="Local state: store, logs, stack state.")

    # http (each service process gets its own port)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    http_header_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="A request's headers must arrive within this of the connection opening (or the previous response); "
        "past it, 408 and the connection ends.",
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Each part of a request body must arrive within this (an upload may take as long as it keeps coming); past it, 408.",
    )
    http_keep_alive_s: int = Field(5, ge=1, le=600, description="An idle keep-alive connection is closed after this.")

    stack_base_port: int = Field(8700, ge=1024, le=65000, description="`medsynth stack up`: api on it, the rest above.")

    # object store
    store: StoreBackend = StoreBackend.local
    store_root: Path | None = Field(None, description="Local backend root; default <home>/store.")
    s3_endpoint: str = "localhost:9000"
    s3_bucket: str = "medsynth"
    s3_access_key: str = "medsynth"
    s3_secret_key: str = DEV_S3_SECRET
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    # bus
    kafka_bootstrap: str | None = Field(None, description="Unset: `medsynth stack up` starts a local broker.")
    topic_prefix: str = "medsynth"
    kafka_api_version: str | None = Field(
        None, description="Pin the Kafka protocol version, e.g. 2.3 for the librdkafka mock broker; unset: negotiate."
    )
    publish_timeout_s: float = Field(
        5.0, gt=0, le=120, description="Longest a publish waits for the broker (an api POST answers 503 after it)."
    )
    kafka_idempotent_producer: bool = Field(
        False,
        description="Let the broker drop a producer's retried duplicates (Kafka >= 0.11; tansu 0.6 refuses it). Events "
        "are published once either way: a failed send is looked for in the log before it is sent again.",
    )
    max_attempts: int = Field(3, ge=1, description="Handler attempts before a command is dead-lettered.")
    retry_backoff_s: float = Field(1.0, ge=0)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000,
        description="Longest gap between two polls of a worker's consumer; workers keep polling while a job runs.",
    )

    # jobs
    reconcile_after_s: float = Field(60.0, gt=0, description="Republish commands of jobs queued longer.")
    reconcile_every_s: float = Field(15.0, gt=0)
    lease_s: float = Field(
        60.0, ge=1,
        description="A running job's lease: its worker renews it every third of this; once it expires (the worker "
        "died) the reconciler puts the job's command back on the queue.",
    )

    # compute
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the trainer and the in-process sampler run: auto (CUDA when present), cpu, cuda, cuda:N.",
    )

    # sampling
    sampler_backend: SamplerBackend = Field(
        SamplerBackend.torchserve, description="torchserve (default) or inprocess (same handler code, no server)."
    )
    torchserve_inference_url: str = "http://127.0.0.1:8080"
    torchserve_management_url: str = "http://127.0.0.1:8081"
    torchserve_model_store: Path | None = Field(None, description="Folder TorchServe loads .mar archives from.")
    torchserve_key_file: Path | None = Field(
        None, description="TorchServe's key_file.json (token authorization): the sampler's management and inference keys.",
    )
    sampler_wait_s: float = Field(60.0, ge=0, description="How long a cohort job waits for TorchServe before failing.")
    sampler_request_s: int = Field(
        600, ge=10, le=86_400,
        description="How long one TorchServe sampling request may run (the model's response_timeout, and the client's wait).",
    )
    sampler_passes_per_request: int = Field(
        4096, ge=1,
        description="Iterative samplers (diffusion): a cohort batch is cut so that samples x network passes per sample "
        "stays within this, e.g. 16 samples at 250 steps; one-pass families keep the requested batch size.",
    )

    # studies
    study_max_jobs: int = Field(500, ge=1, le=100_000, description="Most jobs one study may expand into (POST /v1/studies answers 422 past it).")
    study_every_s: float = Field(5.0, gt=0, description="How often the api moves running studies on (submits jobs whose inputs finished).")

    # evaluation
    inception_weights: Path | None = Field(
        None, description="Local inception-2015-12-05.pt for ImageNet FID/KID; never downloaded."
    )

    # ingestion limits
    max_upload_bytes: int = Field(256 * 1024**2, gt=0)
    max_voxels: int = Field(64 * 1024**2, gt=0)
    large_upload_bytes: int = Field(
        32 * 1024**2, ge=0,
        description="An upload (NIfTI or DICOM REST) of at least this many bytes is large: each ingest process checks and "
        "stores at most MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS of them at once, as each holds its volume in memory.",
    )
    max_concurrent_large_uploads: int = Field(1, ge=1, description="Large uploads one ingest process checks and stores at once.")
    large_upload_wait_s: float = Field(
        60.0, ge=0, description="How long a large upload, received, waits for its turn; then 503 with Retry-After.",
    )
    max_zip_ratio: float = Field(
        50.0, ge=1, description="A zip in a DICOM upload whose members declare more than this many times its own size "
        "(and over 16 MiB) is refused (413) before it is inflated; DICOM compresses a few times, a zip bomb a thousand.",
    )

    # DICOM (ingest service): uploads, STOW-RS and the C-STORE listener
    max_dicom_upload_bytes: int = Field(2 * 1024**3, gt=0, description="One DICOM upload or STOW-RS request, all parts.")
    dicom_quiet_s: float = Field(30.0, gt=0, description="A staged series with no new instance for this long is assembled.")
    dicom_port: int = Field(0, ge=0, le=65535, description="C-STORE SCP port; 0: no listener.")
    dicom_host: str = Field("127.0.0.1", description="Address the C-STORE SCP listens on.")
    dicom_ae_title: str = Field("MEDSYNTH", min_length=1, max_length=16)
    dicom_destinations: list[DicomNode] = Field(
        default_factory=list,
        description='Nodes `POST /v1/cohorts/{id}/send` may send to (JSON: [{"ae_title": "VIEWER", "host": "10.0.0.5", '
                    '"port": 104}]); any other is refused, so the api cannot be made to connect anywhere.',
    )
    dicom_peers: list[DicomPeer] = Field(
        default_factory=list,
        description="Calling AE titles allowed to send, each with the project and dataset its instances go to "
                    '(JSON: [{"ae_title": "PACS", "project": "default", "dataset": "brain"}]); others are refused.',
    )

    # access: who may call the api and ingest services (medsynth.auth)
    auth_enabled: bool = Field(
        True, description="Off only in development: every caller is then an anonymous holder of every role."
    )
    oidc_issuer: str | None = Field(None, description="OIDC issuer whose bearer tokens are accepted (the `iss` claim).")
    oidc_audience: str | None = Field(None, description="The `aud` a token must carry: the client id registered for medsynth.")
    oidc_jwks_url: str | None = Field(None, description="The issuer's JWKS (its `jwks_uri`), fetched and cached.")
    oidc_roles_claim: str = Field(
        "roles", description="Claim (dotted path for nested ones, e.g. resource_access.medsynth.roles) listing "
        "`<project>:<role>` grants.",
    )
    oidc_algorithms: list[str] = Field(["RS256", "PS256", "ES256"], min_length=1)
    oidc_leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp / nbf / iat.")
    key_cache_s: float = Field(
        10.0, ge=0, le=300, description="How long a service trusts an API key it looked up (a revocation takes effect within it).",
    )
    metrics_token: SecretStr | None = Field(None, description="Bearer token /metrics asks for; unset: open (development only).")
    rate_limit_per_s: float = Field(
        20.0, gt=0, description="Interactive requests (reads, job submissions, administration) per second one caller may "
        "sustain (per service process).",
    )
    rate_limit_burst: int = Field(100, ge=1, description="Interactive requests one caller may send at once above the sustained rate.")
    rate_limit_upload_per_s: float = Field(
        50.0, gt=0, description="Upload requests (scans, DICOM, STOW-RS, commits) per second one caller may sustain: a bucket "
        "apart from the interactive one, so that a bulk upload and the same caller's other calls do not starve each other.",
    )
    rate_limit_upload_burst: int = Field(200, ge=1, description="Upload requests one caller may send at once above the sustained rate.")
    uploads_per_minute_per_key: int = Field(600, ge=1, description="Scans one key may upload per minute.")
    uploads_per_minute_per_project: int = Field(3000, ge=1, description="Scans one project may take in per minute.")
    max_json_bytes: int = Field(1024**2, ge=1024, description="Largest JSON request body (uploads have their own limit).")

    @model_validator(mode="after")
    def _no_default_secrets_outside_development(self) -> Settings:
        if (
            self.environment is not Environment.development
            and self.store is StoreBackend.s3
            and self.s3_secret_key == DEV_S3_SECRET
        ):
            raise ValueError("MEDSYNTH_S3_SECRET_KEY must be set outside development")
        if self.environment is not Environment.development:
            if not self.auth_enabled:
                raise ValueError("MEDSYNTH_AUTH_ENABLED=false is allowed only with MEDSYNTH_ENVIRONMENT=development")
            if self.metrics_token is None:
                raise ValueError("MEDSYNTH_METRICS_TOKEN must be set outside development (/metrics is not anonymous)")
        oidc = {"MEDSYNTH_OIDC_ISSUER": self.oidc_issuer, "MEDSYNTH_OIDC_AUDIENCE": self.oidc_audience,
                "MEDSYNTH_OIDC_JWKS_URL": self.oidc_jwks_url}
        if any(oidc.values()) and not all(oidc.values()):
            missing = ", ".join(name for name, value in oidc.items() if not value)
            raise ValueError(f"OIDC needs an issuer, an audience and a JWKS URL; {missing} not set")
        return self

    @property
    def metrics_token_value(self) -> str | None:
        token = self.metrics_token
        return token.get_secret_value() if isinstance(token, SecretStr) else token  # model_copy does not validate

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def local_store_root(self) -> Path:
        return self.store_root or self.home / "store"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides taking precedence."""
    return Settings(**overrides)
