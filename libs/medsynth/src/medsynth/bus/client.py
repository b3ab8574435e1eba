"""The Kafka bus through kafka-python: acknowledged publishing and consumer construction."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from medsynth.bus.topics import command_topic, events_topic
from medsynth.core.errors import MedsynthError
from medsynth.core.settings import KafkaSecurityProtocol, Settings
from medsynth.bus.messages import Command, Event, JobKind

log = logging.getLogger(__name__)


class BusError(MedsynthError):
    """The broker is unreachable or did not acknowledge a message."""


def kafka_security_options(settings: Settings) -> dict:
    """kafka-python's transport-security options from the settings (validated there): TLS with the brokers'
    CA and an optional client certificate, SASL PLAIN or SCRAM with the user's password. Nothing for
    PLAINTEXT, so that a plaintext client is built exactly as before."""
    protocol = settings.kafka_security_protocol
    options: dict = {}
    if protocol is KafkaSecurityProtocol.plaintext:
        return options
    options["security_protocol"] = protocol.value
    if protocol.tls:
        options["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for option, path in (("ssl_cafile", settings.kafka_ssl_cafile), ("ssl_certfile", settings.kafka_ssl_certfile),
                             ("ssl_keyfile", settings.kafka_ssl_keyfile)):
            if path is not None:
                options[option] = str(path)
    if protocol.sasl:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password_value
    return options


def unreachable(settings: Settings, exc: Exception) -> BusError:
    """The error for a client that could not be built or connect; a TLS failure (the brokers' certificate
    not signed by a trusted CA, a client certificate refused) says which settings are involved."""
    if isinstance(exc, ssl.SSLError):
        return BusError(f"TLS to Kafka at {settings.kafka_bootstrap} failed: {exc} (MEDSYNTH_KAFKA_SSL_CAFILE: the CA "
                        "of the brokers' certificates; MEDSYNTH_KAFKA_SSL_CERTFILE/KEYFILE: the client certificate)")
    return BusError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}")


@dataclass(frozen=True)
class Delivered:
    """Where the broker put a message."""

    partition: int
    offset: int


class Bus:
    """Publishes protobuf messages and builds consumers. Safe to share between threads.

    Delivery guarantees (``docs``: README, "Topics and their delivery guarantees"):

    - :meth:`publish` (commands, dead letters): at least once. Publishing waits for the broker's
      acknowledgement from all in-sync replicas (``acks='all'``); a send that fails is sent again, so
      a message whose acknowledgement was lost can be in the log twice — harmless for commands, whose
      workers skip jobs already done.
    - :meth:`emit` (events): once per event id. The producer never resends on its own (``retries=0``);
      when a send fails — the broker killed between writing the message and answering — the partition
      is read from the last offset this process knows to precede the message, and the message is sent
      again only if it is not there.
    """

    def __init__(self, settings: Settings, *, client_id: str = "medsynth") -> None:
        if not settings.kafka_bootstrap:
            raise BusError("MEDSYNTH_KAFKA_BOOTSTRAP is not set; start a broker with `medsynth stack up`.")
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.client_id = client_id
        self._producer = None
        self._lock = threading.Lock()
        self._acked: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset acknowledged to this process

    def client_options(self) -> dict:
        """What every kafka-python client of this bus is built with (bootstrap, client id, protocol version,
        and the transport security of :func:`kafka_security_options`): its producer, its consumers and the
        admin client of :func:`medsynth.bus.admin.ensure_topics`."""
        version = self.settings.kafka_api_version
        return dict(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            client_id=self.client_id,
            api_version=tuple(int(p) for p in version.split(".")) if version else None,
            **kafka_security_options(self.settings),
        )

    def _get_producer(self):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        with self._lock:
            if self._producer is None:
                timeout_ms = int(self.settings.publish_timeout_s * 1000)
                # Without broker-side idempotence a producer's own retry after a lost acknowledgement
                # writes the message twice: resending is left to publish() and emit(), which know
                # whether a duplicate matters.
                idempotent = self.settings.kafka_idempotent_producer
                try:
                    self._producer = KafkaProducer(
                        **self.client_options(),
                        acks="all",
                        enable_idempotence=idempotent,
                        retries=5 if idempotent else 0,
                        max_in_flight_requests_per_connection=1,
                        linger_ms=0,
                        max_block_ms=timeout_ms,  # waiting for metadata when the broker is down
                        request_timeout_ms=timeout_ms,
                        delivery_timeout_ms=timeout_ms,
                    )
                except (KafkaError, ssl.SSLError) as exc:
                    raise unreachable(self.settings, exc) from exc
            return self._producer

    def _send(self, topic: str, key: bytes, value: bytes) -> Delivered:
        """One send, waiting for its definite outcome: acknowledged, or failed and no longer pending in
        the producer (``delivery_timeout_ms`` bounds it), so a failed message cannot land later."""
        producer = self._get_producer()
        partition = self.partition_of(topic, key)
        future = producer.send(topic, key=key, value=value, partition=partition)
        meta = future.get(timeout=self.settings.publish_timeout_s * 2 + 5)
        with self._lock:
            tp = (topic, meta.partition)
            self._acked[tp] = max(self._acked.get(tp, -1), meta.offset)
        return Delivered(meta.partition, meta.offset)

    def _discard_producer(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - a broken producer is dropped either way
                log.debug("closing a failed producer", exc_info=True)

    def partition_of(self, topic: str, key: bytes) -> int:
        """The partition a keyed message goes to (the Java client's murmur2 partitioner)."""
        from kafka.errors import KafkaTimeoutError
        from kafka.partitioner.default import DefaultPartitioner

        partitions = self._get_producer().partitions_for(topic)
        if not partitions:
            raise KafkaTimeoutError(f"no partitions known for {topic}")
        ordered = sorted(partitions)
        return DefaultPartitioner()(key, ordered, ordered)

    def publish(self, topic: str, key: str, value: bytes, *, timeout: float | None = None) -> Delivered:
        """Send one message until the broker acknowledges it (at least once), at most ``timeout``
        seconds (default ``publish_timeout_s``)."""
        return self._deliver(topic, key.encode(), value, timeout, found=None)

    def publish_once(self, topic: str, key: str, value: bytes, is_copy: Callable[[bytes], bool], *,
                     since: int | None = None, timeout: float | None = None) -> Delivered:
        """Send one message so that the log holds it once: after a failed send, the partition is
        searched for a message ``is_copy`` accepts before sending again.

        ``since``: an offset of the key's partition known to precede any earlier send of this message
        (by another process, e.g. a worker that died after sending it); default the last offset this
        process had acknowledged there before this call, else the partition's beginning."""
        key_bytes = key.encode()
        floor = since
        if floor is None:
            try:
                floor = self._acked.get((topic, self.partition_of(topic, key_bytes)))
            except Exception:  # noqa: BLE001 - the broker is away: the first send fails and the search reads from the start
                floor = None

        def found() -> Delivered | None:
            return self._find(topic, key_bytes, is_copy, floor)

        if since is not None:  # perhaps sent before, by a process that died: nothing is sent before the log is read
            from kafka.errors import KafkaError

            try:
                if (earlier := found()) is not None:
                    return earlier
            except KafkaError as exc:
                raise BusError(f"cannot read {topic} to look for an earlier send: {exc}") from exc
        return self._deliver(topic, key_bytes, value, timeout, found=found)

    def _deliver(self, topic: str, key: bytes, value: bytes, timeout: float | None,
                 found: Callable[[], Delivered | None] | None) -> Delivered:
        from kafka.errors import KafkaError

        deadline = time.monotonic() + (timeout or self.settings.publish_timeout_s)
        while True:
            try:
                return self._send(topic, key, value)
            except (KafkaError, ssl.SSLError) as exc:
                error: Exception = exc
                self._discard_producer()  # kafka-python can keep a partition muted after a lost connection
            if found is not None:  # the failed send may have reached the log all the same
                try:
                    if (earlier := found()) is not None:
                        log.info("a send to %s that reported failure had reached the log (%s); not sent again", topic, earlier)
                        return earlier
                except (KafkaError, ssl.SSLError) as exc:
                    error = exc
            if time.monotonic() >= deadline:
                raise BusError(f"publishing to {topic} failed: {error}") from error
            log.info("publishing to %s failed (%s); trying again", topic, error)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _find(self, topic: str, key: bytes, is_copy: Callable[[bytes], bool], since: int | None) -> Delivered | None:
        """The message of ``key`` that ``is_copy`` accepts, read from ``since`` (or the beginning) to the
        end of its partition; None if it is not there. Raises KafkaError while the broker cannot be read."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaTimeoutError

        partition = self.partition_of(topic, key)
        tp = TopicPartition(topic, partition)
        timeout_ms = int(self.settings.publish_timeout_s * 1000)
        consumer = KafkaConsumer(**self.client_options(), group_id=None, enable_auto_commit=False,
                                 request_timeout_ms=max(timeout_ms, 5000) + 1000, fetch_max_wait_ms=100)
        try:
            consumer.assign([tp])
            if since is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, since)
            deadline = time.monotonic() + max(5.0, self.settings.publish_timeout_s * 2)
            while time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=300).get(tp, [])
                for record in records:
                    if record.key == key and is_copy(record.value):
                        return Delivered(partition, record.offset)
                highwater = consumer.highwater(tp)
                if not records and highwater is not None and consumer.position(tp) >= highwater:
                    return None
            raise KafkaTimeoutError(f"could not read {topic}[{partition}] to its end to look for an unacknowledged message")
        finally:
            consumer.close(autocommit=False)

    def send_command(self, kind: JobKind, command: Command) -> None:
        self.publish(command_topic(self.prefix, kind), command.job_id, command.SerializeToString())

    def emit(self, event: Event, *, since: int | None = None) -> Delivered:
        """Publish an event once (see the class docs); ``since``: an offset of the event's partition
        before any earlier send of it, for an event that may have been sent by a process that died."""
        event_id = event.event_id

        def is_copy(value: bytes) -> bool:
            try:
                return Event.FromString(value).event_id == event_id
            except DecodeError:
                return False

        return self.publish_once(events_topic(self.prefix), event.job_id or event_id, event.SerializeToString(), is_copy, since=since)

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
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(**options)
        except (KafkaError, ssl.SSLError) as exc:  # it connects at once unless the protocol version is pinned
            raise unreachable(self.settings, exc) from exc
        consumer.subscribe(list(topics))
        return consumer

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None
