"""Read a topic from the beginning up to its current end: for counts, reconciliation and tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from flywheel.errors import FlywheelError
from flywheel.settings import KafkaSettings

LEADERLESS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)


def end_offsets(kafka: KafkaSettings, topic: str, retry_s: float = 30.0) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermark offsets. Retriable errors (a partition whose leader is still
    being elected after a broker restart) are retried for up to `retry_s`."""
    c = Consumer({**kafka.client_config(), "group.id": "flywheel-offsets", "log_level": 3})
    deadline = time.monotonic() + retry_s
    try:
        while True:
            try:
                md = c.list_topics(topic, timeout=10).topics[topic]
                if md.error is not None:
                    raise KafkaException(md.error)
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in md.partitions}
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError._TRANSPORT:
                    raise FlywheelError(
                        f"Kafka at {kafka.bootstrap_servers} does not answer: start it (`flywheel infra up -s kafka`) "
                        "or point FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS at your brokers"
                    ) from exc
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise FlywheelError(f"no topic {topic!r} on {kafka.bootstrap_servers}") from exc
                if not (err.retriable() or err.code() in LEADERLESS) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def read_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 120.0) -> Iterator[tuple[bytes | None, bytes]]:
    """Yield (key, value) of every committed record present now, then stop.

    Done is judged by the consumer's position, not by counting records: transactional topics (what
    Flink's exactly-once sinks write) hold commit markers that take offsets but are never delivered.
    """
    for _, key, value in read_partitions(kafka, topic, timeout_s):
        yield key, value


def read_partitions(
    kafka: KafkaSettings, topic: str, timeout_s: float = 120.0
) -> Iterator[tuple[int, bytes | None, bytes]]:
    """`read_topic` with each record's partition; within a partition, records come in offset order."""
    ends = end_offsets(kafka, topic)
    todo = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
    if not todo:
        return
    c = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"flywheel-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(todo)} not drained in {timeout_s:.0f}s")
            for msg in c.consume(num_messages=10_000, timeout=1.0):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                part, offset, value = msg.partition(), msg.offset(), msg.value()
                if part in todo and offset is not None and offset < todo[part] and value is not None:
                    yield part, msg.key(), value
            for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
    finally:
        c.close()


def count_topic(kafka: KafkaSettings, topic: str) -> int:
    """Offsets in use: the record count of a non-transactional topic (commit markers count too)."""
    return sum(hi - lo for lo, hi in end_offsets(kafka, topic).values())
