"""The local stack's supervisor with small real processes: a process that exits is restarted after a
growing back-off, one that keeps dying is reported as a crash loop (and still retried), and stopping
goes layer by layer, escalating to SIGKILL for a process that ignores its stop signal."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from medsynth.local.supervisor import CRASH_LOOP_AFTER, ProcessSpec, StackFile, Supervisor, backoff


def spec(tmp_path: Path, name: str, code: str, layer: int = 0, stop_signal: int = signal.SIGTERM) -> ProcessSpec:
    return ProcessSpec(name, [sys.executable, "-c", code], {}, str(tmp_path / f"{name}.log"), layer=layer, stop_signal=stop_signal)


def states(path: Path) -> dict[str, object]:
    stack = StackFile.load(path)
    return {p.name: p for p in stack.processes} if stack else {}


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crashing_process_is_restarted_with_backoff_and_reported_as_a_crash_loop(tmp_path: Path) -> None:
    state_file = tmp_path / "stack.json"
    starts = tmp_path / "starts"
    crasher = spec(tmp_path, "crasher", f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); raise SystemExit(3)")
    steady = spec(tmp_path, "steady", "import time; time.sleep(600)")
    sup = Supervisor([steady, crasher], state_file, StackFile(supervisor_pid=0, bootstrap="", s3_endpoint=""), stop_grace_s=2)
    thread = threading.Thread(target=sup.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while (st := states(state_file).get("crasher")) is None or st.state != "crash-loop":
            assert time.monotonic() < deadline, states(state_file)
            time.sleep(0.2)
        crashed = states(state_file)
        assert crashed["crasher"].last_exit == 3 and crashed["crasher"].restarts >= CRASH_LOOP_AFTER - 1
        assert crashed["steady"].state == "running" and crashed["steady"].restarts == 0
        times = [float(t) for t in starts.read_text().split()]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g >= backoff(i + 1) * 0.9 for i, g in enumerate(gaps)), gaps  # 1 s, 2 s, 4 s …
    finally:
        sup.stopping.set()
        thread.join(timeout=30)
    assert {p.state for p in states(state_file).values()} == {"stopped"}


def test_stop_goes_layer_by_layer_and_kills_what_ignores_its_signal(tmp_path: Path) -> None:
    order = tmp_path / "order"
    on_term = f"import signal, sys, time\ndef bye(*_):\n    open({str(order)!r}, 'a').write(NAME + '\\n'); sys.exit(0)\n"
    server = spec(tmp_path, "server", on_term.replace("NAME", "'server'") + "signal.signal(signal.SIGINT, bye)\ntime.sleep(600)",
                  layer=0, stop_signal=signal.SIGINT)
    service = spec(tmp_path, "service", on_term.replace("NAME", "'service'") + "signal.signal(signal.SIGTERM, bye)\ntime.sleep(600)", layer=3)
    stubborn = spec(tmp_path, "stubborn", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)", layer=3)
    sup = Supervisor([server, service, stubborn], tmp_path / "stack.json", StackFile(supervisor_pid=0, bootstrap="", s3_endpoint=""), stop_grace_s=2)
    assert sup.start_all()
    time.sleep(1)  # the handlers are installed
    pids = {c.spec.name: c.proc for c in sup.children}
    started = time.monotonic()
    sup.stop_all()
    assert time.monotonic() - started < 10
    assert order.read_text().split() == ["service", "server"]  # services first; the server only after the layer above is gone
    assert pids["stubborn"].returncode == -signal.SIGKILL
    assert pids["server"].returncode == 0
