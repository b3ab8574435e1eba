"""The local broker (librdkafka's mock cluster in a child process) with kafka-python clients:
acknowledged produce, consumer-group commits and redelivery, key partitioning, topic creation,
clean stop, and the command line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from medsynth.core.errors import InvalidInput, MedsynthError

from local_broker import (  # tests/local_broker.py: test tooling, not in the installed package
    AUTO_CREATE_PARTITIONS,
    CLIENT_API_VERSION,
    SCRIPT,
    LocalBroker,
    LocalBrokerError,
    parse_topic_spec,
    validate_topics,
)

ORDERS = "lb-orders"  # 3 partitions
KEYED = "lb-keyed"  # 4 partitions

# Small group timeouts: after a member leaves, the mock holds the next join for session - 1000 ms.
GROUP_OPTIONS = dict(
    api_version=CLIENT_API_VERSION,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=2000,
    heartbeat_interval_ms=500,
    fetch_max_wait_ms=100,
)


@pytest.fixture(scope="module")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("local-broker") / "broker.log"
    with LocalBroker.start(topics=[(ORDERS, 3), (KEYED, 4)], log_path=log, exit_with_parent=True) as handle:
        yield handle


@pytest.fixture
def producer(local_broker: LocalBroker) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=local_broker.bootstrap, api_version=CLIENT_API_VERSION, acks="all", linger_ms=0)
    yield p
    p.close(timeout=5)


def _group_consumer(broker: LocalBroker, group: str, topic: str) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, **GROUP_OPTIONS)
    consumer.subscribe([topic])
    return consumer


def _take(consumer: KafkaConsumer, n: int, timeout: float = 20.0) -> list:
    """Exactly ``n`` records, one poll at a time (so the consumer's position never runs ahead)."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < n:
        assert time.monotonic() < deadline, f"got {len(records)} of {n} records in {timeout}s"
        for batch in consumer.poll(timeout_ms=100, max_records=1).values():
            records.extend(batch)
    return records


def _quiet(consumer: KafkaConsumer, seconds: float = 0.5) -> list:
    """Whatever else arrives within ``seconds`` (expected: nothing)."""
    extra: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=100).values():
            extra.extend(batch)
    return extra


def test_topics_have_the_requested_partitions(local_broker: LocalBroker, producer: KafkaProducer) -> None:
    assert producer.partitions_for(ORDERS) == {0, 1, 2}
    assert producer.partitions_for(KEYED) == {0, 1, 2, 3}


def test_a_new_consumer_resumes_after_the_committed_offsets(local_broker: LocalBroker, producer: KafkaProducer) -> None:
    values = [f"order-{i}".encode() for i in range(9)]
    for i, value in enumerate(values):
        metadata = producer.send(ORDERS, value=value, partition=i % 3).get(timeout=10)
        assert metadata.offset >= 0
    group = f"g-{uuid.uuid4().hex[:8]}"

    first = _group_consumer(local_broker, group, ORDERS)
    committed = _take(first, 4)
    offsets = {}
    for record in committed:  # each partition is read in order: commit one past the last record read
        offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(record.offset + 1, "", -1)
    first.commit(offsets)
    read_not_committed = _take(first, 2)
    first.close(autocommit=False)

    second = _group_consumer(local_broker, group, ORDERS)
    try:
        expected = set(values) - {r.value for r in committed}
        redelivered = _take(second, len(expected))
        assert {r.value for r in redelivered} == expected
        assert {r.value for r in read_not_committed} <= expected
        assert _quiet(second) == []
        for tp, meta in offsets.items():
            assert second.committed(tp) == meta.offset
    finally:
        second.close(autocommit=False)


def test_keys_land_on_one_partition_each(local_broker: LocalBroker, producer: KafkaProducer) -> None:
    keys = [f"job-{k}".encode() for k in range(6)]
    sent: dict[bytes, set[int]] = {k: set() for k in keys}
    for round_ in range(5):
        for key in keys:
            metadata = producer.send(KEYED, key=key, value=b"%d" % round_).get(timeout=10)
            sent[key].add(metadata.partition)
    assert all(len(partitions) == 1 for partitions in sent.values()), sent
    assert len(set().union(*sent.values())) > 1, "all keys on one partition: the key hash is not used"

    reader = KafkaConsumer(bootstrap_servers=local_broker.bootstrap, **GROUP_OPTIONS | {"group_id": None})
    try:
        reader.assign([TopicPartition(KEYED, p) for p in range(4)])
        records = _take(reader, len(keys) * 5)
    finally:
        reader.close()
    for record in records:
        assert {record.partition} == sent[record.key]
    for key in keys:  # per key, the order of production survives
        assert [r.value for r in records if r.key == key] == [b"%d" % i for i in range(5)]


def test_create_topics_in_a_running_broker(local_broker: LocalBroker, producer: KafkaProducer) -> None:
    name = f"lb-late-{uuid.uuid4().hex[:6]}"
    assert local_broker.create_topics([(name, 2), (ORDERS, 3)]) == [name]
    assert producer.partitions_for(name) == {0, 1}
    assert local_broker.create_topics([(name, 2)]) == []  # idempotent
    with pytest.raises(InvalidInput, match="already exists with 2 partitions, not 5"):
        local_broker.create_topics([(name, 5)])
    with pytest.raises(InvalidInput, match="bad topic name"):
        local_broker.create_topics([("no spaces", 1)])


def test_unknown_topics_are_created_on_first_use(local_broker: LocalBroker, producer: KafkaProducer) -> None:
    name = f"lb-auto-{uuid.uuid4().hex[:6]}"
    producer.send(name, b"x").get(timeout=10)
    assert len(producer.partitions_for(name)) == AUTO_CREATE_PARTITIONS


def test_stop_ends_the_process_and_closes_the_port(tmp_path: Path) -> None:
    handle = LocalBroker.start(log_path=tmp_path / "broker.log")
    host, port = handle.bootstrap.split(",")[0].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=2).close()  # listening

    handle.stop()

    assert not handle.running
    with pytest.raises(ProcessLookupError):
        os.kill(handle.pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
    handle.stop()  # idempotent
    assert "stopped" in (tmp_path / "broker.log").read_text()


PARENT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from local_broker import LocalBroker
handle = LocalBroker.start(exit_with_parent=sys.argv[1] == "yes")
print(handle.pid, handle.bootstrap, flush=True)
time.sleep(120)
"""


def _accepts(address: tuple[str, int]) -> bool:
    """Whether a broker accepts connections at ``address`` (a reset is a broker going down mid-accept)."""
    try:
        socket.create_connection(address, timeout=2).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return False
    return True


@pytest.mark.parametrize("exit_with_parent", [True, False])
def test_a_parent_killed_with_sigkill(exit_with_parent: bool) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "yes" if exit_with_parent else "no", str(SCRIPT.parent)],
                              stdout=subprocess.PIPE, text=True)
    pid, bootstrap = parent.stdout.readline().split()
    host, port = bootstrap.rsplit(":", 1)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    try:
        deadline = time.monotonic() + 10
        while _accepts((host, int(port))) and exit_with_parent:
            assert time.monotonic() < deadline, "the broker outlived its parent"
            time.sleep(0.1)
        if not exit_with_parent:  # `medsynth stack up` relies on this
            time.sleep(0.5)
            assert _accepts((host, int(port)))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def test_several_brokers(tmp_path: Path) -> None:
    with LocalBroker.start(topics=[("multi", 6)], brokers=3, log_path=tmp_path / "broker.log") as handle:
        assert len(handle.bootstrap.split(",")) == 3
        p = KafkaProducer(bootstrap_servers=handle.bootstrap, api_version=CLIENT_API_VERSION, acks="all")
        try:
            acked = {p.send("multi", value=b"x", partition=i).get(timeout=10).partition for i in range(6)}
            assert acked == set(range(6))
        finally:
            p.close(timeout=5)


@pytest.mark.parametrize("to_file", [True, False], ids=["log-file", "temporary-log"])
def test_a_broker_that_cannot_start_reports_its_log(tmp_path: Path, to_file: bool) -> None:
    with pytest.raises(LocalBrokerError, match="exited with status 1 before it was ready") as err:
        LocalBroker.start(brokers=0, log_path=tmp_path / "broker.log" if to_file else None, timeout=20)
    assert "bad broker count 0: need 1..32" in str(err.value)


def test_command_line_writes_and_removes_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state" / "bootstrap"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--topic", "cli:2", "--state-file", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("bootstrap=127.0.0.1:")
        assert state.read_text().strip() == line.removeprefix("bootstrap=")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert not state.exists()


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        ([("", 1)], "bad topic name ''"),
        ([("a/b", 1)], "bad topic name 'a/b'"),
        ([("ok", 0)], "bad partition count 0 for topic 'ok'"),
        ([("ok", True)], "bad partition count True"),
        ([("ok", 1), ("ok", 2)], "topic 'ok' given twice, with 1 and 2 partitions"),
        (["ok"], "bad topic entry 'ok'"),
        ([5], "bad topic entry 5"),
    ],
)
def test_bad_topics_are_named(topics: list, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_topics(topics)
    assert message in str(err.value)


def test_missing_confluent_kafka_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import local_broker

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    local_broker.load_librdkafka.cache_clear()
    try:
        with pytest.raises(MedsynthError, match="needs confluent-kafka"):
            local_broker.load_librdkafka()
    finally:
        local_broker.load_librdkafka.cache_clear()


def test_topic_specs() -> None:
    assert parse_topic_spec("jobs.commands.train:4") == ("jobs.commands.train", 4)
    with pytest.raises(InvalidInput, match="expected NAME:PARTITIONS"):
        parse_topic_spec("jobs")
