"""Creating the system's topics on a Kafka broker through the standard admin API (CreateTopics)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from medsynth.bus.client import Bus, BusError, unreachable


def ensure_topics(bus: Bus, topics: Sequence[tuple[str, int]], *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(**bus.client_options(), request_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, ssl.SSLError) as exc:
        raise unreachable(bus.settings, exc) from exc
    created = []
    try:
        for name, partitions in topics:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)], timeout_ms=int(timeout_s * 1000))
                created.append(name)
            except TopicAlreadyExistsError:
                pass
            except (KafkaError, ssl.SSLError) as exc:
                raise BusError(f"creating topic {name} failed: {exc}") from exc
    finally:
        admin.close()
    return created
