"""What the service showed, to Kafka, off the request path: a bounded queue drained by one thread that owns
the producer. Nothing is dropped silently: a list that finds the queue full, or a record Kafka did not
take before its delivery timeout, is appended with the reason to the dead-letter file
(`var/serving/unlogged.jsonl`), and every outcome is counted (`/metrics`):
  queued = logged + dead-lettered + waiting (in the queue or in the producer)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from flywheel.events.producer import EventProducer
from flywheel.settings import KafkaSettings

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_MS = 30_000  # Kafka down longer than this: the records go to the dead-letter file
# Many lists per produce request, not one or two: each request costs the broker CPU on the cores the service ranks
# on, and an impression a tenth of a second later costs nobody anything.
LINGER_MS = 100


class ExposureLog:
    def __init__(
        self, kafka: KafkaSettings, dead_letter: Path, capacity: int, delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS
    ):
        self.dead_letter = dead_letter
        dead_letter.parent.mkdir(parents=True, exist_ok=True)
        # A SimpleQueue bounded by the count of lists on it: its put is one C call, no Condition to notify.
        self._queue: queue.SimpleQueue[list[dict[str, Any]] | None] = queue.SimpleQueue()
        self.capacity = capacity
        self.lists_in_queue = 0
        self._file_lock = threading.Lock()
        self._count_lock = threading.Lock()  # request threads and the logging thread update the counts
        self.queued = 0  # events handed to `log`
        self.dead_lettered = 0
        self.in_queue = 0  # events in lists still on the queue
        self.waiting_in_producer = 0
        self._next_warning = 0.0
        self.producer = EventProducer(
            kafka, None, False, self._kafka_failed,
            **{"message.timeout.ms": delivery_timeout_ms, "linger.ms": LINGER_MS, "logger": log},
        )  # fmt: skip
        self._thread = threading.Thread(target=self._drain, name="exposure-log", daemon=True)
        self._thread.start()

    # -- the request side ----------------------------------------------------------------------------
    def log(self, events: list[dict[str, Any]]) -> None:
        """Hand a served list's events over without waiting; a full queue dead-letters them now."""
        with self._count_lock:
            self.queued += len(events)
            full = self.lists_in_queue >= self.capacity
            if not full:
                self.in_queue += len(events)
                self.lists_in_queue += 1
        if full:
            self._write_dead_letter([orjson.dumps(e) for e in events], "log queue full (Kafka too slow or down)")
        else:
            self._queue.put(events)

    @property
    def depth(self) -> int:
        """Events not yet acknowledged or dead-lettered: on the queue or inside the producer."""
        return self.in_queue + self.waiting_in_producer

    @property
    def logged(self) -> int:
        return self.producer.delivered

    # -- the logging thread ---------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            try:
                events = self._queue.get(timeout=0.05)
            except queue.Empty:
                self.waiting_in_producer = self.producer.poll(0)
                continue
            if events is None:
                break
            for event in events:
                self.producer.send(event)
            self.waiting_in_producer = self.producer.poll(0)  # before the queue count drops: depth never dips
            with self._count_lock:
                self.in_queue -= len(events)
                self.lists_in_queue -= 1
        self.producer.poll(0)

    def _kafka_failed(self, value: bytes, reason: str) -> None:
        self._write_dead_letter([value], reason)

    def _write_dead_letter(self, values: list[bytes], reason: str) -> None:
        with self._file_lock, open(self.dead_letter, "ab") as f:
            for v in values:
                f.write(orjson.dumps({"reason": reason, "event": orjson.Fragment(v)}) + b"\n")
            with self._count_lock:
                self.dead_lettered += len(values)
            if time.monotonic() >= self._next_warning:  # one line per few seconds, not one per event
                self._next_warning = time.monotonic() + 5.0
                log.warning("%d served event(s) so far not logged to Kafka (last: %s); kept in %s",
                            self.dead_lettered, reason, self.dead_letter)  # fmt: skip

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking lists, send what is queued, wait up to timeout_s for Kafka; the rest is dead-lettered."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self.producer.drain(timeout_s)
