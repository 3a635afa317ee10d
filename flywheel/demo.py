"""`make demo`: bring the stack up, replay the real Open Bandit logs through Kafka, show where things are.

Grows stage by stage as the pipeline does (features, training, promotion, scoring).
"""

from __future__ import annotations

from collections import Counter

import orjson
from rich.console import Console

from flywheel.events import obd
from flywheel.events.consumer import read_topic
from flywheel.events.producer import EventProducer
from flywheel.infra import stack
from flywheel.kafka import delete_topics, ensure_topics


def run(console: Console) -> None:
    console.rule("1. stack up")
    cfg = stack.up(report=lambda n, s: console.print(f"  {n:8s} {s}"))

    console.rule("2. real data: Open Bandit (ZOZOTOWN) logs replayed into Kafka")
    slices = [(p, c) for p in cfg.obd.policies for c in cfg.obd.campaigns]
    events, counts = obd.build(obd.fetch(cfg.obd, cfg.build_dir), slices)
    topic = cfg.kafka.topics.events
    # The demo starts from a clean events topic so its counts are exact on every run.
    delete_topics(cfg.kafka, [topic])
    ensure_topics(cfg.kafka)
    with EventProducer(cfg.kafka) as producer:
        for ev in obd.paced(events, cfg.obd.speedup):
            producer.send(ev)
    seen: Counter[str] = Counter(orjson.loads(v)["event_type"] for _, v in read_topic(cfg.kafka, topic))
    for c in counts:
        console.print(f"  {c.policy}/{c.campaign}: {c.rows} logged impressions, {c.clicks} clicks")
    expected = Counter(impression=sum(c.rows for c in counts), click=sum(c.clicks for c in counts))
    console.print(f"  Kafka topic {topic}: {dict(seen)} (expected {dict(expected)})")
    if seen != expected:
        raise RuntimeError(f"Kafka holds {dict(seen)}, the CSVs say {dict(expected)}")

    console.rule("where things are")
    console.print(f"  Flink UI     {cfg.flink.rest_url}")
    console.print(
        f"  Airflow UI   {cfg.airflow.url}  (user {cfg.airflow.username}, password: "
        f"$FLYWHEEL_AIRFLOW__PASSWORD or {cfg.secrets_file})"
    )
    console.print(f"  Kafka        {cfg.kafka.bootstrap_servers}  topics {cfg.kafka.topics.model_dump()}")
    console.print(f"  Redis        {cfg.redis.host}:{cfg.redis.port}")
    console.print(f"  logs         {cfg.var_dir / 'log'}")
    console.print("  stop with    .venv/bin/flywheel infra down")
