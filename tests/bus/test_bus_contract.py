"""The broker contract the platform relies on, against the session's broker (tansu on SeaweedFS by
default; ``--broker=mock`` for librdkafka's mock) through the system's own Bus: topics with their
partitions, acknowledged publishing, keys on one partition, a consumer group resuming after its
committed offsets. And, on tansu, what the mock cannot do: messages and committed offsets that
survive a restart of the broker process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka.structs import OffsetAndMetadata, TopicPartition

from medsynth.bus.admin import ensure_topics
from medsynth.bus.client import Bus
from medsynth.core.settings import Settings
from medsynth.local.servers import start_tansu

from platform_fixtures import S3Server, TestBroker


def take(consumer, n: int, timeout: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < n:
        assert time.monotonic() < deadline, f"got {len(records)} of {n} records in {timeout}s"
        for batch in consumer.poll(timeout_ms=200, max_records=1).values():
            records.extend(batch)
    return records


def test_topics_publishing_keys_and_group_offsets(platform_settings: Settings, broker: TestBroker) -> None:
    topic = f"{platform_settings.topic_prefix}.contract"
    broker.create_topics([(topic, 3)])
    bus = Bus(platform_settings, client_id="contract")
    try:
        keys = [f"job-{k}" for k in range(6)]
        for round_ in range(3):
            for key in keys:
                bus.publish(topic, key, f"{key}:{round_}".encode())
        group = f"g-{uuid.uuid4().hex[:8]}"
        first = bus.consumer([topic], group)
        records = take(first, 18)
        by_key: dict[bytes, set[int]] = {}
        for r in records:
            by_key.setdefault(r.key, set()).add(r.partition)
        assert all(len(p) == 1 for p in by_key.values()), by_key  # one key, one partition: per-job order
        assert {r.partition for r in records} <= {0, 1, 2}
        committed = {TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, "", -1) for r in records[:5]}
        first.commit(committed)
        first.close(autocommit=False)
        second = bus.consumer([topic], group)
        try:
            again = take(second, 1)
            tp = TopicPartition(again[0].topic, again[0].partition)
            if tp in committed:
                assert again[0].offset >= committed[tp].offset  # nothing committed comes back
        finally:
            second.close(autocommit=False)
    finally:
        bus.close()


def test_messages_and_offsets_survive_a_broker_restart(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if request.config.getoption("--broker") != "tansu":
        pytest.skip("the in-memory mock broker keeps nothing across a restart, by design")
    s3: S3Server = request.getfixturevalue("seaweedfs")
    s3.client().make_bucket(bucket := f"tansu-{uuid.uuid4().hex[:8]}")
    port = request.config.getoption("--server-base-port") + 21  # beside the session broker
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix="persist")
    group, topic = "persist.g", "persist.t"

    with start_tansu(port, s3.endpoint, s3.credentials, tmp_path / "b1.log", bucket=bucket, die_with_parent=True) as broker:
        bus = Bus(settings, client_id="p")
        ensure_topics(bus, [(topic, 1)])
        for i in range(6):
            bus.publish(topic, "k", b"m%d" % i)
        consumer = bus.consumer([topic], group)
        got = take(consumer, 3)
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(got[-1].offset + 1, "", -1)})
        consumer.close(autocommit=False)
        bus.close()
        broker.proc.kill()  # SIGKILL: no chance to flush anything more
        broker.proc.wait()

    with start_tansu(port, s3.endpoint, s3.credentials, tmp_path / "b2.log", bucket=bucket, die_with_parent=True):
        bus = Bus(settings, client_id="p")
        consumer = bus.consumer([topic], group)
        try:
            rest = take(consumer, 3)
            assert [r.value for r in rest] == [b"m3", b"m4", b"m5"]  # the log and the group's offset both survived
        finally:
            consumer.close(autocommit=False)
            bus.close()
