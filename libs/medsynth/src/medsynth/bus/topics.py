"""Topic names: one command topic per job kind, one events topic, one dead-letter topic per kind."""

from __future__ import annotations

from medsynth.bus.messages import JobKind

PARTITIONS = 4


def command_topic(prefix: str, kind: JobKind) -> str:
    return f"{prefix}.commands.{kind.value}"


def dead_letter_topic(prefix: str, kind: JobKind | None) -> str:
    """Dead letters of ``kind``; ``None`` for messages whose kind could not be read."""
    return f"{prefix}.dead-letter.{kind.value if kind else 'unreadable'}"


def events_topic(prefix: str) -> str:
    return f"{prefix}.events"


def all_topics(prefix: str) -> list[tuple[str, int]]:
    """Every topic the system uses, with its partition count (for brokers that need them created)."""
    topics = [(command_topic(prefix, k), PARTITIONS) for k in JobKind]
    topics += [(dead_letter_topic(prefix, k), 1) for k in [*JobKind, None]]
    topics.append((events_topic(prefix), PARTITIONS))
    return topics
