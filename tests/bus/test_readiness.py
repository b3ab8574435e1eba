"""Readiness says whether the broker can be reached now — not the state of a producer's first
connection, which kafka-python replaces once it knows the cluster (a healthy service used to turn
unready after a few minutes)."""

from __future__ import annotations

import socket
import time

from medsynth.bus.client import Bus
from medsynth.bus.topics import events_topic
from medsynth.core.settings import Settings


def test_a_bus_that_has_published_stays_reachable(platform_settings: Settings) -> None:
    bus = Bus(platform_settings, client_id="readiness")
    try:
        for i in range(3):
            bus.publish(events_topic(platform_settings.topic_prefix), f"k{i}", b"x")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # after the producer replaced its bootstrap connection
            assert bus.reachable()
            time.sleep(0.2)
    finally:
        bus.close()


def test_nothing_listening_is_unreachable_within_the_timeout(platform_settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the check: nothing listens there
    bus = Bus(platform_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"}), client_id="readiness")
    started = time.monotonic()
    assert not bus.reachable(timeout_s=1.0)
    assert time.monotonic() - started < 2.5
