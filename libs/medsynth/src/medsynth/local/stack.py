"""`medsynth stack up|down|status`: the whole system as local processes, for one machine.

``up`` starts the supervisor (:mod:`medsynth.local.supervise`) in the background and waits until
every process is ready. The supervisor runs, in this order and on fixed ports from
``MEDSYNTH_STACK_BASE_PORT`` (default 8700):

=========== ================ =====================================================================
base+30..39 seaweedfs        S3 server (``weed mini``); data in ``<home>/seaweedfs``, keys in ``<home>/secrets/s3.json``
base+20     broker           tansu, a Kafka-protocol broker keeping its log and offsets in SeaweedFS
base+40..44 torchserve       the sampler's model server (when ``MEDSYNTH_SAMPLER_BACKEND=torchserve``)
base+0, +1  api, ingest      the two HTTP services
base+2      ingest (DICOM)   the C-STORE SCP (``MEDSYNTH_DICOM_PORT`` overrides; AE title ``MEDSYNTH_DICOM_AE_TITLE``)
base+11..14 trainer, sampler, segmenter, evaluator (health and metrics on these ports)
=========== ================ =====================================================================

When ``MEDSYNTH_KAFKA_BOOTSTRAP`` names a broker, neither SeaweedFS nor tansu is started. The store
is whatever the settings say: the local directory by default; with ``MEDSYNTH_STORE=s3`` and no
``MEDSYNTH_S3_ENDPOINT`` set, the stack's SeaweedFS with its own keys. State lives in
``<home>/stack.json`` (written by the supervisor); every process logs to ``<home>/logs/<name>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medsynth.core.errors import MedsynthError
from medsynth.core.settings import SamplerBackend, Settings, StoreBackend
from medsynth.local.servers import (
    TANSU_BUCKET, S3Credentials, SeaweedSecurity, kafka_answers, local_secret, private_dir, s3_ready, seaweed_command, stop_process,
    tail, tansu_command, tansu_env, write_seaweed_identities,
)
from medsynth.local.supervisor import STOP_GRACE_S, ProcessSpec, StackFile

# service name → port offset from settings.stack_base_port
SERVICES: dict[str, int] = {"api": 0, "ingest": 1, "trainer": 11, "sampler": 12, "segmenter": 13, "evaluator": 14}
DICOM_PORT = 2  # the ingest service's C-STORE listener


def dicom_listener(settings: Settings) -> tuple[str, int, str]:
    """Where the stack's ingest service takes C-STORE: host, port, AE title."""
    return settings.dicom_host, settings.dicom_port or settings.stack_base_port + DICOM_PORT, settings.dicom_ae_title
BROKER_PORT = 20
SEAWEEDFS_PORT = 30
TORCHSERVE_PORT = 40


class StackError(MedsynthError):
    """The local stack could not be started, or is in an unexpected state."""


def services_dir() -> Path:
    """``services/`` of this checkout (``MEDSYNTH_SERVICES_DIR`` overrides)."""
    if env := os.environ.get("MEDSYNTH_SERVICES_DIR"):
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "services" / "api" / "main.py").exists():
            return parent / "services"
    raise StackError("cannot find the services/ folder; set MEDSYNTH_SERVICES_DIR")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _paths(settings: Settings) -> tuple[Path, Path]:
    home = settings.home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return home / "stack.json", home / "logs"


def plan(settings: Settings, *, names: list[str] | None = None) -> tuple[list[ProcessSpec], StackFile]:
    """What the supervisor runs, in start order, and the stack file it starts from."""
    home = settings.home.resolve()
    logs = home / "logs"
    base = settings.stack_base_port
    specs: list[ProcessSpec] = []
    env = dict(os.environ, MEDSYNTH_HOME=str(home))
    bootstrap, s3_endpoint = settings.kafka_bootstrap, ""
    if not bootstrap:
        credentials = S3Credentials.for_home(home)
        s3_endpoint, bootstrap = f"127.0.0.1:{base + SEAWEEDFS_PORT}", f"127.0.0.1:{base + BROKER_PORT}"
        data = private_dir(home / "seaweedfs")  # every object of the stack's S3 store is in there
        buckets = [TANSU_BUCKET] + ([settings.s3_bucket] if _store_on_stack_s3(settings) else [])
        identities = write_seaweed_identities(data / "s3-identities.json", credentials)
        security = SeaweedSecurity.in_folder(home / "secrets" / "seaweedfs")
        specs.append(ProcessSpec(
            "seaweedfs", seaweed_command(data, base + SEAWEEDFS_PORT, identities), dict(os.environ, **security.env()),
            str(logs / "seaweedfs.log"),
            stop_signal=signal.SIGINT, ready=lambda: s3_ready(s3_endpoint, credentials, buckets), layer=0))
        specs.append(ProcessSpec(
            "broker", tansu_command(base + BROKER_PORT), tansu_env(s3_endpoint, credentials), str(logs / "broker.log"),
            ready=lambda: _broker_ready(settings, bootstrap), layer=1))
        if _store_on_stack_s3(settings):
            env.update(MEDSYNTH_S3_ENDPOINT=s3_endpoint, MEDSYNTH_S3_ACCESS_KEY=credentials.access_key,
                       MEDSYNTH_S3_SECRET_KEY=credentials.secret_key, MEDSYNTH_S3_SECURE="false")
    env["MEDSYNTH_KAFKA_BOOTSTRAP"] = bootstrap
    env.setdefault("MEDSYNTH_METRICS_TOKEN", local_secret(home, "metrics-token"))
    if settings.store is StoreBackend.local:
        env["MEDSYNTH_STORE_ROOT"] = str(settings.local_store_root.resolve())
    if settings.sampler_backend is SamplerBackend.torchserve:
        specs.append(_torchserve_spec(settings, home, logs))
        ts = base + TORCHSERVE_PORT
        env.update(MEDSYNTH_TORCHSERVE_INFERENCE_URL=f"http://127.0.0.1:{ts}", MEDSYNTH_TORCHSERVE_MANAGEMENT_URL=f"http://127.0.0.1:{ts + 1}")
    for name in names or list(SERVICES):
        if name not in SERVICES:
            raise StackError(f"unknown service {name!r}; the stack has {', '.join(SERVICES)}")
        port = base + SERVICES[name]
        own = dict(env, MEDSYNTH_HTTP_PORT=str(port))
        if name == "ingest":
            own["MEDSYNTH_DICOM_PORT"] = str(dicom_listener(settings)[1])
        if name == "sampler" and settings.sampler_backend is SamplerBackend.torchserve:
            # TorchServe's keys and its model store are the sampler's alone
            own.update(MEDSYNTH_TORCHSERVE_MODEL_STORE=str(home / "torchserve" / "model-store"),
                       MEDSYNTH_TORCHSERVE_KEY_FILE=str(home / "torchserve" / "key_file.json"))
        specs.append(ProcessSpec(name, [sys.executable, str(services_dir() / name / "main.py")],
                                 own, str(logs / f"{name}.log"), port=port, layer=3))
    return specs, StackFile(supervisor_pid=os.getpid(), bootstrap=bootstrap, s3_endpoint=s3_endpoint)


def store_settings(settings: Settings) -> Settings:
    """The settings through which the stack's services reach the store: with ``MEDSYNTH_STORE=s3`` and
    no endpoint of one's own, the stack's SeaweedFS and its keys (``medsynth keys`` writes there)."""
    if not _store_on_stack_s3(settings) or settings.kafka_bootstrap:
        return settings
    credentials = S3Credentials.for_home(settings.home.resolve())
    return settings.model_copy(update={
        "s3_endpoint": f"127.0.0.1:{settings.stack_base_port + SEAWEEDFS_PORT}", "s3_access_key": credentials.access_key,
        "s3_secret_key": credentials.secret_key, "s3_secure": False})


def issue_key(settings: Settings, role: str, *, project: str = "default", name: str = "", days: float = 1.0) -> str:
    """A new API key for the stack's store (what ``medsynth keys create`` does), e.g. for the demo."""
    from medsynth.auth.keys import ApiKeys
    from medsynth.store import open_store

    return ApiKeys(open_store(store_settings(settings))).create(project, role, name=name, expires_in_days=days,
                                                                 created_by="local stack")[1]


def _store_on_stack_s3(settings: Settings) -> bool:
    return settings.store is StoreBackend.s3 and "MEDSYNTH_S3_ENDPOINT" not in os.environ


def _broker_ready(settings: Settings, bootstrap: str) -> bool:
    """The broker answers Kafka requests and has the system's topics."""
    from medsynth.bus.admin import ensure_topics
    from medsynth.bus.client import Bus, BusError
    from medsynth.bus.topics import all_topics

    if not kafka_answers(bootstrap):
        return False
    bus = Bus(settings.model_copy(update={"kafka_bootstrap": bootstrap}), client_id="stack")
    try:
        ensure_topics(bus, all_topics(settings.topic_prefix))
    except BusError:
        return False
    return True


def _torchserve_spec(settings: Settings, home: Path, logs: Path) -> ProcessSpec:
    """TorchServe under a `medsynth torchserve` wrapper (which exits when TorchServe dies)."""
    ts_home = private_dir(home / "torchserve")  # TorchServe writes its keys (key_file.json) there
    (ts_home / "model-store").mkdir(parents=True, exist_ok=True, mode=0o700)
    (ts_home / "model-store").chmod(0o700)  # archives are code TorchServe runs: only this user writes them
    state_file = ts_home / "state.json"
    state_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "medsynth.local.cli", "torchserve", "--model-store", str(ts_home / "model-store"),
            "--workdir", str(ts_home), "--state-file", str(state_file),
            "--base-port", str(settings.stack_base_port + TORCHSERVE_PORT)]
    return ProcessSpec("torchserve", argv, dict(os.environ), str(logs / "torchserve.log"),
                       ready=state_file.exists, ready_timeout_s=240.0, layer=2)


def up(settings: Settings, *, names: list[str] | None = None, timeout: float = 180.0, echo=print) -> StackFile:
    """Start the supervisor and wait until every process is ready; on failure, stop what started."""
    state_file, logs = _paths(settings)
    previous = StackFile.load(state_file)
    if previous and (alive(previous.supervisor_pid) or any(p.pid and alive(p.pid) for p in previous.processes)):
        raise StackError(f"a stack is already running (see `medsynth stack status`, state in {state_file})")
    state_file.unlink(missing_ok=True)
    plan(settings, names=names)  # a bad service name or a missing binary fails here, in the foreground
    argv = [sys.executable, "-m", "medsynth.local.supervise"] + (["--services", *names] if names else [])
    log_path = logs / "supervisor.log"
    with open(log_path, "ab") as out:
        supervisor = subprocess.Popen(argv, env=dict(os.environ, MEDSYNTH_HOME=str(settings.home.resolve())), stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    while True:
        stack = StackFile.load(state_file)
        if stack is not None and stack.state == "failed" or supervisor.poll() is not None:
            supervisor.wait()
            error = stack.error if stack else "the supervisor exited"
            culprit = next((p for p in (stack.processes if stack else []) if p.name in error.split(" ", 1)[0]), None)
            down(settings, echo=lambda *_: None)
            raise StackError(f"the stack did not start: {error}\n{tail(Path(culprit.log) if culprit else log_path)}")
        if stack is not None:
            for p in stack.processes:
                if p.name in shown:
                    continue
                if p.port is None and stack.state == "up" or p.port is not None and probe(p.port) == "ready":
                    where = f"http://127.0.0.1:{p.port}" if p.port else {"broker": stack.bootstrap, "seaweedfs": stack.s3_endpoint}.get(p.name, "")
                    echo(f"{p.name:<10} ready{' on ' + where if where else ''} (pid {p.pid})")
                    shown.add(p.name)
            if stack.state == "up" and len(shown) == len(stack.processes):
                return stack
        if time.monotonic() > deadline:
            pending = [p.name for p in stack.processes if p.name not in shown] if stack else ["supervisor"]
            down(settings, echo=lambda *_: None)
            raise StackError(f"not ready after {timeout:.0f}s: {', '.join(pending)}; logs in {logs}")
        time.sleep(0.3)


def probe(port: int | None) -> str:
    if port is None:
        return "-"
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return "down"
    return "ready" if r.status_code == 200 else "not ready"


def status(settings: Settings) -> list[dict[str, object]]:
    """One row per process: name, pid, alive, port, supervisor state, restarts, readiness."""
    stack = StackFile.load(_paths(settings)[0])
    if stack is None:
        return []
    rows = []
    for p in stack.processes:
        running = bool(p.pid) and alive(p.pid)
        rows.append({"name": p.name, "pid": p.pid, "alive": running, "port": p.port, "state": p.state, "restarts": p.restarts,
                     "last_exit": p.last_exit, "ready": probe(p.port) if running and p.port else "-", "log": p.log})
    return rows


def down(settings: Settings, *, grace: float = STOP_GRACE_S, echo=print) -> None:
    """Stop the supervisor, which stops everything in order; if it is gone, stop what it left."""
    state_file, _ = _paths(settings)
    stack = StackFile.load(state_file)
    if stack is None:
        echo("no stack is running")
        return
    if alive(stack.supervisor_pid):
        stop_process(stack.supervisor_pid, signal.SIGTERM, 4 * grace + 10)
    stack = StackFile.load(state_file) or stack
    for p in reversed(stack.processes):  # left behind by a supervisor that was killed
        if p.pid and alive(p.pid):
            stop_process(p.pid, p.stop_signal, grace)
        echo(f"{p.name:<10} stopped")
    state_file.unlink(missing_ok=True)

