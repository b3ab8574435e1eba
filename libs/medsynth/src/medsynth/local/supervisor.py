"""The local stack's supervisor: one process that starts every server and service of the stack in
order, restarts any that exits with an exponential back-off, and stops them all in reverse order.

``medsynth stack up`` starts it in the background (``python -m medsynth.local.supervise``); it writes
what it runs to ``<home>/stack.json`` after every change, which ``stack status`` reads. A process
that keeps dying soon after each start is shown as ``crash-loop`` there and is still retried, at
the longest back-off. ``stack down`` sends the supervisor SIGTERM; it stops the services first, then
TorchServe, the broker and SeaweedFS, each with its own stop signal and SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medsynth.core.clock import utcnow

log = logging.getLogger("medsynth.local.supervisor")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
#: A process that ran this long is healthy again: its back-off starts over.
HEALTHY_AFTER_S = 60.0
#: This many exits in a row, each before HEALTHY_AFTER_S, is a crash loop.
CRASH_LOOP_AFTER = 4
STOP_GRACE_S = 15.0


@dataclass
class ProcessSpec:
    """How to run one process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: str
    port: int | None = None  # its HTTP port (services: /readyz), for status
    stop_signal: int = signal.SIGTERM
    ready: Callable[[], bool] | None = None  # the next process starts only once this holds
    ready_timeout_s: float = 120.0
    layer: int = 0  # stop order: the highest layer stops first, all of one layer together


@dataclass
class ProcessState:
    """What ``stack.json`` says about one process."""

    name: str
    pid: int | None
    port: int | None
    log: str
    state: str = "starting"  # starting | running | backoff | crash-loop | stopped
    restarts: int = 0
    last_exit: int | None = None
    started_at: str | None = None
    stop_signal: int = signal.SIGTERM


@dataclass
class StackFile:
    supervisor_pid: int
    bootstrap: str
    s3_endpoint: str
    state: str = "starting"  # starting | up | failed | stopping
    error: str = ""
    processes: list[ProcessState] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> StackFile | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        raw["processes"] = [ProcessState(**p) for p in raw.get("processes", [])]
        return cls(**raw)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


def backoff(consecutive_failures: int) -> float:
    """Seconds before the next start after this many quick exits in a row: 1, 2, 4, … up to 30."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, consecutive_failures - 1))


class _Child:
    def __init__(self, spec: ProcessSpec, state: ProcessState) -> None:
        self.spec, self.state = spec, state
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_at = 0.0

    def spawn(self) -> None:
        Path(self.spec.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log, "ab") as out:
            self.proc = subprocess.Popen(self.spec.argv, env=self.spec.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        self.state.pid, self.state.started_at, self.state.state = self.proc.pid, utcnow().isoformat(), "running"
        log.info("%s started (pid %d)", self.spec.name, self.proc.pid)


class Supervisor:
    def __init__(self, specs: list[ProcessSpec], state_file: Path, stack: StackFile, *, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.state_file = state_file
        self.stop_grace_s = stop_grace_s
        self.stack = stack
        self.children = [_Child(s, ProcessState(s.name, None, s.port, s.log, stop_signal=s.stop_signal)) for s in specs]
        stack.processes = [c.state for c in self.children]
        self.stopping = threading.Event()

    def save(self) -> None:
        self.stack.save(self.state_file)

    def start_all(self) -> bool:
        """Start each process in order, waiting for its readiness check; False (and all stopped) on failure."""
        self.save()
        for child in self.children:
            child.spawn()
            self.save()
            if child.spec.ready is None:
                continue
            deadline = time.monotonic() + child.spec.ready_timeout_s
            while not child.spec.ready():
                if self.stopping.is_set() or child.proc.poll() is not None or time.monotonic() > deadline:
                    why = "stopped" if self.stopping.is_set() else (
                        f"exited with status {child.proc.poll()}" if child.proc.poll() is not None
                        else f"was not ready after {child.spec.ready_timeout_s:.0f}s")
                    self.stack.state, self.stack.error = "failed", f"{child.spec.name} {why}; see {child.spec.log}"
                    log.error(self.stack.error)
                    self.stop_all()
                    return False
                time.sleep(0.2)
        self.stack.state = "up"
        self.save()
        return True

    def watch_once(self) -> bool:
        """Restart what exited (after its back-off); returns whether anything changed."""
        now, changed = time.monotonic(), False
        for child in self.children:
            st = child.state
            if st.state in ("running",) and child.proc is not None and (code := child.proc.poll()) is not None:
                quick = now - child.started < HEALTHY_AFTER_S
                child.failures = child.failures + 1 if quick else 1
                st.last_exit, st.pid = code, None
                st.state = "crash-loop" if child.failures >= CRASH_LOOP_AFTER else "backoff"
                child.restart_at = now + backoff(child.failures)
                log.warning("%s exited with status %s; restarting in %.0f s (%s)", st.name, code, child.restart_at - now, st.state)
                changed = True
            elif st.state in ("backoff", "crash-loop") and now >= child.restart_at:
                st.restarts += 1
                crash_loop = st.state == "crash-loop"
                child.spawn()
                if crash_loop:  # stays marked until it has run long enough to count as healthy
                    st.state = "crash-loop"
                changed = True
            elif st.state == "crash-loop" and child.proc is not None and child.proc.poll() is None and now - child.started >= HEALTHY_AFTER_S:
                st.state, child.failures = "running", 0
                changed = True
        return changed

    def run(self) -> int:
        if not self.start_all():
            return 1
        while not self.stopping.wait(0.5):
            if self.watch_once():
                self.save()
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        """Stop layer by layer, highest first (services, then TorchServe, the broker, SeaweedFS): each
        process gets its stop signal and ``stop_grace_s`` before SIGKILL; one layer stops all at once."""
        from medsynth.local.servers import stop_process

        self.stack.state = "stopping"
        self.save()
        for layer in sorted({c.spec.layer for c in self.children}, reverse=True):
            group = [c for c in self.children if c.spec.layer == layer]
            threads = [threading.Thread(target=self._stop_one, args=(c, stop_process, self.stop_grace_s)) for c in group]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.save()

    @staticmethod
    def _stop_one(child: _Child, stop_process, grace: float) -> None:
        if child.proc is not None and child.proc.poll() is None:
            clean = stop_process(child.proc.pid, child.spec.stop_signal, grace, wait=child.proc.wait)
            log.info("%s stopped%s", child.spec.name, "" if clean else " (killed after the grace period)")
        child.state.state, child.state.pid = "stopped", None
