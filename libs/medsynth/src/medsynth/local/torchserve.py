"""TorchServe as a child process, for the one-machine stack and the tests (in the cluster it is the
chart's sampler Deployment).

:class:`TorchServeProcess` runs ``python -m ts.model_server --start --foreground`` (the ``torchserve``
CLI, with the interpreter that runs medsynth, so its workers can import medsynth) in its own process
group, with a generated ``config.properties`` in a private work directory:

* every listener on a free loopback port — TorchServe 0.12 always starts its two gRPC servers too
  (default 7070/7071, no switch to turn them off), so those get free ports as well;
* ``TMPDIR``/``TEMP`` pointed into the work directory: the CLI keeps a *global* pid file
  ``$TMPDIR/.model_server.pid`` and refuses to start a second server while it names a live one,
  and the frontend puts its worker sockets (``.ts.sock.<port>``) and unpacked archives in
  ``java.io.tmpdir``; private temp dirs let several servers run side by side;
* token authorization on: TorchServe writes its management, inference and token-API keys to
  ``<workdir>/key_file.json`` (mode 0600) and asks for them as ``Authorization: Bearer``; keys last
  ``token_expiration_min`` (:data:`TOKEN_MINUTES`), and the client renews an expired one through the
  token API. The model-control API on (0.12 turns ``POST /models`` off by default) — registering an
  archive runs its code, which is why the management key is the sampler's alone; no config
  snapshots, no per-model pip installs, no system-metrics collector;
* ``max_response_size`` raised from 6.5 MB to :data:`MAX_RESPONSE_BYTES`: a larger answer does not
  fail cleanly, TorchServe reports the worker dead (HTTP 500) and restarts it;
* logs (its stdout/stderr, and the log4j files via ``LOG_LOCATION``) under ``<workdir>/logs``.

Clients talk to it through :class:`medsynth.sampling.torchserve.TorchServeClient`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.sampling.torchserve import SamplerUnavailable, TorchServeClient

log = logging.getLogger(__name__)

DEFAULT_STARTUP_TIMEOUT_S = 180.0
# Largest answer TorchServe may send: one generator pass is N * S * S * 5 bytes (float32 image + uint8
# mask), so this allows e.g. 4096 samples of 64 px or 3276 of 128 px.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_LOG_TAIL_BYTES = 4000
_LISTENERS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
_PORT_ATTEMPTS = 3


class TorchServeProcess:
    """One TorchServe server owned by this process. Use as a context manager, or ``start()``/``stop()``.

    ``model_store`` is where ``.mar`` files registered by bare file name are looked up; ``workdir``
    receives ``config.properties``, ``logs/`` and ``tmp/``. ``properties`` adds or overrides
    ``config.properties`` entries. ``base_port`` fixes the five listeners on it and the four ports
    above (inference, management, metrics, gRPC inference, gRPC management), so that a restarted
    server answers where its clients already look; unset, each gets a free port.
    """

    def __init__(
        self,
        model_store: str | Path,
        workdir: str | Path,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        properties: Mapping[str, str] | None = None,
        python: str | None = None,
        base_port: int | None = None,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.extra_properties = dict(properties or {})
        self.python = python or sys.executable
        self.base_port = base_port
        self.ports: dict[str, int] = {}
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # public ------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / "torchserve.out"

    @property
    def inference_url(self) -> str:
        return self._url("inference")

    @property
    def management_url(self) -> str:
        return self._url("management")

    @property
    def metrics_url(self) -> str:
        return self._url("metrics")

    @property
    def key_file(self) -> Path:
        """TorchServe writes it in its working directory once it is up."""
        return self.workdir / "key_file.json"

    def client(self, **kwargs: Any) -> TorchServeClient:
        return TorchServeClient(self.inference_url, self.management_url, key_file=self.key_file, **kwargs)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        """The process ids of the CLI wrapper and its descendants (Java frontend, Python workers)."""
        return [p.pid for p in _group_members(self._proc.pid)] if self._proc is not None else []

    def start(self) -> TorchServeProcess:
        """Launch TorchServe and wait until ``GET /ping`` answers Healthy. Raises
        :class:`SamplerUnavailable` (with the log's tail) if it exits or times out first. Free ports
        are picked just before the launch; if another process grabs one meanwhile, it retries."""
        if self._proc is not None:
            raise MedsynthError(f"TorchServe in {str(self.workdir)!r} is already started.")
        if not self.model_store.is_dir():
            raise InvalidInput(f"TorchServe model store {str(self.model_store)!r} is not a directory.")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # TorchServe writes its keys (key_file.json) in here
        for sub in ("logs", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._end_orphan()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch()
                return self
            except SamplerUnavailable:
                if self.base_port is not None or attempt == _PORT_ATTEMPTS or not _port_taken(self.log_path, log_offset):
                    raise
                log.warning("a TorchServe port was taken before it could bind (attempt %d); retrying", attempt)
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        if self.base_port is not None:
            self.ports = {name: self.base_port + i for i, name in enumerate(_LISTENERS)}
        else:
            self.ports = dict(zip(_LISTENERS, free_ports(len(_LISTENERS), self.host)))
        config = self._write_config()
        began = time.monotonic()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(config),
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.workdir / "server.pgid").write_text(str(self._proc.pid))
        log.info("starting TorchServe (pid %d) on %s, logs in %s", self._proc.pid, self.inference_url, self.log_path)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        log.info("TorchServe healthy at %s after %.1f s", self.inference_url, self.startup_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate the whole process group (CLI wrapper, Java frontend, Python workers): SIGTERM,
        then SIGKILL for whatever is left after ``timeout_s``. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        members = _group_members(proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        alive = _wait_gone(proc, members, timeout_s)
        if alive:
            log.warning("TorchServe processes %s ignored SIGTERM for %.0f s; killing them", [p.pid for p in alive], timeout_s)
            _signal_group(proc.pid, signal.SIGKILL)
            for p in alive:
                with contextlib.suppress(Exception):
                    p.kill()
            _wait_gone(proc, alive, 10.0)
        (self.workdir / "server.pgid").unlink(missing_ok=True)
        log.info("TorchServe at %s stopped", self._url("inference") if self.ports else self.workdir)

    def _end_orphan(self) -> None:
        """A server left running in this work directory by an owner that was killed (SIGKILL gives it
        no chance to stop its group) still holds the ports and the model store: end it first."""
        marker = self.workdir / "server.pgid"
        try:
            pgid = int(marker.read_text())
        except (OSError, ValueError):
            return
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            marker.unlink(missing_ok=True)
            return
        log.warning("ending TorchServe process group %d left behind in %s", pgid, self.workdir)
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        marker.unlink(missing_ok=True)

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", errors="replace")

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # internals ---------------------------------------------------------------------------------

    def _url(self, name: str) -> str:
        if name not in self.ports:
            raise MedsynthError("TorchServe has not been started, so it has no addresses yet.")
        return f"http://{self.host}:{self.ports[name]}"

    def _write_config(self) -> Path:
        props = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": self.host,
            "grpc_management_address": self.host,
            "grpc_inference_port": str(self.ports["grpc_inference"]),
            "grpc_management_port": str(self.ports["grpc_management"]),
            "model_store": str(self.model_store),
            "default_workers_per_model": "1",
            "install_py_dep_per_model": "false",
            "disable_token_authorization": "false",
            "token_expiration_min": str(TOKEN_MINUTES),
            "enable_model_api": "true",
            "enable_envvars_config": "false",
            "disable_system_metrics": "true",
            "metrics_mode": "prometheus",  # the metrics API answers in Prometheus format (0.12's default, log, leaves it empty)
            "default_response_timeout": "300",
            # 0.12's default (6.5 MB) is ~1,300 samples of 32 px; beyond it the worker "dies" (HTTP 500).
            "max_response_size": str(MAX_RESPONSE_BYTES),
            "vmargs": "-Xmx1g -XX:+UseSerialGC -XX:-UsePerfData",
            **self.extra_properties,
        }
        path = self.workdir / "config.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _command(self, config: Path) -> list[str]:
        return [
            self.python, "-m", "ts.model_server", "--start", "--foreground",
            "--ncs", "--enable-model-api",
            "--model-store", str(self.model_store), "--ts-config", str(config),
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        tmp, logs = str(self.workdir / "tmp"), str(self.workdir / "logs")
        # TS_CONFIG_FILE would override --ts-config; other TS_* are ignored (enable_envvars_config=false).
        env = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}
        env.update(TMPDIR=tmp, TEMP=tmp, TMP=tmp, LOG_LOCATION=logs, METRICS_LOCATION=logs)
        return env

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.inference_url}/ping"
        probe = TorchServeClient(self.inference_url, self.management_url, timeout_s=2.0, key_file=self.key_file)
        with probe:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    raise SamplerUnavailable(
                        f"TorchServe exited with status {code} while starting (ping {url}); log {self.log_path}:\n{self.log_tail()}"
                    )
                if probe.ping():
                    return
                if time.monotonic() > deadline:
                    raise SamplerUnavailable(
                        f"TorchServe did not answer Healthy at {url} within {self.startup_timeout_s:.0f} s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.25)


TOKEN_MINUTES = 60  # TorchServe's own default lifetime of a management or inference key


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (held open together while picking)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_taken(log_path: Path, offset: int) -> bool:
    """Whether the log written since ``offset`` reports a port that could not be bound."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return False
    return "Address already in use" in text or "BindException" in text


def _group_members(pid: int) -> list[Any]:
    """The wrapper and its descendants (psutil comes with TorchServe); empty if psutil is missing."""
    try:
        import psutil

        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(proc: subprocess.Popen[bytes], members: list[Any], timeout_s: float) -> list[Any]:
    """Wait for our child and the recorded group members to exit; return those still alive."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    if not members:
        return []
    import psutil

    _, alive = psutil.wait_procs(members, timeout=max(0.0, deadline - time.monotonic()))
    return alive


# --- the client ------------------------------------------------------------------------------------


