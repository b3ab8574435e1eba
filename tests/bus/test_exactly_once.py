"""Events are on the events topic once per event id, whatever happens between a send and its
acknowledgement: against tansu (on the session's SeaweedFS) through a relay that loses one produce
acknowledgement after the broker wrote the message (what a broker killed at that moment looks like
to the client), and a worker that finds a terminal record whose event was never acknowledged."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from medsynth.bus.admin import ensure_topics
from medsynth.bus.client import Bus
from medsynth.bus.messages import Event, JobKind, make_command, make_event, transition_id
from medsynth.bus.topics import events_topic
from medsynth.core.settings import Settings
from medsynth.jobs.announce import terminal_event
from medsynth.jobs.records import JobRecord, JobRecords, JobState
from medsynth.local.servers import start_tansu
from medsynth.store import ObjectStore
from medsynth.v1 import events_pb2, jobs_pb2

from lossy_link import LossyLink
from platform_fixtures import S3Server, worker_threads

KIND = JobKind.prepare_dataset


def read_all(bootstrap: str, topic: str, timeout: float = 30) -> list:
    """Every message of ``topic``, read to the end of each partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"{topic} has no partitions"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        messages: list = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=300).values():
                messages.extend(batch)
            ends = {tp: consumer.highwater(tp) for tp in partitions}
            if all(end is not None and consumer.position(tp) >= end for tp, end in ends.items()):
                return messages
    finally:
        consumer.close(autocommit=False)


def copies(messages: list, event_id: str) -> int:
    return sum(Event.FromString(m.value).event_id == event_id for m in messages)


@pytest.fixture
def lossy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, LossyLink]]:
    """A tansu of its own (own bucket) that tells clients to connect through a :class:`LossyLink`."""
    if request.config.getoption("--broker") != "tansu":
        pytest.skip("the relay needs a broker that advertises another port (tansu)")
    s3: S3Server = request.getfixturevalue("seaweedfs")
    s3.client().make_bucket(bucket := f"tansu-{uuid.uuid4().hex[:8]}")
    base = request.config.getoption("--server-base-port")
    broker_port, link_port = base + 24, base + 25
    with start_tansu(broker_port, s3.endpoint, s3.credentials, tmp_path / "broker.log", bucket=bucket,
                     die_with_parent=True, advertised_port=link_port):
        link = LossyLink(link_port, broker_port)
        try:
            yield Settings(kafka_bootstrap=f"127.0.0.1:{link_port}", topic_prefix="once", publish_timeout_s=5), link
        finally:
            link.close()


def test_an_event_whose_acknowledgement_was_lost_is_in_the_log_once(lossy: tuple[Settings, LossyLink]) -> None:
    settings, link = lossy
    topic = events_topic(settings.topic_prefix)
    bus = Bus(settings, client_id="worker")
    try:
        ensure_topics(bus, [(topic, 4)])
        job = f"{KIND.value}-{uuid.uuid4().hex[:16]}"
        started = bus.emit(make_event(job, KIND, event_id=transition_id(job, "started", 1), started=events_pb2.JobStarted(attempt=1)))
        link.lose_next_produce_ack()
        done = make_event(job, KIND, event_id=transition_id(job, "succeeded"), succeeded=events_pb2.JobSucceeded(result_keys={"r": "k"}))
        delivered = bus.emit(done)
        assert link.acks_lost == 1  # the broker wrote it and the client never heard so
        assert delivered.partition == started.partition and delivered.offset > started.offset
        messages = read_all(settings.kafka_bootstrap, topic)
        assert copies(messages, done.event_id) == 1, [Event.FromString(m.value).event_id for m in messages]
        # and an event that was never sent before still goes out after a lost acknowledgement elsewhere
        link.lose_next_produce_ack()
        bus.emit(make_event(job, KIND, event_id="other", progress=events_pb2.JobProgress(fraction=0.5)))
        later = make_event(job, KIND, event_id="later", progress=events_pb2.JobProgress(fraction=0.6))
        bus.emit(later)
        messages = read_all(settings.kafka_bootstrap, topic)
        assert copies(messages, "other") == 1 and copies(messages, "later") == 1
    finally:
        bus.close()


def test_a_terminal_record_left_unannounced_is_announced_once(platform_settings: Settings, store: ObjectStore) -> None:
    """A worker died after writing its job's terminal record: in one case after its event reached the
    log, in the other before. The next worker that receives the job's command announces the second
    and finds the first — one ``succeeded`` event each — and never runs the handler again."""
    bus = Bus(platform_settings, client_id="api")
    records = JobRecords(store)
    topic = events_topic(platform_settings.topic_prefix)
    jobs = {}
    for case in ("sent", "unsent"):
        job = f"{KIND.value}-{uuid.uuid4().hex[:16]}"
        start = bus.emit(make_event(job, KIND, event_id=transition_id(job, "started", 1), started=events_pb2.JobStarted(attempt=1)))
        record = JobRecord(job_id=job, kind=KIND, spec={}, state=JobState.succeeded, attempts=1, announced=False,
                           events_offset=start.offset, result_keys={"r": f"jobs/{job}/r"})
        records.put(record)
        if case == "sent":
            bus.emit(terminal_event(record))
        bus.send_command(KIND, make_command(job, KIND, jobs_pb2.PrepareDataset(dataset="d", size=16)))
        jobs[case] = job
    ran = []
    try:
        with worker_threads(platform_settings, store, KIND) as start_worker:
            start_worker(lambda spec, ctx: ran.append(ctx.job_id) or {})
            deadline = time.monotonic() + 60
            while not all(records.get(j).announced for j in jobs.values()):
                assert time.monotonic() < deadline, [records.get(j) for j in jobs.values()]
                time.sleep(0.2)
        messages = read_all(platform_settings.kafka_bootstrap, topic)
        for case, job in jobs.items():
            assert copies(messages, transition_id(job, "succeeded")) == 1, case
        assert ran == []
    finally:
        bus.close()
