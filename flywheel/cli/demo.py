"""`make demo`: the whole loop on real data, then turning. Stack up -> Open Bandit logs replayed through Kafka
-> Flink features in Parquet and Redis -> the weekly retraining DAG on Airflow (GE gates, training,
promotion) -> a ranked list for one user scored from online features -> the closed loop on a simulated
world (the service ranks, the world clicks, the weekly DAG retrains on served traffic, the service picks
up the promotion) -> where everything is.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import duckdb
import orjson
from rich.console import Console
from rich.table import Table

from flywheel.clients.kafka import delete_topics, ensure_topics
from flywheel.events import obd
from flywheel.events.consumer import read_topic
from flywheel.events.producer import EventProducer
from flywheel.settings import Settings
from flywheel.stack import control as stack
from flywheel.stack.services import Redis
from validation.suites import data_docs_path


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
    for stale in (cfg.offline_dir, cfg.training.registry_dir, _obd_registry(cfg), cfg.trainset.output_dir):
        shutil.rmtree(stale, ignore_errors=True)
    # And a clean online store: Feast skips writes that are not newer than what Redis holds, so rows of an
    # earlier run (same window ends) would shadow this run's values, renamed features included.
    Redis(cfg).client().flushdb()
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
    version = training_stage(cfg, console, first_ms=events[0]["event_time"], last_ms=events[-1]["event_time"])
    scoring_stage(cfg, console, version)
    loop_stage(cfg, console)

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
    console.print(f"  Data Docs    {data_docs_path(cfg)}")
    console.print(f"  registry     {cfg.training.registry_dir}  (`flywheel registry list`, `flywheel registry audit`)")
    if version:
        console.print(f"  report       {_obd_registry(cfg) / 'versions' / version}/report.md, curves.png, ope.png")
    console.print(f"  the loop     {cfg.var_dir / 'online'}/loop.png, report.json  (`flywheel online report`)")
    console.print(f"  logs         {cfg.var_dir / 'log'}")
    console.print("  stop with    .venv/bin/flywheel infra down")


def features_stage(cfg: Settings, console: Console, last_event_ms: int) -> None:
    """Run the feature job (embedded, unbounded) until the watermark has passed the replayed data and the
    Feast SDK reads it from Redis, then stop the job and show what landed in Parquet and in Redis."""
    from feature_repo.spec import group
    from flink_jobs import features
    from flink_jobs.reconcile import reconcile
    from flywheel.clients import feast_store

    console.rule("3. PyFlink feature job: Kafka → windowed features → Parquet + Redis (Feast)")
    feast_store.ensure_applied(cfg)
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
            latest = duckdb.execute(
                "SELECT max(epoch_ms(event_timestamp)) FROM read_parquet($f)", {"f": files}
            ).fetchall()[0][0]
            done = latest is not None and latest >= target
        console.print(f"  … {time.monotonic() - t0:.0f}s, {len(files)} committed Parquet file(s) for user_stats_1h")
    time.sleep(cfg.features.checkpoint_interval_ms / 1000 + 2)  # let the audit minutes commit too
    # Redis next: every checkpoint (which committed that Parquet) wrote what the Redis sink held first.
    store = feast_store.store(cfg)
    files = features.committed_parquet(opt.offline_dir, "user_stats_7d")
    recent = "SELECT user_id FROM read_parquet($f) GROUP BY user_id ORDER BY max(event_timestamp) DESC, 1 LIMIT 3"
    users = [u for (u,) in duckdb.execute(recent, {"f": files}).fetchall()] if files else []
    refs = [
        "user_stats_24h:user_impressions_24h",
        "user_stats_24h:user_clicks_24h",
        "user_stats_24h:user_debiased_ctr_24h",
        "user_stats_7d:user_impressions_7d",
        "user_last_click:last_click_time",
    ]
    # Each view's values reach Redis in their own batches: wait for every one the offline store has for
    # these users (a user who never clicked has no last_click_time anywhere).
    clicked = features.committed_parquet(opt.offline_dir, "user_last_click")
    clickers = (
        {u for (u,) in duckdb.execute("SELECT DISTINCT user_id FROM read_parquet($f)", {"f": clicked}).fetchall()}
        if clicked
        else set()
    )
    wait_s = 3 * cfg.features.checkpoint_interval_ms / 1000
    t_online = time.monotonic()
    while True:
        online = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_df()
        clicks_in = online[online["user_id"].isin(clickers)]["last_click_time"].notna().all()
        if users and online["user_impressions_7d"].notna().all() and clicks_in:
            break
        if time.monotonic() - t_online > wait_s:
            client.cancel().result()
            raise RuntimeError(
                f"the Feast SDK read no 7-day or last-click values from Redis for {users} after {wait_s:.0f}s"
            )
        console.print(f"  … {time.monotonic() - t0:.0f}s, waiting for the Redis sink")
        time.sleep(5)
    client.cancel().result()
    console.print(f"  job ran {time.monotonic() - t0:.0f}s (stopped after the data reached Parquet and Redis)")

    rows = Table("feature view", "Parquet rows")
    for g in features.GROUPS:
        files = features.committed_parquet(opt.offline_dir, g.name)
        n = duckdb.execute("SELECT count(*) FROM read_parquet($f)", {"f": files}).fetchall()[0][0] if files else 0
        rows.add_row(g.name, str(n))
    console.print(rows)
    r = reconcile(cfg, opt)
    console.print(
        f"  reconcile: in {r.events_in} = aggregated {r.aggregated} + duplicates {r.duplicates} + "
        f"dead-lettered {r.dead_lettered} + late {r.late} + still in open windows {r.pending}"
    )
    console.print("  online features read back with the Feast SDK (get_online_features):")
    console.print(online.to_string(index=False))


def training_stage(cfg: Settings, console: Console, first_ms: int, last_ms: int) -> str | None:
    """Trigger the weekly retraining DAG on Airflow for the replayed week and report its decision."""
    from datetime import UTC, datetime, timedelta

    from flywheel.clients.airflow import trigger_and_wait
    from training import pipeline, report

    console.rule("4. Airflow: retrain_weekly_incremental for the replayed week (GE -> train -> gate -> promote)")
    start = datetime.fromtimestamp(first_ms / 1000, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=7)
    if last_ms >= end.timestamp() * 1000:
        end = datetime.fromtimestamp(last_ms / 1000 + 1, UTC)
    run = trigger_and_wait(cfg, "retrain_weekly_incremental", start, end, log=console.print, by="demo")
    console.print(f"  DAG run {run['run_id']}: {run['state']}")
    reg = pipeline.registry(cfg)
    for e in reg.audit():
        console.print(f"  decision: {e['decision']} {e['version'] or ''}")
        for r in e["reasons"]:
            console.print(f"    - {r}")
    versions = reg.versions()
    if not versions:
        return None
    path = report.write(reg, versions[-1].version, str(data_docs_path(cfg)))
    console.print(path.read_text())
    return versions[-1].version


def scoring_stage(cfg: Settings, console: Console, version: str | None) -> None:
    """Rank a few items for one user from online features (Feast SDK) with the champion."""
    from training import pipeline
    from training.labels import connect, event_log_files
    from training.scoring import rank

    console.rule("5. scoring: online features from Redis (Feast SDK) ranked by the champion")
    champion = pipeline.registry(cfg).aliases()["champion"]
    if champion is None:
        console.print(f"  no champion: {version or 'no model'} was not promoted (see the reasons above)")
        return
    con = connect()
    files = event_log_files(cfg.offline_dir)
    user = con.execute(
        "SELECT user_id FROM read_parquet($f) GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1", {"f": files}
    ).fetchall()[0][0]
    items = [i for (i,) in con.execute(
        "SELECT item_id FROM read_parquet($f) GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT 6", {"f": files}
    ).fetchall()]  # fmt: skip
    ranked = rank(cfg, user, items)
    t = Table("rank", "item", "P(click)")
    for i, (item, p) in enumerate(ranked, 1):
        t.add_row(str(i), item, f"{p:.4f}")
    console.print(f"  user {user}, champion {champion}:")
    console.print(t)


def loop_stage(cfg: Settings, console: Console) -> None:
    """The flywheel turning (flywheel.loop): a bootstrap week, then served weeks, each retrained by the weekly
    DAG on Airflow; the daily CTR per version against random lists in var/online/loop.png."""
    from datetime import datetime

    from flywheel import loop
    from flywheel.clients.airflow import trigger_and_wait

    console.rule("6. the loop turning: a simulated world ranked by `flywheel serve`, retrained on what it served")
    # A model of the Open Bandit world is no champion in the simulated one (the drift checks rightly block the new
    # world's data against its training set): the loop starts a registry of its own, the first one is kept.
    if cfg.training.registry_dir.exists():
        cfg.training.registry_dir.rename(_obd_registry(cfg))
        console.print(f"  the Open Bandit models moved to {_obd_registry(cfg)}; this world starts a new registry")
    plan = loop.LoopPlan()

    def retrain(start: datetime, end: datetime, mode: str) -> None:
        dag = "retrain_monthly_full" if mode == "full" else "retrain_weekly_incremental"
        run = trigger_and_wait(cfg, dag, start, end, log=console.print, by="demo-loop")
        console.print(f"  DAG run {dag}/{run['run_id']}: {run['state']}")

    start = datetime.fromisoformat(cfg.simulator.start.replace("Z", "+00:00"))
    result = loop.run(cfg, plan, retrain, start, say=lambda m: console.print(f"  {m}"))
    t = Table("week", "served by (lists)", "CTR", "expected CTR", "random lists", "lift", "retrain at its end")
    for w in result.weeks:
        served = ", ".join(f"{v} ({n})" for v, n in w.served_by.items()) or "the simulator's policy"
        decision = f"{w.decision['decision']} {w.decision['version'] or ''}" if w.decision else "-"
        rates = ["-"] * 4  # the bootstrap week: the simulator's lists, no truth recorded
        if w.served_by:
            rates = [f"{w.ctr:.4f}", f"{w.expected_ctr:.4f}", f"{w.random_ctr:.4f}", f"{w.lift:.2f}x"]
        t.add_row(str(w.index), served, *rates, decision)
    console.print(t)
    r = result.reconciled
    console.print(
        f"  reconcile {result.topics['events']}: in {r['in']} = aggregated {r['aggregated']} + duplicates "
        f"{r['duplicates']} + dead-lettered {r['dead_lettered']} + late {r['late']} + in open windows {r['pending']}"
    )
    console.print(f"  served lists' expected CTR over random lists': {result.report['ctr_lift_vs_random']:.2f}x")
    console.print(f"  chart {cfg.var_dir / 'online' / 'loop.png'}")


def _obd_registry(cfg: Settings) -> Path:
    return cfg.training.registry_dir.with_name(cfg.training.registry_dir.name + "-obd")
