"""Kafka client configuration and topic administration shared by producers, consumers and infra."""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from flywheel.settings import KafkaSettings


def admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({**kafka.client_config(), "log_level": 3})


def broker_ready(kafka: KafkaSettings, timeout_s: float = 3.0) -> bool:
    """A broker answers and every partition has a leader: after a restart the broker answers before it
    has taken its partitions back, and a client that is quicker gets NOT_LEADER_FOR_PARTITION."""
    md = admin(kafka).list_topics(timeout=timeout_s)
    partitions = [p for t in md.topics.values() for p in t.partitions.values()]
    return len(md.brokers) > 0 and all(p.leader >= 0 and p.error is None for p in partitions)


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
    _wait_for_leaders(client, missing)
    return created


def _wait_for_leaders(client: AdminClient, topics: list[str], timeout_s: float = 30) -> None:
    """A created topic is usable once every partition has a leader; until then reads and offset lookups
    fail with NOT_LEADER_FOR_PARTITION (seen in CI right after creation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        md = client.list_topics(timeout=10).topics
        ready = all(
            t in md and md[t].error is None and md[t].partitions
            and all(p.leader >= 0 and p.error is None for p in md[t].partitions.values())
            for t in topics
        )  # fmt: skip
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {topics} have partitions without a leader after {timeout_s:.0f}s")
        time.sleep(0.2)


def delete_topics(kafka: KafkaSettings, names: list[str]) -> None:
    client = admin(kafka)
    existing = set(client.list_topics(timeout=10).topics)
    todo = [t for t in names if t in existing]
    if todo:
        for fut in client.delete_topics(todo, operation_timeout=30).values():
            fut.result(timeout=30)


def committed_offsets(kafka: KafkaSettings, group_id: str) -> int:
    """How many records a consumer group has committed over all its partitions (Flink's Kafka source
    commits on checkpoint): a job's progress, seen from outside."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    client = admin(kafka)  # kept alive until the futures resolve (a dropped client never answers)
    futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)])
    return sum(tp.offset for f in futures.values() for tp in f.result(timeout=10).topic_partitions if tp.offset >= 0)
