"""A compose model run through testcontainers: what `docker compose up` does with deploy/compose.yaml and
its override, one container per service, so that the tests hold each container (its logs, its health, a
crash of its process) while the services talk to each other as compose wires them.

The model is what `podman-compose config` prints for the files: merging, interpolation and profiles are
a compose implementation's, not this module's. This module only starts it: each service once the
services it depends on are started, healthy or completed (its ``depends_on`` conditions), with its
image, command, entrypoint, environment, working directory, volumes (named ones prefixed with the
project, bind mounts relative to the first file's folder), network mode, shared memory and restart
policy; then it waits for the service itself: a one-shot service (one that others wait on to complete)
until it exits 0, any other until its healthcheck passes — compose's own, else the image's, run in the
container as the engine would (podman without systemd runs no healthcheck by itself).

What the engine needs beyond compose (podman here: its runtime, ulimits it can set) comes as ``host_kwargs``;
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from testcontainers.core.container import DockerContainer

#: How long one service may take to become healthy or to complete.
READY_TIMEOUT_S = 600.0
POLL_S = 1.0


class ComposeError(RuntimeError):
    """A service failed to start, exited, or did not become healthy in time."""


@dataclass
class ServiceTimes:
    """Seconds from the run's start (``time.monotonic`` based)."""

    started: float | None = None
    ready: float | None = None  # healthy, or exited 0 for a one-shot service

    @property
    def start_to_ready(self) -> float | None:
        return None if self.started is None or self.ready is None else self.ready - self.started


@dataclass
class ComposeRun:
    config: dict[str, Any]
    project: str
    project_dir: Path
    host_kwargs: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, DockerContainer] = field(default_factory=dict)
    times: dict[str, ServiceTimes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = self.config["services"]
        self.one_shot = {dep for spec in self.services.values() for dep, how in _depends_on(spec).items()
                         if how == "service_completed_successfully"}
        self._client = docker.from_env()
        self._t0 = time.monotonic()
        self._state: dict[str, threading.Event] = {}
        self._errors: dict[str, str] = {}

    # -- up and down ---------------------------------------------------------------------------------

    def up(self, names: Iterable[str] | None = None, timeout: float = READY_TIMEOUT_S) -> None:
        """Start ``names`` (default: every service) and what they depend on, each as soon as its
        dependencies allow, and wait until all of them are ready. Raises :class:`ComposeError` naming
        the first service that failed, with its last log lines."""
        wanted = self._closure(names or list(self.services))
        self.down()  # leftovers of an earlier run of this project
        self._t0 = time.monotonic()
        for name in wanted:
            self._state[name + ":started"] = threading.Event()
            self._state[name + ":ready"] = threading.Event()
        threads = [threading.Thread(target=self._bring_up, args=(name, timeout), name=f"up-{name}", daemon=True) for name in wanted]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout * 2
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._errors:
            first = min(self._errors, key=lambda n: wanted.index(n))
            raise ComposeError(f"{first}: {self._errors[first]}")
        late = [name for name in wanted if not self._state[name + ":ready"].is_set()]
        if late:
            raise ComposeError(f"not ready: {', '.join(late)}")

    def down(self) -> None:
        """Remove this project's containers and named volumes (also those an earlier run left)."""
        for container in self._client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"}):
            container.remove(force=True, v=True)
        self.containers.clear()
        for volume in self._client.volumes.list():
            if volume.name.startswith(self.project + "_"):
                volume.remove(force=True)
        _end_exec_monitors(self.project)

    # -- one service ---------------------------------------------------------------------------------

    def _bring_up(self, name: str, timeout: float) -> None:
        try:
            for dep, how in _depends_on(self.services[name]).items():
                level = "started" if how == "service_started" else "ready"
                while not self._state[f"{dep}:{level}"].wait(1.0):
                    if self._errors:
                        return  # a dependency failed: compose would not start this one either
            self._start(name)
            self._wait_ready(name, timeout)
        except Exception as exc:  # noqa: BLE001 - reported by up()
            self._errors[name] = f"{exc}\n--- last lines of its log ---\n{self.logs(name, 40)}"

    def _start(self, name: str) -> None:
        spec = self.services[name]
        env = {key: str(value) for key, value in (spec.get("environment") or {}).items() if value is not None}
        container = DockerContainer(spec["image"], command=spec.get("command"), env=env, name=f"{self.project}-{name}-1")
        for source, target, mode in self._volumes(spec):
            container.with_volume_mapping(source, target, mode)
        kwargs: dict[str, Any] = {"labels": {"com.docker.compose.project": self.project, "com.docker.compose.service": name}}
        if "entrypoint" in spec:
            kwargs["entrypoint"] = spec["entrypoint"]
        for key, arg in (("working_dir", "working_dir"), ("network_mode", "network_mode"), ("shm_size", "shm_size"),
                         ("user", "user")):
            if key in spec:
                kwargs[arg] = spec[key]
        if policy := _restart_policy(spec.get("restart")):
            kwargs["restart_policy"] = policy
        container.with_kwargs(**kwargs, **self.host_kwargs)
        self.containers[name] = container
        container.start()
        self.times[name] = ServiceTimes(started=self._now())
        self._state[name + ":started"].set()

    def _wait_ready(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            wrapped = self.container(name)
            wrapped.reload()
            state = wrapped.attrs["State"]
            if name in self.one_shot:
                if state["Status"] == "exited":
                    if state["ExitCode"] != 0:
                        raise ComposeError(f"exited with status {state['ExitCode']}")
                    break
            elif state["Status"] not in ("running", "created"):
                raise ComposeError(f"is {state['Status']} (exit status {state.get('ExitCode')}) instead of running")
            elif self.healthy(name):
                break
            if time.monotonic() > deadline:
                raise ComposeError(f"not ready after {timeout:.0f}s")
            time.sleep(POLL_S)
        self.times[name].ready = self._now()
        self._state[name + ":ready"].set()

    # -- what the tests use --------------------------------------------------------------------------

    def container(self, name: str):
        """The docker-py container of service ``name``."""
        return self.containers[name].get_wrapped_container()

    def healthcheck(self, name: str) -> list[str] | None:
        """The service's healthcheck command, compose's, else the image's (which the engine copied into the
        container: podman's Docker API leaves it out of the image's description), as an exec argv; None if
        it has none. (Compose's is not handed to the engine: podman 4.3's Docker API splits a CMD test's
        arguments at spaces.)"""
        test = (self.services[name].get("healthcheck") or {}).get("test")
        if test is None:
            wrapped = self.container(name)
            if "Config" not in wrapped.attrs:
                wrapped.reload()
            test = (wrapped.attrs["Config"].get("Healthcheck") or {}).get("Test")
        if not test or test[0] == "NONE":
            return None
        if isinstance(test, str):
            return ["/bin/sh", "-c", test]
        return ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])

    def healthy(self, name: str) -> bool:
        """The healthcheck passes now (a service without one: it is running)."""
        argv = self.healthcheck(name)
        wrapped = self.container(name)
        if argv is None:
            wrapped.reload()
            return wrapped.status == "running"
        try:
            return wrapped.exec_run(argv).exit_code == 0
        except docker.errors.APIError:  # not running (restarting): not healthy
            return False

    def crash(self, name: str) -> tuple[int, int]:
        """SIGKILL the service's main process from the host, as the kernel's OOM killer or a crash ends it
        (the engine's restart policy then applies; `podman kill` would count as a stop by the user).
        Returns the killed pid and the container's restart count before."""
        wrapped = self.container(name)
        wrapped.reload()
        pid, restarts = wrapped.attrs["State"]["Pid"], wrapped.attrs.get("RestartCount", 0)
        if not pid:
            raise ComposeError(f"{name} has no running process to kill")
        os.kill(pid, signal.SIGKILL)
        return pid, restarts

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 120.0) -> float:
        """Wait until the engine has started ``name`` again (a new main process); the seconds waited."""
        start = time.monotonic()
        wrapped = self.container(name)
        while True:
            wrapped.reload()
            state = wrapped.attrs["State"]
            if state["Status"] == "running" and state["Pid"] not in (0, old_pid):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise ComposeError(f"{name} was not restarted within {timeout:.0f}s: {state}")
            time.sleep(0.5)

    def wait_healthy(self, name: str, timeout: float = READY_TIMEOUT_S) -> float:
        start = time.monotonic()
        while not self.healthy(name):
            if time.monotonic() - start > timeout:
                raise ComposeError(f"{name} not healthy after {timeout:.0f}s\n{self.logs(name, 40)}")
            time.sleep(POLL_S)
        return time.monotonic() - start

    def exec(self, name: str, argv: list[str]) -> tuple[int, str, str]:
        result = self.container(name).exec_run(argv, demux=True)
        out, err = result.output
        return result.exit_code, (out or b"").decode(), (err or b"").decode()

    def logs(self, name: str, lines: int = 60) -> str:
        if name not in self.containers:
            return "(not started)"
        try:
            return self.container(name).logs(tail=lines).decode(errors="replace")
        except docker.errors.APIError as exc:
            return f"(no log: {exc})"

    # -- helpers -------------------------------------------------------------------------------------

    def _closure(self, names: list[str]) -> list[str]:
        """``names`` and everything they depend on, dependencies first."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise ComposeError(f"dependency cycle: {' -> '.join(path + (name,))}")
            if name in order:
                return
            if name not in self.services:
                raise ComposeError(f"unknown service {name!r}; the model has {', '.join(self.services)}")
            for dep in _depends_on(self.services[name]):
                visit(dep, path + (name,))
            order.append(name)

        for name in names:
            visit(name, ())
        return order

    def _volumes(self, spec: dict[str, Any]) -> list[tuple[str, str, str]]:
        out = []
        for entry in spec.get("volumes") or []:
            if isinstance(entry, dict):  # the long syntax
                source, target, mode = entry.get("source", ""), entry["target"], "ro" if entry.get("read_only") else "rw"
                kind = entry.get("type", "volume")
            else:
                parts = entry.split(":")
                source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                out.append((str((self.project_dir / Path(source).expanduser()).resolve()), target, mode))
            else:
                out.append((f"{self.project}_{source}", target, mode))
        return out

    def _now(self) -> float:
        return time.monotonic() - self._t0


def _end_exec_monitors(project: str) -> None:
    """podman 4.3 leaves the conmon of an exec whose container was removed waiting 5 minutes (its
    --exit-delay): end those of this project's containers, by pid."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "conmon" and "--exec-attach" in cmdline and "-n" in cmdline:
            name = cmdline[cmdline.index("-n") + 1]
            if name.startswith(project + "-"):
                try:
                    proc.kill()
                except psutil.Error:
                    pass


def podman_ulimits() -> list:
    """podman on the team's machines fails to start a container with its default (or higher) limits
    ("error setting rlimit"): these work (deploy/images/build-local.sh builds with the same)."""
    from docker.types import Ulimit

    return [Ulimit(name="nofile", soft=20000, hard=20000), Ulimit(name="nproc", soft=32768, hard=32768)]


def _depends_on(spec: dict[str, Any]) -> dict[str, str]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (how or {}).get("condition", "service_started") for name, how in deps.items()}


def _restart_policy(restart: str | None) -> dict[str, Any] | None:
    if not restart or restart == "no":
        return None
    name, _, count = restart.partition(":")
    policy: dict[str, Any] = {"Name": name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


def loopback_ports(spec: dict[str, Any]) -> list[int]:
    """The loopback ports a service's configuration names for itself (its HTTP and C-STORE ports, and the
    listeners in its command line)."""
    env = spec.get("environment") or {}
    ports = [int(env[key]) for key in ("MEDSYNTH_HTTP_PORT", "MEDSYNTH_DICOM_PORT") if env.get(key)]
    command = " ".join(spec.get("command") or [])
    ports += [int(p) for p in re.findall(r"(?:port(?:\.grpc)?=|127\.0\.0\.1:|_port=)(\d{4,5})", command)]
    return sorted(set(ports))  # tansu's listener and advertised listener are one port
