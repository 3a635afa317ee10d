"""Kafka client configuration and topic administration shared by producers, consumers and infra."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from flywheel.settings import KafkaSettings


def admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 3})


def broker_ready(kafka: KafkaSettings, timeout_s: float = 3.0) -> bool:
    md = admin(kafka).list_topics(timeout=timeout_s)
    return len(md.brokers) > 0


def ensure_topics(kafka: KafkaSettings, names: list[str] | None = None, partitions: int | None = None) -> list[str]:
    """Create missing topics (idempotent). Returns the names that were created."""
    client = admin(kafka)
    wanted = names or [kafka.topics.events, kafka.topics.dead_letter, kafka.topics.late]
    existing = set(client.list_topics(timeout=10).topics)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = client.create_topics(
        [NewTopic(t, num_partitions=partitions or kafka.partitions, replication_factor=1) for t in missing]
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout=30)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def delete_topics(kafka: KafkaSettings, names: list[str]) -> None:
    client = admin(kafka)
    existing = set(client.list_topics(timeout=10).topics)
    todo = [t for t in names if t in existing]
    if todo:
        for fut in client.delete_topics(todo, operation_timeout=30).values():
            fut.result(timeout=30)
