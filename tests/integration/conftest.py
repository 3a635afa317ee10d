from __future__ import annotations

import uuid

import pytest

from flywheel.clients.kafka import ensure_topics
from flywheel.settings import Settings, load_settings
from flywheel.stack import control as stack

CORE = ["kafka", "redis", "flink"]


@pytest.fixture(scope="session")
def cfg() -> Settings:
    """Kafka, Redis and the Flink cluster, started for the session and stopped (and purged) after it."""
    settings = stack.up(CORE)
    yield settings
    stack.down(purge=True, cfg=load_settings())


@pytest.fixture
def topic(cfg: Settings) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    ensure_topics(cfg.kafka, [name], partitions=3)
    return name
