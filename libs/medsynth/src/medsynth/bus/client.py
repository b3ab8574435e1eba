"""The Kafka bus through kafka-python: acknowledged publishing and consumer construction."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

from medsynth.bus.topics import command_topic, events_topic
from medsynth.core.errors import MedsynthError
from medsynth.core.settings import Settings
from medsynth.bus.messages import Command, Event, JobKind

log = logging.getLogger(__name__)


class BusError(MedsynthError):
    """The broker is unreachable or did not acknowledge a message."""


class Bus:
    """Publishes protobuf messages and builds consumers. Safe to share between threads.

    Publishing waits for the broker's acknowledgement from all in-sync replicas (``acks='all'``): when
    :meth:`publish` returns, the message is in the log.
    """

    def __init__(self, settings: Settings, *, client_id: str = "medsynth") -> None:
        if not settings.kafka_bootstrap:
            raise BusError("MEDSYNTH_KAFKA_BOOTSTRAP is not set; start a broker with `medsynth stack up`.")
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.client_id = client_id
        self._producer = None
        self._lock = threading.Lock()

    def client_options(self) -> dict:
        """What every kafka-python client of this bus is built with (bootstrap, client id, protocol)."""
        version = self.settings.kafka_api_version
        return dict(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            client_id=self.client_id,
            api_version=tuple(int(p) for p in version.split(".")) if version else None,
        )

    def _get_producer(self):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        with self._lock:
            if self._producer is None:
                try:
                    timeout_ms = int(self.settings.publish_timeout_s * 1000)
                    self._producer = KafkaProducer(
                        **self.client_options(),
                        acks="all",
                        retries=5,
                        max_in_flight_requests_per_connection=1,
                        linger_ms=0,
                        max_block_ms=timeout_ms,  # waiting for metadata when the broker is down
                        request_timeout_ms=timeout_ms,
                        delivery_timeout_ms=timeout_ms,
                    )
                except KafkaError as exc:
                    raise BusError(f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
            return self._producer

    def publish(self, topic: str, key: str, value: bytes, *, timeout: float | None = None) -> None:
        """Send one message and wait until the broker acknowledges it, at most ``timeout`` seconds
        (default ``publish_timeout_s``)."""
        from kafka.errors import KafkaError

        try:
            future = self._get_producer().send(topic, key=key.encode(), value=value)
            future.get(timeout=timeout or self.settings.publish_timeout_s)
        except KafkaError as exc:
            raise BusError(f"publishing to {topic} failed: {exc}") from exc

    def send_command(self, kind: JobKind, command: Command) -> None:
        self.publish(command_topic(self.prefix, kind), command.job_id, command.SerializeToString())

    def emit(self, event: Event) -> None:
        self.publish(events_topic(self.prefix), event.job_id or event.event_id, event.SerializeToString())

    def reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether a broker of the bootstrap list accepts a connection now (readiness checks).

        A fresh TCP connection each time, not the producer's state: kafka-python replaces its
        bootstrap connection once it knows the cluster, after which ``bootstrap_connected()`` stays
        false on a healthy broker."""
        for server in self.settings.kafka_bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def consumer(self, topics: Sequence[str], group: str, **overrides):
        """A consumer in ``group`` that never commits on its own: the caller commits after its work is done."""
        from kafka import KafkaConsumer

        options = dict(
            **self.client_options(),
            group_id=group,
            fetch_max_wait_ms=100,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1,
            session_timeout_ms=self.settings.session_timeout_ms,
            request_timeout_ms=max(30_000, self.settings.session_timeout_ms + 5_000),
            heartbeat_interval_ms=max(self.settings.session_timeout_ms // 5, 500),
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
        )
        options.update(overrides)
        consumer = KafkaConsumer(**options)
        consumer.subscribe(list(topics))
        return consumer

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None
