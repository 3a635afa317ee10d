"""The local stack: real Kafka (KRaft), Redis and Flink processes, started and stopped by flywheel."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import redis as redis_lib

from flywheel.events.consumer import count_topic, read_topic
from flywheel.events.producer import EventProducer
from flywheel.settings import load_settings
from flywheel.stack import control as stack
from flywheel.stack.processes import InfraError
from flywheel.stack.services import Kafka, Redis
from tests.events import make_event

pytestmark = pytest.mark.integration


def test_up_twice_is_harmless(cfg):
    before = {s.name: s.pid for s in stack.status(["kafka", "redis", "flink"], cfg)}
    states: dict[str, str] = {}
    stack.up(["kafka", "redis", "flink"], report=lambda n, s: states.__setitem__(n, s))
    after = {s.name: s.pid for s in stack.status(["kafka", "redis", "flink"], cfg)}
    assert states == {"kafka": "already running", "redis": "already running", "flink": "already running"}
    assert before == after and all(after.values())


def test_status_reports_health_urls_and_slots(cfg):
    rows = {s.name: s for s in stack.status(["kafka", "redis", "flink"], cfg)}
    assert all(r.healthy and r.managed for r in rows.values())
    assert rows["flink"].url == "http://127.0.0.1:18081"
    assert "2 taskmanager(s)" in rows["flink"].detail and "/4 slots" in rows["flink"].detail  # the test stack's two


def test_kafka_topics_created(cfg):
    from flywheel.clients.kafka import admin

    topics = admin(cfg.kafka).list_topics(timeout=10).topics
    for name in (cfg.kafka.topics.events, cfg.kafka.topics.dead_letter, cfg.kafka.topics.late):
        assert name in topics
        assert len(topics[name].partitions) == cfg.kafka.partitions


def test_kafka_round_trip_exact(cfg, topic):
    events = [make_event(i, user=f"u{i % 37}") for i in range(5_000)]
    with EventProducer(cfg.kafka, topic) as producer:
        producer.send_all(events)
    got = list(read_topic(cfg.kafka, topic))
    assert len(got) == 5_000
    import orjson

    assert sorted(orjson.loads(v)["event_id"] for _, v in got) == sorted(e["event_id"] for e in events)
    # Keyed by user_id: each user's events sit in one partition, in order.
    assert all(k == orjson.loads(v)["user_id"].encode() for k, v in got)


def test_producer_rejects_contract_breaks_before_kafka(cfg, topic):
    from flywheel.events.producer import InvalidEvent

    bad = make_event(1) | {"propensity": 0.0}
    with EventProducer(cfg.kafka, topic) as producer, pytest.raises(InvalidEvent, match="propensity"):
        producer.send(bad)
    assert count_topic(cfg.kafka, topic) == 0


def test_down_then_up_keeps_topic_data(cfg, topic):
    with EventProducer(cfg.kafka, topic) as producer:
        producer.send_all(make_event(i) for i in range(777))
    stopped = stack.down(["kafka"], cfg=cfg)
    assert stopped == ["kafka"]
    assert Kafka(cfg).proc.pid() is None
    stack.up(["kafka"])
    assert count_topic(cfg.kafka, topic) == 777
    assert len(list(read_topic(cfg.kafka, topic))) == 777


def test_redis_requires_the_password(cfg):
    anon = redis_lib.Redis(host=cfg.redis.host, port=cfg.redis.port, socket_timeout=2)
    with pytest.raises(redis_lib.AuthenticationError):
        anon.set("k", "v")
    client = Redis(cfg).client()
    client.set("flywheel:test", "ok")
    assert client.get("flywheel:test") == b"ok"


def test_taken_port_is_a_clear_error(cfg, monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path))
        monkeypatch.setenv("FLYWHEEL_REDIS__PORT", str(port))
        with pytest.raises(InfraError, match=f"port {port} .* already taken.*FLYWHEEL_REDIS__PORT"):
            stack.up(["redis"], cfg=load_settings())


def test_missing_java_exits_nonzero_with_a_message(tmp_path):
    env = {
        "PATH": "/nonexistent",
        "HOME": str(tmp_path),
        "FLYWHEEL_VAR_DIR": str(tmp_path / "var"),
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:29092",
        "FLYWHEEL_KAFKA__CONTROLLER_PORT": "29093",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "infra", "up", "-s", "kafka"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Java 17+ not found" in proc.stdout


def test_flink_sql_job_counts_the_topic_through_the_fetched_connector(cfg, topic):
    """Kafka SQL connector 5.0.0-2.2 on our Flink 2.3.0 standalone cluster: the pair really works."""
    from flink_jobs.smoke import count_topic as flink_count

    with EventProducer(cfg.kafka, topic) as producer:
        producer.send_all(make_event(i, user=f"u{i % 11}") for i in range(2_345))
    assert flink_count(cfg, topic, remote=True) == 2_345
