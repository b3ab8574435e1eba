"""A Kafka-protocol broker for tests (``pytest --broker mock``): librdkafka's mock cluster.

The mock cluster is compiled into the librdkafka that ships inside the confluent-kafka wheel; this
module drives it through ctypes. Clients (kafka-python) talk to it over TCP like to any broker. All
data lives in the broker process's memory and is gone when it stops.

It is test tooling, not part of the installed package: confluent-kafka is pinned in
requirements-tools.lock (``make install`` installs it), not in the services' requirements.lock.
The tests import it as ``local_broker`` (``tests/`` is on their path).

:func:`serve` runs a broker in the current process (``python tests/local_broker.py`` uses it);
:class:`LocalBroker` starts one as a child process (this file, run as a script) and talks to it.

Facts about the mock cluster (librdkafka 2.16) that clients must live with:

* **Addresses.** Every mock broker listens on ``127.0.0.1`` (IPv4 only) on a port the kernel picks;
  librdkafka has no setting or call that chooses the listen port, so the bootstrap string changes
  on every start.
* **Client protocol version.** Pin ``api_version=(2, 3)`` (:data:`CLIENT_API_VERSION`) in
  kafka-python. Left to detect the version, kafka-python first sends ApiVersions v4, which the mock
  cannot answer (logged as a decode ERROR, then it retries), settles on (2, 4) and then uses
  LeaveGroup v3, whose reply the mock gets wrong: closing a consumer then fails to leave its group.
  (1, x) is no good either: the mock's Produce v5 reply lacks a field and kafka-python retries
  forever, appending a duplicate each time. (2, 0)..(2, 3) work.
* **Topics.** Topics given to :func:`serve` / :meth:`LocalBroker.create_topics` get exactly the
  requested partitions. A Metadata request for an unknown topic with auto-creation allowed (the
  default of kafka-python's producer *and* consumer) creates it with **4 partitions**; producing
  to a topic that does not exist without such a Metadata request fails with
  UNKNOWN_TOPIC_OR_PARTITION. The admin API is not there: no CreateTopics, DeleteTopics,
  DescribeGroups, ListGroups or DescribeConfigs.
* **Retention.** Each partition keeps at most 5 MiB or 100 000 record batches; older batches are
  dropped silently (a consumer that far behind gets OFFSET_OUT_OF_RANGE and its reset policy).
* **Fetch latency.** A fetch that finds no data is answered after the client's ``fetch_max_wait_ms``
  even if data arrives meanwhile; use ``fetch_max_wait_ms=100`` or so in tests (kafka-python's
  default is 500). One fetch returns at most one record batch per partition.
* **Consumer groups** (classic protocol, offsets committed to the broker). The first member of an
  empty group waits ``group.initial.rebalance.delay.ms``, which the mock defaults to 3000 ms and
  this module sets to ``rebalance_delay_ms`` (default 0): a join into an empty group completes in
  ~0.1 s. The delay must stay below the consumers' ``session_timeout_ms``, or the mock expires the
  waiting member and the join never completes. Any other rebalance (a second member joins, a
  member leaves) holds the join open for ``session_timeout_ms - 1000`` ms (all of it when it is
  1000 or less): even a lone consumer that closes and reopens waits that long. A consumer that
  dies without leaving is evicted ``session_timeout_ms`` (checked each second) after its last
  heartbeat. With two or more members a follower's SyncGroup can arrive after the leader's has
  already completed the round; the mock then answers INVALID_REQUEST and kafka-python raises
  ``InvalidRequestError`` from ``poll()`` ("Unexpected error from SyncGroup"). Catch it and poll
  again: the consumer rejoins (another ``session_timeout_ms - 1000``) and the group settles.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import importlib.util
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from medsynth.core.errors import InvalidInput, MedsynthError

SCRIPT = Path(__file__).resolve()  # LocalBroker runs this file as its child
log = logging.getLogger("medsynth.tests.local_broker")  # not __main__ when run as a script

#: The kafka-python ``api_version`` to use against this broker (see the module docstring).
CLIENT_API_VERSION = (2, 3)
#: Partitions the mock gives a topic it creates on first use.
AUTO_CREATE_PARTITIONS = 4

BOOTSTRAP_PREFIX = "bootstrap="
REPLY_PREFIX = "reply="

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_MAX_PARTITIONS = 10_000
_RD_KAFKA_PRODUCER = 0
_ERR_TOPIC_ALREADY_EXISTS = 36


class LocalBrokerError(MedsynthError):
    """The local broker could not start, answer or stop."""


# --- topics -------------------------------------------------------------------------------------


def validate_topic(name: object, partitions: object) -> tuple[str, int]:
    """A legal Kafka topic name and a partition count in 1..10000, or :class:`InvalidInput`."""
    if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"bad topic name {name!r}: use 1-249 of A-Z a-z 0-9 . _ -")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= _MAX_PARTITIONS:
        raise InvalidInput(f"bad partition count {partitions!r} for topic {name!r}: need 1..{_MAX_PARTITIONS}")
    return name, partitions


def validate_topics(topics: Sequence[Sequence[object]]) -> list[tuple[str, int]]:
    """Validate ``(name, partitions)`` pairs; the same name twice must ask for the same count."""
    seen: dict[str, int] = {}
    for entry in topics:
        if not isinstance(entry, Sequence) or isinstance(entry, (str, bytes)) or len(entry) != 2:
            raise InvalidInput(f"bad topic entry {entry!r}: expected (name, partitions)")
        name, partitions = validate_topic(*entry)
        if seen.setdefault(name, partitions) != partitions:
            raise InvalidInput(f"topic {name!r} given twice, with {seen[name]} and {partitions} partitions")
    return list(seen.items())


def parse_topic_spec(spec: str) -> tuple[str, int]:
    """``"name:partitions"`` (the command line's ``--topic``) → ``(name, partitions)``."""
    name, sep, count = spec.rpartition(":")
    if not sep or not count.strip().isdigit():
        raise InvalidInput(f"bad topic spec {spec!r}: expected NAME:PARTITIONS, e.g. jobs:4")
    return validate_topic(name, int(count))


# --- librdkafka ---------------------------------------------------------------------------------


def _library_candidates() -> list[Path]:
    """librdkafka files bundled with the installed confluent-kafka (wheel layouts of each OS)."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or spec.origin is None:
        raise MedsynthError(
            "the local broker needs confluent-kafka (it bundles librdkafka and its mock cluster), pinned in "
            "requirements-tools.lock: `make install` (both locks) installs it"
        )
    package = Path(spec.origin).resolve().parent
    folders = [package.parent / "confluent_kafka.libs", package / ".dylibs", package]
    patterns = ["librdkafka*.so*", "librdkafka*.dylib", "librdkafka*.dll", "rdkafka*.dll"]
    found = []
    for folder in (f for f in folders if f.is_dir()):
        found += [path for pattern in patterns for path in sorted(folder.glob(pattern))]
    return found


@functools.cache
def load_librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka uses, with the mock-cluster functions declared.

    Falls back to a system librdkafka only when the wheel bundles none (a source build).
    """
    candidates = [str(p) for p in _library_candidates()]
    if not candidates and (system := ctypes.util.find_library("rdkafka")):
        candidates = [system]
    if not candidates:
        raise MedsynthError("confluent-kafka is installed but no librdkafka library was found next to it")
    try:
        lib = ctypes.CDLL(candidates[0])
    except OSError as exc:
        raise MedsynthError(f"cannot load librdkafka from {candidates[0]}: {exc}") from exc
    if not hasattr(lib, "rd_kafka_mock_cluster_new"):
        raise MedsynthError(f"{candidates[0]} was built without the mock cluster (rd_kafka_mock_cluster_new)")
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions used here (pointers must not be truncated)."""
    p, c_int, c_str = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "rd_kafka_version_str": ([], c_str),
        "rd_kafka_err2str": ([c_int], c_str),
        "rd_kafka_conf_new": ([], p),
        "rd_kafka_conf_set": ([p, c_str, c_str, c_str, ctypes.c_size_t], c_int),
        "rd_kafka_conf_destroy": ([p], None),
        "rd_kafka_new": ([c_int, p, c_str, ctypes.c_size_t], p),
        "rd_kafka_destroy": ([p], None),
        "rd_kafka_mock_cluster_new": ([p, c_int], p),
        "rd_kafka_mock_cluster_bootstraps": ([p], c_str),
        "rd_kafka_mock_cluster_destroy": ([p], None),
        "rd_kafka_mock_topic_create": ([p, c_str, c_int, c_int], c_int),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([p, ctypes.c_int32], None),
    }
    for name, (argtypes, restype) in signatures.items():
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype


class _MockCluster:
    """One mock cluster and the ``rd_kafka_t`` handle librdkafka needs to own it. Thread-safe."""

    def __init__(self, *, brokers: int, rebalance_delay_ms: int, debug: str | None = None) -> None:
        if not 1 <= brokers <= 32:
            raise InvalidInput(f"bad broker count {brokers!r}: need 1..32")
        if rebalance_delay_ms < 0:
            raise InvalidInput(f"bad rebalance delay {rebalance_delay_ms!r} ms: must be >= 0")
        self._lib = load_librdkafka()
        self._lock = threading.Lock()
        self._partitions: dict[str, int] = {}  # topics created here, with their partition counts
        self.replication = min(3, brokers)
        self._rk = self._new_handle(debug)
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._cluster:
            self._lib.rd_kafka_destroy(self._rk)
            raise LocalBrokerError(f"librdkafka could not create a mock cluster of {brokers} broker(s)")
        self.bootstrap = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()
        self._set_rebalance_delay(rebalance_delay_ms)

    def _new_handle(self, debug: str | None) -> int:
        lib = self._lib
        conf = lib.rd_kafka_conf_new()
        # The handle never connects anywhere; at level 4 librdkafka stays quiet about the missing
        # bootstrap.servers but still reports the mock's warnings and errors (on stderr).
        settings = {"client.id": "medsynth-local-broker", **({"debug": debug} if debug else {"log_level": "4"})}
        errstr = ctypes.create_string_buffer(512)
        for key, value in settings.items():
            if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, len(errstr)) != 0:
                lib.rd_kafka_conf_destroy(conf)
                raise InvalidInput(f"bad librdkafka setting {key}={value!r}: {errstr.value.decode()}")
        rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not rk:
            lib.rd_kafka_conf_destroy(conf)  # still ours when rd_kafka_new fails
            raise LocalBrokerError(f"librdkafka could not create a handle: {errstr.value.decode()}")
        return rk

    def _set_rebalance_delay(self, delay_ms: int) -> None:
        if hasattr(self._lib, "rd_kafka_mock_group_initial_rebalance_delay_ms"):
            self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, delay_ms)
        else:
            log.warning("this librdkafka cannot set the group initial rebalance delay; first joins take ~3 s")

    def create_topics(self, topics: Sequence[tuple[str, int]]) -> list[str]:
        """Create the topics that do not exist yet; returns the names created.

        A topic that exists with another partition count raises :class:`InvalidInput`, unless the
        mock created it on first use (its count is unknown here; a warning is logged).
        """
        created = []
        with self._lock:
            if not self._cluster:
                raise LocalBrokerError("the broker is shutting down")
            for name, partitions in topics:
                if self._create_topic(name, partitions):
                    created.append(name)
        return created

    def _create_topic(self, name: str, partitions: int) -> bool:
        err = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, self.replication)
        if err == 0:
            self._partitions[name] = partitions
            log.info("created topic %s with %d partition(s)", name, partitions)
            return True
        if err != _ERR_TOPIC_ALREADY_EXISTS:
            raise LocalBrokerError(f"creating topic {name!r} failed: {self._lib.rd_kafka_err2str(err).decode()}")
        existing = self._partitions.get(name)
        if existing is None:
            log.warning("topic %s already exists, created on first use (%d partitions?)", name, AUTO_CREATE_PARTITIONS)
        elif existing != partitions:
            raise InvalidInput(f"topic {name!r} already exists with {existing} partitions, not {partitions}")
        return False

    def close(self) -> None:
        """Stop the listeners and free everything; idempotent."""
        with self._lock:
            cluster, self._cluster = self._cluster, None
            if cluster:
                self._lib.rd_kafka_mock_cluster_destroy(cluster)
                self._lib.rd_kafka_destroy(self._rk)


# --- serving in this process --------------------------------------------------------------------

_stdout_lock = threading.Lock()


def _emit(line: str) -> None:
    """One protocol line to the parent on stdout (the only thing this module prints)."""
    with _stdout_lock:
        print(line, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT while inside; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        raise LocalBrokerError("serve() must run in the main thread: it waits for SIGTERM/SIGINT")

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _write_state(path: Path, bootstrap: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(bootstrap + "\n")
    os.replace(tmp, path)


def _clear_state(path: Path, bootstrap: str) -> None:
    """Remove the state file if it still names this broker (another may have replaced it)."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == bootstrap:
            path.unlink()


def _handle_command(cluster: _MockCluster, line: str) -> dict[str, object]:
    """One control request (a JSON object) → its reply. Errors become ``{"ok": false, ...}``."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or request.get("op") != "create_topics":
            raise InvalidInput(f"unknown control request {line!r}: expected op create_topics")
        created = cluster.create_topics(validate_topics(request.get("topics", [])))
    except (ValueError, TypeError, MedsynthError) as exc:
        log.warning("control request failed: %s", exc)
        return {"ok": False, "error": str(exc), "invalid": isinstance(exc, (InvalidInput, ValueError, TypeError))}
    return {"ok": True, "created": created}


def _control_loop(cluster: _MockCluster, stop: threading.Event, exit_on_eof: bool) -> None:
    """Answer control requests read from stdin, one JSON object per line, until stdin closes."""
    for line in sys.stdin:
        if line.strip():
            _emit(REPLY_PREFIX + json.dumps(_handle_command(cluster, line)))
    log.info("control channel closed%s", "; shutting down" if exit_on_eof else "")
    if exit_on_eof:
        stop.set()


def serve(
    *,
    brokers: int = 1,
    topics: Sequence[tuple[str, int]] = (),
    state_file: Path | None = None,
    rebalance_delay_ms: int = 0,
    control: bool = False,
    exit_on_eof: bool = False,
    debug: str | None = None,
) -> None:
    """Run a mock cluster in this process until SIGTERM or SIGINT, then destroy it and return.

    Creates ``topics`` (``(name, partitions)``), prints one line ``bootstrap=<host:port,...>`` to
    stdout, writes the bootstrap to ``state_file`` (atomically; removed again on the way out).
    ``rebalance_delay_ms`` is the groups' initial rebalance delay (see the module docstring).
    With ``control``, stdin carries requests, one JSON object per line
    (``{"op": "create_topics", "topics": [["name", 4]]}``), each answered by one stdout line
    ``reply={"ok": true, ...}``; with ``exit_on_eof`` as well, stdin closing (the parent is gone)
    stops the broker. ``debug`` is librdkafka's ``debug`` setting, e.g. ``"mock"`` (on stderr).
    Must run in the main thread.
    """
    wanted = validate_topics(topics)
    cluster = _MockCluster(brokers=brokers, rebalance_delay_ms=rebalance_delay_ms, debug=debug)
    stop = threading.Event()
    try:
        cluster.create_topics(wanted)
        with _stop_on_signals(stop):
            if state_file is not None:
                _write_state(state_file, cluster.bootstrap)
            log.info("local broker up at %s (%d broker(s), librdkafka %s)", cluster.bootstrap, brokers,
                     load_librdkafka().rd_kafka_version_str().decode())
            _emit(BOOTSTRAP_PREFIX + cluster.bootstrap)
            if control or exit_on_eof:
                control_thread = threading.Thread(target=_control_loop, args=(cluster, stop, exit_on_eof),
                                                  name="control", daemon=True)
                control_thread.start()
            while not stop.wait(0.5):
                pass
    finally:
        cluster.close()
        if state_file is not None:
            _clear_state(state_file, cluster.bootstrap)
        log.info("local broker at %s stopped", cluster.bootstrap)


# --- a broker in a child process ----------------------------------------------------------------


class LocalBroker:
    """A handle to a broker child process (``python tests/local_broker.py``).

    Use :meth:`start`; stop it with :meth:`stop` or by leaving a ``with`` block. The child runs in
    its own session, so a Ctrl-C aimed at the parent does not reach it; it outlives the parent
    unless started with ``exit_with_parent=True`` (then it stops when its stdin pipe closes).
    """

    def __init__(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None], log_file: IO[bytes],
                 log_path: Path | None) -> None:
        self._proc = proc
        self._lines = lines
        self._log_file = log_file
        self._log_path = log_path
        self._control_lock = threading.Lock()
        self.bootstrap = ""

    @classmethod
    def start(
        cls,
        *,
        topics: Sequence[tuple[str, int]] = (),
        brokers: int = 1,
        log_path: Path | None = None,
        timeout: float = 30.0,
        rebalance_delay_ms: int = 0,
        exit_with_parent: bool = False,
    ) -> LocalBroker:
        """Spawn a broker, wait for its bootstrap line and return the handle.

        The child's stderr (its log and librdkafka's) goes to ``log_path`` (appended) or to a
        temporary file; either is quoted in the error when the child dies or is not ready within
        ``timeout`` seconds.
        """
        command = [sys.executable, str(SCRIPT), "--brokers", str(brokers),
                   "--rebalance-delay-ms", str(rebalance_delay_ms), "--control"]
        command += [arg for name, n in validate_topics(topics) for arg in ("--topic", f"{name}:{n}")]
        if exit_with_parent:
            command.append("--exit-on-eof")
        handle = cls._spawn(command, log_path)
        handle._await_bootstrap(timeout)
        log.info("local broker %s started at %s", handle.pid, handle.bootstrap)
        return handle

    @classmethod
    def _spawn(cls, command: list[str], log_path: Path | None) -> LocalBroker:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        else:
            log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                text=True, encoding="utf-8", start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump_lines, args=(proc.stdout, lines), name=f"broker-{proc.pid}-stdout",
                         daemon=True).start()
        return cls(proc, lines, log_file, log_path)

    def _await_bootstrap(self, timeout: float) -> None:
        try:
            line = self._lines.get(timeout=timeout)
            timed_out = False
        except queue.Empty:
            line, timed_out = None, True
        if line is not None and line.startswith(BOOTSTRAP_PREFIX):
            self.bootstrap = line.removeprefix(BOOTSTRAP_PREFIX)
            return
        if line is None and not timed_out:  # stdout closed: the child is on its way out
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        tail = self.log_tail()  # before stop() closes a temporary log
        self.stop(timeout=5)
        if timed_out:
            problem = f"was not ready after {timeout:.0f}s"
        elif line is None:
            problem = f"exited with status {self._proc.returncode} before it was ready"
        else:
            problem = f"printed {line!r} instead of its bootstrap"
        raise LocalBrokerError(f"local broker {problem}; its log:\n{tail}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def create_topics(self, topics: Sequence[tuple[str, int]], *, timeout: float = 10.0) -> list[str]:
        """Create topics (``(name, partitions)``) in the running broker; returns the names created.

        Topics that already exist with the same count are left alone; another count raises
        :class:`InvalidInput`.
        """
        request = json.dumps({"op": "create_topics", "topics": validate_topics(topics)})
        with self._control_lock:
            reply = self._ask(request, timeout)
        if not reply.get("ok"):
            error = InvalidInput if reply.get("invalid") else LocalBrokerError
            raise error(f"local broker refused to create topics: {reply.get('error')}")
        return list(reply.get("created", []))

    def _ask(self, request: str, timeout: float) -> dict[str, object]:
        if not self.running or self._proc.stdin is None:
            raise LocalBrokerError(f"local broker {self.pid} is not running")
        try:
            self._proc.stdin.write(request + "\n")
            self._proc.stdin.flush()
        except OSError as exc:
            raise LocalBrokerError(f"local broker {self.pid} is not listening: {exc}") from exc
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise LocalBrokerError(f"local broker {self.pid} exited; its log:\n{self.log_tail()}")
            if line.startswith(REPLY_PREFIX):
                return json.loads(line.removeprefix(REPLY_PREFIX))
            log.debug("local broker %s printed %r", self.pid, line)
        raise LocalBrokerError(f"local broker {self.pid} did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("local broker %s ignored SIGTERM for %.0fs; killing it", self.pid, timeout)
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log_file.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the child wrote to stderr."""
        try:
            if self._log_path is not None:
                text = self._log_path.read_text(errors="replace")
            else:
                self._log_file.flush()
                self._log_file.seek(0)
                text = self._log_file.read().decode(errors="replace")
        except (OSError, ValueError):  # ValueError: the temporary file is already closed
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalBroker(pid={self.pid}, bootstrap={self.bootstrap!r}, running={self.running})"


def _pump_lines(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Forward the child's stdout lines to ``lines``; ``None`` marks its end."""
    try:
        if stream is not None:
            for line in stream:
                lines.put(line.rstrip("\n"))
    except (OSError, ValueError):  # the stream was closed under us
        pass
    finally:
        lines.put(None)


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/local_broker.py",
        description="Run a local in-memory Kafka-protocol broker (librdkafka's mock cluster) until SIGTERM/Ctrl-C.",
    )
    parser.add_argument("--brokers", type=int, default=1, help="number of brokers (default 1)")
    parser.add_argument("--topic", action="append", default=[], type=_topic_arg, metavar="NAME:PARTITIONS",
                        help="create this topic at start (repeatable)")
    parser.add_argument("--state-file", type=Path, help="write the bootstrap servers to this file")
    parser.add_argument("--rebalance-delay-ms", type=int, default=0,
                        help="consumer groups' initial rebalance delay (default 0; the mock's own is 3000)")
    parser.add_argument("--control", action="store_true", help="serve JSON control requests on stdin")
    parser.add_argument("--exit-on-eof", action="store_true", help="stop when stdin closes (implies --control)")
    parser.add_argument("--debug", help="librdkafka debug contexts, e.g. mock or mock,protocol (on stderr)")
    return parser


def _topic_arg(spec: str) -> tuple[str, int]:
    try:
        return parse_topic_spec(spec)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    from medsynth.core.logging import configure_logging

    args = _parser().parse_args(argv)
    configure_logging("broker")
    try:
        serve(brokers=args.brokers, topics=args.topic, state_file=args.state_file,
              rebalance_delay_ms=args.rebalance_delay_ms, control=args.control, exit_on_eof=args.exit_on_eof,
              debug=args.debug)
    except MedsynthError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
