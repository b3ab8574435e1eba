"""`medsynth stack up|down|status`: the whole system as local processes, for one machine.

State lives in ``<home>/stack.json``; every process logs to ``<home>/logs/<name>.log``. The broker
is the local Kafka-protocol broker unless ``MEDSYNTH_KAFKA_BOOTSTRAP`` names a real one; the store is
whatever the settings say (the local directory by default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from medsynth.bus.local_broker import LocalBroker
from medsynth.bus.topics import all_topics
from medsynth.core.errors import MedsynthError
from medsynth.core.settings import SamplerBackend, Settings, StoreBackend

# service name → port offset from settings.stack_base_port
SERVICES: dict[str, int] = {"api": 0, "ingest": 1, "trainer": 11, "sampler": 12, "segmenter": 13, "evaluator": 14}


class StackError(MedsynthError):
    """The local stack could not be started, or is in an unexpected state."""


@dataclass
class Process:
    name: str
    pid: int
    port: int | None = None
    log: str = ""


@dataclass
class StackState:
    bootstrap: str
    broker: Process | None
    services: list[Process] = field(default_factory=list)
    torchserve: Process | None = None

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        broker = Process(**raw["broker"]) if raw["broker"] else None
        torchserve = Process(**raw["torchserve"]) if raw.get("torchserve") else None
        return cls(bootstrap=raw["bootstrap"], broker=broker, services=[Process(**p) for p in raw["services"]], torchserve=torchserve)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


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


def up(settings: Settings, *, names: list[str] | None = None, timeout: float = 120.0, echo=print) -> StackState:
    """Start the broker (if none is configured) and the services, and wait until each is ready."""
    state_file, logs = _paths(settings)
    previous = StackState.load(state_file)
    if previous and any(alive(p.pid) for p in _all(previous)):
        raise StackError(f"a stack is already running (see `medsynth stack status`, state in {state_file})")
    broker = None
    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        handle = LocalBroker.start(topics=all_topics(settings.topic_prefix), log_path=logs / "broker.log")
        broker = Process("broker", handle.pid, log=str(logs / "broker.log"))
        bootstrap = handle.bootstrap
        echo(f"broker     local Kafka-protocol broker at {bootstrap} (pid {handle.pid})")
    state = StackState(bootstrap=bootstrap, broker=broker)
    state.save(state_file)
    env = _service_env(settings, bootstrap)
    try:
        if settings.sampler_backend is SamplerBackend.torchserve:
            state.torchserve, urls = _start_torchserve(settings, logs, timeout, echo)
            state.save(state_file)
            env.update(urls)
        for name in names or list(SERVICES):
            state.services.append(_spawn(name, settings.stack_base_port + SERVICES[name], env, logs))
            state.save(state_file)
        _wait_ready(state, timeout, echo)
    except BaseException:
        down(settings, echo=lambda *_: None)
        raise
    return state


def _start_torchserve(settings: Settings, logs: Path, timeout: float, echo) -> tuple[Process, dict[str, str]]:
    """TorchServe under a `medsynth torchserve` supervisor; returns it and the sampler's settings."""
    home = settings.home.resolve() / "torchserve"
    state_file = home / "state.json"
    state_file.unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    log_path = logs / "torchserve.log"
    argv = [sys.executable, "-m", "medsynth.local.cli", "torchserve", "--model-store", str(home / "model-store"),
            "--workdir", str(home), "--state-file", str(state_file)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    process = Process("torchserve", proc.pid, log=str(log_path))
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _signal(proc.pid, signal.SIGTERM)
            raise StackError(f"TorchServe did not start; last lines of {log_path}:\n{_tail(str(log_path))}")
        time.sleep(0.3)
    ts = json.loads(state_file.read_text())
    echo(f"{'torchserve':<10} ready on {ts['inference_url']} (management {ts['management_url']}, pid {proc.pid})")
    return process, {
        "MEDSYNTH_TORCHSERVE_INFERENCE_URL": ts["inference_url"],
        "MEDSYNTH_TORCHSERVE_MANAGEMENT_URL": ts["management_url"],
        "MEDSYNTH_TORCHSERVE_MODEL_STORE": ts["model_store"],
    }


def _service_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    env = dict(os.environ, MEDSYNTH_KAFKA_BOOTSTRAP=bootstrap, MEDSYNTH_HOME=str(settings.home.resolve()))
    if settings.store is StoreBackend.local:
        env["MEDSYNTH_STORE_ROOT"] = str(settings.local_store_root.resolve())
    return env


def _spawn(name: str, port: int, env: dict[str, str], logs: Path) -> Process:
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(services_dir() / name / "main.py")],
            env=dict(env, MEDSYNTH_HTTP_PORT=str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Process(name, proc.pid, port, str(log_path))


def _wait_ready(state: StackState, timeout: float, echo) -> None:
    pending = {p.name: p for p in state.services}
    deadline = time.monotonic() + timeout
    while pending:
        for name, proc in list(pending.items()):
            if not alive(proc.pid):
                raise StackError(f"{name} exited during start-up; last lines of {proc.log}:\n{_tail(proc.log)}")
            if probe(proc.port) == "ready":
                echo(f"{name:<10} ready on http://127.0.0.1:{proc.port} (pid {proc.pid})")
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise StackError(f"not ready after {timeout:.0f}s: {', '.join(pending)}; logs in {Path(state.services[0].log).parent}")
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
    """One row per process: name, pid, alive, port, readiness."""
    state = StackState.load(_paths(settings)[0])
    if state is None:
        return []
    return [
        {"name": p.name, "pid": p.pid, "alive": alive(p.pid), "port": p.port, "ready": probe(p.port) if alive(p.pid) else "-", "log": p.log}
        for p in _all(state)
    ]


def down(settings: Settings, *, grace: float = 15.0, echo=print) -> None:
    """SIGTERM every process (services first, broker last), SIGKILL what outlives ``grace``."""
    state_file, _ = _paths(settings)
    state = StackState.load(state_file)
    if state is None:
        echo("no stack is running")
        return
    for group in (state.services, [state.torchserve] if state.torchserve else [], [state.broker] if state.broker else []):
        for p in group:
            _signal(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(alive(p.pid) for p in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in group:
            if alive(p.pid):
                _signal(p.pid, signal.SIGKILL)
            echo(f"{p.name:<10} stopped")
    state_file.unlink(missing_ok=True)


def _all(state: StackState) -> list[Process]:
    return [p for p in (state.broker, state.torchserve) if p] + state.services


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
