"""TorchServe as a child process, and a small client for its management and inference APIs.

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

:class:`TorchServeClient` registers ``.mar`` archives (idempotently) and calls the sampler handler
(``services/sampler/handler.py``). Every failure to reach TorchServe, and every 5xx or unknown-model
answer, is a :class:`SamplerUnavailable` naming the URL.
"""

from __future__ import annotations

import contextlib
import io
import json
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

import httpx
import numpy as np

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.runtime.telemetry import TORCHSERVE_REQUESTS, TORCHSERVE_SECONDS
from medsynth.sampling.archive import check_model_name

log = logging.getLogger(__name__)

DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_REQUEST_TIMEOUT_S = 300.0
# Largest answer TorchServe may send: one generator pass is N * S * S * 5 bytes (float32 image + uint8
# mask), so this allows e.g. 4096 samples of 64 px or 3276 of 128 px.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_LOG_TAIL_BYTES = 4000
_LISTENERS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
_PORT_ATTEMPTS = 3


class SamplerUnavailable(MedsynthError):
    """The sampling backend (TorchServe) cannot be reached or cannot serve; the message names the URL."""


# --- the process -----------------------------------------------------------------------------------


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


def _healthy(http: httpx.Client, url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        response = http.get(url, headers=headers)
        return response.status_code == 200 and response.json().get("status") == "Healthy"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


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


class TorchServeClient:
    """The management and inference APIs of one TorchServe server. ``key_file`` is the server's
    ``key_file.json`` (token authorization); without one, requests go without a token, which only a
    server with token authorization disabled answers."""

    def __init__(self, inference_url: str, management_url: str, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 key_file: str | Path | None = None) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file) if key_file else None
        self._keys: dict[str, str] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TorchServeClient({self.inference_url!r}, {self.management_url!r})"

    def ping(self) -> bool:
        """Whether the inference API answers Healthy (never raises)."""
        url = f"{self.inference_url}/ping"
        try:
            headers = {"Authorization": f"Bearer {self._key('inference')}"} if self.key_file is not None else {}
        except SamplerUnavailable:  # no key file yet: the server is not up
            return False
        if _healthy(self._http, url, headers):
            return True
        self._keys = {}  # a restarted server has written new keys: read them at the next call
        return False

    def register(
        self,
        mar: str | Path,
        model_name: str,
        *,
        initial_workers: int = 1,
        response_timeout_s: int | None = None,
    ) -> bool:
        """Register an archive and wait for its workers (``synchronous=true``). Returns ``True`` if
        registered now, ``False`` if ``model_name`` was already registered (nothing changes then).

        ``mar`` is a file name in the server's model store, an ``http(s)://`` or ``file://`` URL, or
        a :class:`~pathlib.Path` (sent as a ``file://`` URL; the server must be able to read it).
        """
        check_model_name(model_name)
        if initial_workers < 1:
            raise InvalidInput(f"initial_workers must be at least 1, got {initial_workers}.")
        params: dict[str, Any] = {
            "url": _archive_url(mar),
            "model_name": model_name,
            "initial_workers": initial_workers,
            "synchronous": "true",
        }
        if response_timeout_s is not None:
            params["response_timeout"] = int(response_timeout_s)
        url = f"{self.management_url}/models"
        began = time.monotonic()
        response = self._request("POST", url, params=params)
        if response.status_code == 409 and self.is_registered(model_name):
            log.info("model %r is already registered at %s", model_name, self.management_url)
            return False
        _raise_for_status(response, url, f"registering {params['url']!r} as {model_name!r}")
        log.info(
            "registered model %r from %s at %s in %.1f s (workers ready)",
            model_name, params["url"], self.management_url, time.monotonic() - began,
        )  # fmt: skip
        return True

    def is_registered(self, model_name: str) -> bool:
        url = f"{self.management_url}/models/{check_model_name(model_name)}"
        response = self._request("GET", url)
        if response.status_code == 404:
            return False
        _raise_for_status(response, url, f"describing model {model_name!r}")
        return True

    def infer(self, model_name: str, payload: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """POST ``payload`` (the sampler handler's JSON request) and decode its ``.npz`` answer
        into ``(images, masks)``."""
        url = f"{self.inference_url}/predictions/{check_model_name(model_name)}"
        response = self._post_json(url, payload, model_name)
        return _decode_npz(response.content, url)

    def describe(self, model_name: str, mode: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The handler's ``describe`` answer for a sampling ``mode``: generator spec, mode, noise shapes,
        weights fingerprint, worker software. A mode the generator cannot serve raises :class:`InvalidInput`."""
        url = f"{self.inference_url}/predictions/{check_model_name(model_name)}"
        response = self._post_json(url, {"describe": True, **(mode or {})}, model_name)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise SamplerUnavailable(f"TorchServe at {url} answered describe with non-JSON: {response.text[:200]!r}") from exc

    # internals ---------------------------------------------------------------------------------

    def _post_json(self, url: str, payload: Mapping[str, Any], model_name: str) -> httpx.Response:
        response = self._request("POST", url, content=json.dumps(dict(payload)), headers={"Content-Type": "application/json"})
        if response.status_code == 400:
            raise InvalidInput(f"TorchServe model {model_name!r} at {url} rejected the request: {_error_text(response)}")
        _raise_for_status(response, url, f"inference on model {model_name!r}")
        return response

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One call with the API's key; a refused key (expired) is renewed and the call tried again once."""
        api = "management" if url.startswith(self.management_url) else "inference"
        response = self._send(method, url, api, **kwargs)
        if _key_refused(response) and self.key_file is not None:
            self._renew(api)
            response = self._send(method, url, api, **kwargs)
            if _key_refused(response):
                raise SamplerUnavailable(f"TorchServe at {url} refuses the {api} key of {self.key_file}: {_error_text(response)}")
        return response

    def _send(self, method: str, url: str, api: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.key_file is not None:
            headers["Authorization"] = f"Bearer {self._key(api)}"
        started = time.perf_counter()
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            TORCHSERVE_REQUESTS.labels(api, "unreachable").inc()
            raise _unavailable(url, exc, self._http.timeout.read) from exc
        TORCHSERVE_SECONDS.labels(api).observe(time.perf_counter() - started)
        TORCHSERVE_REQUESTS.labels(api, str(response.status_code)).inc()
        return response

    def _key(self, api: str) -> str:
        if api not in self._keys:
            self._read_keys()
        return self._keys[api]

    def _read_keys(self) -> None:
        assert self.key_file is not None
        try:
            raw = json.loads(self.key_file.read_text())
            self._keys = {"management": raw["management"]["key"], "inference": raw["inference"]["key"], "api": raw["API"]["key"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SamplerUnavailable(f"TorchServe's key file {self.key_file} cannot be read: {exc}") from exc

    def _renew(self, api: str) -> None:
        """Ask the token API for a fresh ``api`` key (TorchServe rewrites its key file), then reread it."""
        self._read_keys()  # another client may have renewed it already
        url = f"{self.management_url}/token"
        try:
            self._http.get(url, params={"type": api}, headers={"Authorization": f"Bearer {self._keys['api']}"})
        except httpx.HTTPError as exc:
            raise _unavailable(url, exc, self._http.timeout.read) from exc
        self._read_keys()
        log.info("renewed the TorchServe %s key", api)


def _unavailable(url: str, exc: httpx.HTTPError, read_timeout: float | None) -> SamplerUnavailable:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return SamplerUnavailable(f"TorchServe at {url} is unreachable ({detail}); is it running?")
    if isinstance(exc, httpx.TimeoutException):
        return SamplerUnavailable(f"TorchServe at {url} did not answer within {read_timeout} s ({detail}).")
    return SamplerUnavailable(f"TorchServe at {url} failed ({detail}).")


def _archive_url(mar: str | Path) -> str:
    if isinstance(mar, Path):
        return mar.resolve().as_uri()
    return mar


def _key_refused(response: httpx.Response) -> bool:
    """TorchServe 0.12 answers a missing, wrong or expired key with 400 ("Token Authorization failed. Token
    either incorrect, expired, or not provided correctly"; "Authentication" on some routes)."""
    return response.status_code == 401 or (response.status_code == 400 and "Token either incorrect, expired" in response.text)


def _raise_for_status(response: httpx.Response, url: str, doing: str) -> None:
    if response.is_success:
        return
    raise SamplerUnavailable(f"TorchServe at {url} failed {doing}: HTTP {response.status_code}: {_error_text(response)}")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:500]


def _decode_npz(content: bytes, url: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            images, masks = npz["images"], npz["masks"]
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise SamplerUnavailable(f"TorchServe at {url} answered with something that is not the sampler's npz: {exc}") from exc
    return images, masks
