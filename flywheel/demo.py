"""`make demo`: bring the stack up, replay the real Open Bandit logs through Kafka, show where things are.

Grows stage by stage as the pipeline does (features, training, promotion, scoring).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter

import duckdb
import orjson
from rich.console import Console
from rich.table import Table

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
    # The demo starts from clean topics and outputs so its counts are exact on every run.
    delete_topics(cfg.kafka, [topic, cfg.kafka.topics.dead_letter, cfg.kafka.topics.late])
    ensure_topics(cfg.kafka)
    shutil.rmtree(cfg.offline_dir, ignore_errors=True)
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

    features_stage(cfg, console, last_event_ms=events[-1]["event_time"])

    console.rule("where things are")
    console.print(f"  Flink UI     {cfg.flink.rest_url}")
    console.print(
        f"  Airflow UI   {cfg.airflow.url}  (user {cfg.airflow.username}, password: "
        f"$FLYWHEEL_AIRFLOW__PASSWORD or {cfg.secrets_file})"
    )
    console.print(f"  Kafka        {cfg.kafka.bootstrap_servers}  topics {cfg.kafka.topics.model_dump()}")
    console.print(f"  Redis        {cfg.redis.host}:{cfg.redis.port}")
    console.print(
        f"  features     Parquet: {cfg.var_dir / 'offline'}   online: Redis via Feast "
        f"(FeatureStore(repo_path='feature_repo') after eval \"$(.venv/bin/flywheel env)\")"
    )
    console.print(f"  logs         {cfg.var_dir / 'log'}")
    console.print("  stop with    .venv/bin/flywheel infra down")


def features_stage(cfg, console: Console, last_event_ms: int) -> None:
    """Run the feature job (embedded, unbounded) until the watermark has passed the replayed data, show
    what landed in Parquet and what the Feast SDK reads from Redis, then stop the job."""
    from feature_repo.spec import group
    from flink_jobs import features
    from flink_jobs.reconcile import reconcile
    from flywheel import feast_store

    console.rule("3. PyFlink feature job: Kafka → windowed features → Parquet + Redis (Feast)")
    feast_store.apply(cfg)
    opt = features.options(cfg, group_id=f"flywheel-demo-{int(time.time())}")
    t0 = time.monotonic()
    client = features.run(cfg, opt, wait=False)
    # Sliding windows close as the watermark passes their end; the last 5-minute slide of the replay
    # closes once the watermark (last event - delay) reaches it. Parquet commits on each checkpoint.
    slide_ms = int(group("user_stats_1h").window.slide.total_seconds() * 1000)
    target = (last_event_ms - cfg.features.watermark_delay_s * 1000) // slide_ms * slide_ms
    done = False
    while time.monotonic() - t0 < 300 and not done:
        time.sleep(3)
        files = features.committed_parquet(opt.offline_dir, "user_stats_1h")
        if files:
            latest = duckdb.sql(
                "SELECT max(epoch_ms(event_timestamp)) FROM read_parquet($f)", params={"f": files}
            ).fetchall()[0][0]
            done = latest is not None and latest >= target
        console.print(f"  … {time.monotonic() - t0:.0f}s, {len(files)} committed Parquet file(s) for user_stats_1h")
    time.sleep(cfg.features.checkpoint_interval_ms / 1000 + 2)  # let the audit minutes commit too
    client.cancel().result()
    console.print(f"  job ran {time.monotonic() - t0:.0f}s (stopped after the watermark passed the data)")

    rows = Table("feature view", "Parquet rows")
    for g in features.GROUPS:
        files = features.committed_parquet(opt.offline_dir, g.name)
        n = duckdb.sql("SELECT count(*) FROM read_parquet($f)", params={"f": files}).fetchall()[0][0] if files else 0
        rows.add_row(g.name, str(n))
    console.print(rows)
    r = reconcile(cfg, opt.topic, opt.dlq_topic, opt.late_topic, opt.offline_dir)
    console.print(
        f"  reconcile: in {r.events_in} = aggregated {r.aggregated} + duplicates {r.duplicates} + "
        f"dead-lettered {r.dead_lettered} + late {r.late} + still in open windows {r.pending}"
    )

    store = feast_store.store(cfg)
    files = features.committed_parquet(opt.offline_dir, "user_stats_7d")
    recent = "SELECT user_id FROM read_parquet($f) GROUP BY user_id ORDER BY max(event_timestamp) DESC, 1 LIMIT 3"
    users = [u for (u,) in duckdb.sql(recent, params={"f": files}).fetchall()] if files else []
    online = store.get_online_features(
        features=[
            "user_stats_24h:user_impressions_24h",
            "user_stats_24h:user_clicks_24h",
            "user_stats_24h:user_debiased_ctr_24h",
            "user_stats_7d:user_impressions_7d",
            "user_last_click:last_click_time",
        ],
        entity_rows=[{"user_id": u} for u in users],
    ).to_df()
    console.print("  online features read back with the Feast SDK (get_online_features):")
    console.print(online.to_string(index=False))
