"""The one typed settings object. Built by :func:`load_settings`, never at import time."""

from __future__ import annotations

import re
import ssl
from enum import Enum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


class KafkaSecurityProtocol(str, Enum):
    """How the Kafka clients reach the brokers (Kafka's ``security.protocol``)."""

    plaintext = "PLAINTEXT"
    ssl = "SSL"
    sasl_plaintext = "SASL_PLAINTEXT"
    sasl_ssl = "SASL_SSL"

    @property
    def tls(self) -> bool:
        return self in (KafkaSecurityProtocol.ssl, KafkaSecurityProtocol.sasl_ssl)

    @property
    def sasl(self) -> bool:
        return self in (KafkaSecurityProtocol.sasl_plaintext, KafkaSecurityProtocol.sasl_ssl)


class KafkaSaslMechanism(str, Enum):
    plain = "PLAIN"
    scram_sha_256 = "SCRAM-SHA-256"
    scram_sha_512 = "SCRAM-SHA-512"


#: Setting → its variable, for the errors of the transport-security settings.
_ENUMS = {"kafka_security_protocol": KafkaSecurityProtocol, "kafka_sasl_mechanism": KafkaSaslMechanism}
_FILES = ("kafka_sasl_password_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "s3_ca_bundle")
_WORKER_KIND = re.compile(r"^[a-z][a-z-]*$")


def _variable(field: str) -> str:
    return f"MEDSYNTH_{field.upper()}"


def _readable_file(variable: str, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{variable}={path}: no such file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{variable}={path}: cannot be read ({exc.strerror})") from None


def _ca_file(variable: str, path: Path) -> None:
    """A PEM file of one or more CA certificates, as TLS clients load it."""
    _readable_file(variable, path)
    try:
        context = ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"{variable}={path}: not a PEM bundle of CA certificates ({exc})") from None
    if not context.cert_store_stats()["x509"]:
        raise ValueError(f"{variable}={path}: holds no certificate")


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
    s3_secure: bool = Field(False, description="https to the S3 server (also set by an https:// endpoint).")
    s3_region: str = "us-east-1"
    s3_ca_bundle: Path | None = Field(
        None, description="PEM file of the CAs that sign the S3 server's certificate (an internal CA), trusted instead "
        "of the public ones; needs https (MEDSYNTH_S3_SECURE=true or an https:// endpoint).",
    )

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
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.plaintext, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL: passed to every Kafka client.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        None, description="SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    kafka_sasl_username: str | None = Field(None, description="SASL_*: the user medsynth authenticates as.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL_*: its password (or MEDSYNTH_KAFKA_SASL_PASSWORD_FILE, a file holding it).",
    )
    kafka_sasl_password_file: Path | None = Field(
        None, description="SASL_*: a file holding the password (a mounted Secret, a Vault agent's file); read at start.",
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="SSL / SASL_SSL: PEM file of the CAs that sign the brokers' certificates; unset: the system's CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(None, description="SSL / SASL_SSL: client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="SSL / SASL_SSL: the client certificate's private key (PEM, unencrypted).")
    kafka_ssl_check_hostname: bool = Field(
        True, description="SSL / SASL_SSL: the broker's certificate must name the host connected to.",
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

    # workers
    worker_kinds: Annotated[list[str] | None, NoDecode] = Field(
        None, description="A worker service runs only these of its job kinds (comma-separated, e.g. train-generator); "
        "unset: all of them. Lets the trainer leave prepare-dataset to the CPU preparer service.",
    )

    # compute
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the trainer, the segmenter, the evaluator's feature extractors and the in-process sampler run: "
        "auto (CUDA when usable), cpu, cuda, cuda:N. An explicit cuda that torch cannot use stops the worker at start.",
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
    sampler_handler: Path | None = Field(
        None, description="The TorchServe handler every generator's archive carries (services/sampler/handler.py); None: that "
                          "file of the source checkout medsynth is installed from. The images set /app/services/sampler/handler.py.")
    sampler_wait_s: float = Field(60.0, ge=0, description="How long a cohort job waits for TorchServe before failing.")
    sampler_request_s: int = Field(
        600, ge=10, le=86_400,
        description="How long one TorchServe sampling request may run (the model's response_timeout, and the client's wait).",
    )
    sampler_passes_per_request: int = Field(
        4096, ge=1,
        description="Iterative samplers (diffusion): a cohort batch is cut so that samples x network passes per sample "
        "stays within this, e.g. 16 samples at 250 steps; one-pass families keep the requested batch size. Sized for a "
        "CPU TorchServe; the chart sets 65536 for a GPU one (64 samples at 1,000 steps).",
    )
    sampler_max_models: int = Field(
        2, ge=1, le=1000,
        description="Generators kept loaded in TorchServe (each a worker; on a GPU, a CUDA context and its weights): "
        "loading another unregisters the least recently used beyond this.",
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

    @field_validator(*_ENUMS, mode="before")
    @classmethod
    def _named_choice(cls, value: object, info) -> object:
        """One of the enum's values (any case), with the variable named when it is not."""
        if value is None or isinstance(value, Enum):
            return value
        text = str(value).strip()
        if not text:
            return None if info.field_name != "kafka_security_protocol" else KafkaSecurityProtocol.plaintext
        choices = _ENUMS[info.field_name]
        for choice in choices:
            if text.upper() == choice.value:
                return choice
        allowed = ", ".join(c.value for c in choices)
        raise ValueError(f"{_variable(info.field_name)} must be one of {allowed}, not {text!r}")

    @field_validator("kafka_sasl_username", "kafka_sasl_password", *_FILES, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (compose passes `${X:-}` through) means not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("worker_kinds", mode="before")
    @classmethod
    def _kinds_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()] or None
        if value is not None:
            bad = [kind for kind in value if not _WORKER_KIND.match(str(kind))]
            if bad or not value:
                raise ValueError(f"MEDSYNTH_WORKER_KINDS: comma-separated job kinds (e.g. prepare-dataset,train-generator), not {bad}")
        return value

    @model_validator(mode="after")
    def _transport_security(self) -> Settings:
        """Kafka's and the store's TLS and SASL settings fit together and their files are there; checked when
        the settings are read, so that a service refuses to start rather than fail on its first connection."""
        protocol = self.kafka_security_protocol
        named = f"MEDSYNTH_KAFKA_SECURITY_PROTOCOL={protocol.value}"
        sasl = {"kafka_sasl_mechanism": self.kafka_sasl_mechanism, "kafka_sasl_username": self.kafka_sasl_username,
                "kafka_sasl_password": self.kafka_sasl_password, "kafka_sasl_password_file": self.kafka_sasl_password_file}
        tls = {"kafka_ssl_cafile": self.kafka_ssl_cafile, "kafka_ssl_certfile": self.kafka_ssl_certfile,
               "kafka_ssl_keyfile": self.kafka_ssl_keyfile}
        if protocol.sasl:
            missing = [_variable(name) for name in ("kafka_sasl_mechanism", "kafka_sasl_username") if not sasl[name]]
            if not self.kafka_sasl_password and not self.kafka_sasl_password_file:
                missing.append("MEDSYNTH_KAFKA_SASL_PASSWORD (or MEDSYNTH_KAFKA_SASL_PASSWORD_FILE)")
            if missing:
                raise ValueError(f"{named} needs {', '.join(missing)}")
            if self.kafka_sasl_password and self.kafka_sasl_password_file:
                raise ValueError("set MEDSYNTH_KAFKA_SASL_PASSWORD or MEDSYNTH_KAFKA_SASL_PASSWORD_FILE, not both")
        elif set_anyway := [_variable(name) for name, value in sasl.items() if value]:
            raise ValueError(f"{', '.join(set_anyway)} set, but {named} has no SASL (SASL_SSL or SASL_PLAINTEXT uses it)")
        if not protocol.tls and (set_anyway := [_variable(name) for name, value in tls.items() if value]):
            raise ValueError(f"{', '.join(set_anyway)} set, but {named} has no TLS (SSL or SASL_SSL uses it)")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("MEDSYNTH_KAFKA_SSL_KEYFILE needs MEDSYNTH_KAFKA_SSL_CERTFILE (the client certificate)")
        if self.s3_ca_bundle and not (self.s3_secure or self.s3_endpoint.lower().startswith("https://")):
            raise ValueError("MEDSYNTH_S3_CA_BUNDLE set, but the store is reached over plain http: set MEDSYNTH_S3_SECURE=true")
        for name in ("kafka_ssl_cafile", "s3_ca_bundle"):
            if (path := getattr(self, name)) is not None:
                _ca_file(_variable(name), path)
        for name in ("kafka_sasl_password_file", "kafka_ssl_keyfile"):
            if (path := getattr(self, name)) is not None:
                _readable_file(_variable(name), path)
        if self.kafka_ssl_certfile is not None:
            _readable_file("MEDSYNTH_KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile)
            try:
                ssl.create_default_context().load_cert_chain(str(self.kafka_ssl_certfile), self.kafka_ssl_keyfile and str(self.kafka_ssl_keyfile))
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"MEDSYNTH_KAFKA_SSL_CERTFILE / MEDSYNTH_KAFKA_SSL_KEYFILE: not a PEM certificate and its "
                                 f"unencrypted private key ({exc})") from None
        if self.kafka_sasl_password_file is not None and not self.kafka_sasl_password_file.read_text().strip():
            raise ValueError(f"MEDSYNTH_KAFKA_SASL_PASSWORD_FILE={self.kafka_sasl_password_file}: the file is empty")
        return self

    @property
    def kafka_sasl_password_value(self) -> str | None:
        """The SASL password, from MEDSYNTH_KAFKA_SASL_PASSWORD or read from its file (trailing newline dropped)."""
        if self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().rstrip("\r\n")
        password = self.kafka_sasl_password
        return password.get_secret_value() if isinstance(password, SecretStr) else password

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
