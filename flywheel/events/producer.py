"""The one Kafka producer every event writer uses (OBD replay, simulator, tests, apps).

Idempotent producer (no duplicates from retries), keyed by user_id so a user's events stay ordered
within a partition, and strict: a record that Kafka did not acknowledge raises at flush, never vanishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from flywheel.events.schema import validate
from flywheel.settings import KafkaSettings


class DeliveryError(RuntimeError):
    pass


class InvalidEvent(ValueError):
    pass


class EventProducer:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str | None = None,
        validate_events: bool = True,
        on_failure: Callable[[bytes, str], None] | None = None,
        **overrides: Any,
    ):
        """`on_failure(value, reason)` receives each record Kafka did not take (a service dead-letters it
        there and keeps going); without it, `flush` raises."""
        conf = {
            **kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "log_level": 3,
        }
        conf.update(overrides)
        self._producer = Producer(conf)
        self.topic = topic or kafka.topics.events
        self.validate_events = validate_events
        self.sent = 0
        self.failed: list[str] = []
        self.delivered = 0
        self.on_failure = on_failure

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        elif self.on_failure is not None:
            self.on_failure(msg.value() or b"", f"{msg.topic()}[{msg.partition()}]: {err}")
        else:
            self.failed.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(self, event: dict[str, Any]) -> None:
        """Validate against the contract and produce, keyed by user_id."""
        if self.validate_events:
            rejection = validate(event)
            if rejection:
                raise InvalidEvent(f"event {event.get('event_id')!r} breaks the contract: {rejection}")
        self.send_raw(orjson.dumps(event), str(event.get("user_id", "")).encode())

    def send_raw(self, value: bytes, key: bytes | None = None, topic: str | None = None) -> None:
        """Produce bytes as they are (the simulator uses this to inject malformed records)."""
        while True:
            try:
                self._producer.produce(topic or self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain, then retry
                self._producer.poll(0.05)
        self.sent += 1
        if self.sent % 10_000 == 0:
            self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many records still wait for Kafka."""
        self._producer.poll(timeout_s)
        return len(self._producer)

    def drain(self, timeout_s: float) -> None:
        """Wait up to timeout_s for Kafka, give up on the rest (they fail through `on_failure`), and close."""
        self._producer.flush(timeout_s)
        self._producer.purge()
        self._producer.poll(0.5)
        self._producer.close()

    def send_all(self, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for event in events:
            self.send(event)
            n += 1
        return n

    def flush(self, timeout_s: float = 120.0) -> int:
        """Wait for every record to be acknowledged; raise if any was not."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} record(s) still unacknowledged after {timeout_s:.0f}s: is Kafka up?")
        if self.failed:
            raise DeliveryError(f"{len(self.failed)} record(s) were not delivered, first: {self.failed[0]}")
        return self.sent

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            self.flush()


def write_records(
    kafka: KafkaSettings, keys: Sequence[bytes], values: Sequence[bytes], topic: str, progress: bool = True
) -> int:
    """Raw records (malformed ones included) through the one producer, into a topic created if missing."""
    from tqdm import tqdm

    from flywheel.clients.kafka import ensure_topics

    ensure_topics(kafka, [topic])
    with EventProducer(kafka, topic, validate_events=False) as producer:
        pairs = zip(keys, values, strict=True)
        for k, v in tqdm(pairs, total=len(values), unit="rec", desc=f"→ {topic}", disable=not progress):
            producer.send_raw(v, k)
    return producer.sent
