"""Kafka bus: topics, producer, consumer worker loop, local broker."""
