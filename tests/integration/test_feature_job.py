"""The feature job on real Kafka and Redis (embedded Flink): every value it stores equals an independent
reference computed in pandas from the raw events, the counts reconcile exactly, and the Feast SDK reads
from Redis what the offline store holds."""

from __future__ import annotations

import functools
import shutil
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from benchmarks import passthrough
from feature_repo.spec import GROUPS, group
from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel.clients import feast_store
from flywheel.clients.kafka import ensure_topics
from flywheel.errors import FlywheelError
from flywheel.events.consumer import read_topic
from flywheel.events.producer import write_records
from flywheel.events.schema import extras, parse
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.polling import wait_until
from flywheel.stack.services import Redis
from tests.integration.feature_checks import (
    all_rows,
    assert_offline_matches_reference,
    assert_online_matches_offline,
    assert_online_matches_reference,
    fresh_job,
    late_by_rule,
    markers,
    offline_rows,
    same,
)
from training import labels, trainset

pytestmark = pytest.mark.integration
FAULTS = Faults(out_of_order_rate=0.05, late_rate=0.01, duplicate_rate=0.02, malformed_rate=0.01)


@pytest.fixture(scope="module")
def job(cfg):
    feast_store.ensure_applied(cfg)
    Redis(cfg).client().flushdb()  # the online checks must see this run's writes only
    shutil.rmtree(cfg.offline_dir, ignore_errors=True)  # and the offline ones too (a crashed run leaves files)
    name = f"fj-{uuid.uuid4().hex[:8]}"
    opt = features.options(
        cfg, topic=name, dlq_topic=f"{name}-dlq", late_topic=f"{name}-late", group_id=name, bounded=True
    )
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    sim = simulate(SimConfig(events=6_000, users=250, items=120, categories=6, days=1.0, faults=FAULTS, seed=11))
    write_records(cfg.kafka, sim.keys, sim.values, opt.topic)
    features.run(cfg, opt)
    return cfg, opt, sim


def test_passthrough_job_reads_the_same_source_to_its_end(job):
    """The benchmark's ceiling: the feature job's source table (event time, watermark) into a blackhole."""
    cfg, opt, _ = job
    name = f"pt-{uuid.uuid4().hex[:8]}"
    # run() waits for the job and raises if it cannot be planned or fails.
    result = passthrough.run(cfg, features.options(cfg, topic=opt.topic, group_id=name, bounded=True, job_name=name))
    assert result.get_job_client() is not None


def test_counts_reconcile_exactly(job):
    cfg, opt, sim = job
    r = reconcile(cfg, opt)
    assert r.events_in == len(sim.values)
    assert r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert 0 < r.duplicates <= sim.stats.duplicates
    assert r.late <= sim.stats.late + sim.stats.duplicates


def test_dead_letters_carry_the_reason(job):
    cfg, opt, sim = job
    letters = [orjson.loads(v) for _, v in read_topic(cfg.kafka, opt.dlq_topic)]
    assert all(letter["reason"] and letter["payload"] for letter in letters)
    assert {letter["payload"].encode() for letter in letters} == {v for v in sim.values if parse(v)[1] is not None}
    # The SQL contract (reading JSON_FIELDS' columns) blames the same field as the Python validator.
    for letter in letters:
        assert letter["reason"].split(":")[0] == parse(letter["payload"])[1].field, letter


@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_offline_values_equal_the_reference_at_every_window_end(job, group):
    cfg, opt, sim = job
    assert_offline_matches_reference(cfg, opt, sim, group)


def test_feast_sdk_reads_from_redis_what_the_offline_store_holds_last(job):
    cfg, opt, _ = job
    assert_online_matches_offline(cfg, opt)


def test_event_log_holds_exactly_the_aggregated_events(job):
    cfg, opt, sim = job
    r = reconcile(cfg, opt)
    n, distinct, nulls, simulated, served = duckdb.execute(
        "SELECT count(*), count(DISTINCT event_id), count(*) - count(request_id), count(*) FILTER (source = "
        "'simulator'), count(policy) FROM read_parquet($f)",
        {"f": labels.event_log_files(opt.offline_dir)},
    ).fetchall()[0]
    assert n == distinct == r.aggregated
    assert nulls == 0
    assert simulated == n and served == 0  # the source is kept; no ranking service served these lists


def test_events_of_three_contract_versions_are_all_kept_with_their_fields(job):
    """The simulator's producers write v1, v2 (with session_id) and v3 (with a field the contract does not
    have) interleaved: none is dead-lettered for its version or its extra field (the dead-letter test above
    holds them to the Python validator), and the event log keeps each one's version, session and extras."""
    cfg, opt, sim = job
    raw = {}
    for value in sim.values:
        event, rejection = parse(value)
        if rejection is None:
            raw[event["event_id"]] = (event["schema_version"], event.get("session_id"), extras(event) or None)
    rows = duckdb.execute(
        "SELECT event_id, schema_version, session_id, extras FROM read_parquet($f)",
        {"f": labels.event_log_files(opt.offline_dir)},
    ).fetchall()
    logged = {e: (v, s, None if x is None else orjson.loads(x)) for e, v, s, x in rows}
    assert logged == {e: raw[e] for e in logged}
    versions = Counter(v for v, _, _ in logged.values())
    assert set(versions) == {1, 2, 3} and min(versions.values()) > 500, versions


def test_training_set_from_the_job_output_keeps_every_label(job):
    cfg, opt, sim = job
    start = datetime.fromisoformat(cfg.simulator.start.replace("Z", "+00:00"))
    manifest, out = trainset.build(cfg, feast_store.store(cfg), start, start + timedelta(days=2), name="it")
    impressions = duckdb.execute(
        "SELECT count(*) FROM read_parquet($f) WHERE event_type = 'impression'",
        {"f": labels.event_log_files(opt.offline_dir)},
    ).fetchall()[0][0]
    assert manifest.rows == manifest.label_rows_in == impressions > 0
    assert 0 < manifest.label_counts["label_click"] < manifest.rows
    assert manifest.labels_final is False  # the log ends inside the window
    written = duckdb.execute("SELECT count(*) FROM read_parquet($f)", {"f": str(out / "dt=*" / "*.parquet")})
    assert written.fetchall()[0][0] == manifest.rows
    # Early impressions have no history yet: their features are missing, not their rows.
    assert 0 < manifest.missing_rates["user_stats_24h__missing"] < 1


def test_training_rows_equal_what_online_serving_returns(job):
    """No training/serving skew: for each key, the builder's value just after the key's latest window end
    equals what the Feast SDK reads from Redis for that key."""
    cfg, opt, _ = job
    store = feast_store.store(cfg)
    plan = trainset.plan(store, cfg.trainset.feature_service)
    for view in (v for v in plan.views if v.requested):
        latest = offline_rows(opt, group(view.name)).sort_values("event_timestamp")
        latest = latest.groupby(list(view.join_keys)).tail(1).head(25)
        rows = latest[list(view.join_keys)].to_dict("records")
        at = pd.to_datetime(latest.event_timestamp, utc=True) + pd.Timedelta(milliseconds=1)
        entity = latest[list(view.join_keys)].assign(event_timestamp=at.values)
        for k in ("user_id", "item_id", "item_category"):
            entity[k] = entity[k] if k in entity else "-"
        one = trainset.Plan(plan.service, plan.version, [view], features=[n for n, _ in view.features])
        offline = trainset.point_in_time_join(one, pa.Table.from_pandas(entity, preserve_index=False)).to_pandas()
        names = [n for n, _ in view.features]
        online = store.get_online_features(features=[f"{view.name}:{n}" for n in names], entity_rows=rows).to_df()
        assert not offline[f"{view.name}__missing"].any()
        for n in names:
            for a, b in zip(offline[n], online[n], strict=True):
                assert same(None if pd.isna(a) else a, b), f"{view.name}.{n}: training {a}, serving {b}"


def test_scoring_builds_the_same_feature_vector_as_training(job):
    """The online path (Feast SDK -> scoring.online_rows -> model input) and the training path (point-in-time
    join -> model input) give the same vector for the same user, item and time. TTLs are left out of the
    training side here: online serving has none, so at a time long after the replay they would differ by
    design (see README, training/serving semantics)."""
    from dataclasses import replace

    import numpy as np

    from training import scoring
    from training.model import ModelConfig, to_batch

    cfg, opt, _ = job
    store = feast_store.store(cfg)
    plan = trainset.plan(store, cfg.trainset.feature_service)
    plan = trainset.Plan(plan.service, plan.version, [replace(v, ttl=None) for v in plan.views], plan.on_demand,
                         plan.features)  # fmt: skip
    log = labels.event_log_files(opt.offline_dir)
    pairs = duckdb.execute(
        "SELECT user_id, item_id, arg_max(item_category, event_timestamp) FROM read_parquet($f) "
        "WHERE event_type = 'impression' AND item_category IS NOT NULL GROUP BY ALL ORDER BY count(*) DESC LIMIT 5",
        {"f": log},
    ).fetchall()
    latest = duckdb.execute("SELECT max(event_timestamp) FROM read_parquet($f)", {"f": log}).fetchall()[0][0]
    at = pd.Timestamp(latest, tz="UTC") + pd.Timedelta(days=30)  # after every row the job wrote
    for user, item, category in pairs:
        online = scoring.online_rows(cfg, store, user, [item], plan.service, at.to_pydatetime())
        entity = pa.table({"user_id": [user], "item_id": [item], "item_category": [category],
                           "event_timestamp": pa.array([at], pa.timestamp("us", tz="UTC"))})  # fmt: skip
        offline = trainset.point_in_time_join(plan, entity)
        dense = tuple(c for c in online.column_names if c in offline.column_names and c not in ("user_id", "item_id",
                      "item_category", "event_timestamp"))  # fmt: skip
        assert set(plan.features) <= set(dense)
        mcfg = ModelConfig(dense=dense, categorical=("user_id", "item_id", "item_category"))
        a = to_batch(online, mcfg, np.ones(1))
        b = to_batch(offline.append_column("position", pa.array([1])).append_column("propensity", pa.array([1.0]))
                     .append_column("request_id", pa.array(["x"])).append_column("label_click", pa.array([0])),
                     mcfg, np.ones(1))  # fmt: skip
        assert np.array_equal(a.cats.numpy(), b.cats.numpy())
        # Feast keeps last_click_time online in whole seconds: seconds_since_last_click may differ by < 1 s
        # (log1p-scaled here, so well under 1e-3).
        close = np.isclose(a.dense.numpy(), b.dense.numpy(), rtol=1e-6, atol=1e-3)
        assert close.all(), {
            c: (x, y) for c, x, y, ok in zip(dense, a.dense[0], b.dense[0], close[0], strict=True) if not ok
        }


def test_replays_of_a_topic_with_very_old_events_mixed_in_give_identical_outputs(cfg):
    """Lateness is a function of the input alone (per partition, against the highest earlier event time):
    two bounded runs over the same topic, with valid events three days old mixed in at random places, write
    identical views and event logs and identical late topics, and the late topic holds exactly what the rule
    names. Under the old rule (against the current watermark) which of such events were late varied with
    when the periodic watermarks fell."""
    feast_store.ensure_applied(cfg)
    sim = simulate(
        SimConfig(events=12_000, users=300, items=100, categories=6, days=1.0, seed=31,
                  faults=Faults(out_of_order_rate=0.05, duplicate_rate=0.02, malformed_rate=0.01))
    )  # fmt: skip
    rng = np.random.default_rng(5)
    keys, values = list(sim.keys), list(sim.values)
    valid = [i for i, v in enumerate(values) if parse(v)[1] is None]
    for n, i in enumerate(rng.choice(valid, 240, replace=False)):
        event = orjson.loads(values[i])
        old = {**event, "event_id": f"old-{n}", "event_time": event["event_time"] - 3 * 86_400_000}
        at = int(rng.integers(0, len(values)))
        keys.insert(at, keys[i])
        values.insert(at, orjson.dumps(old))
    first = fresh_job(cfg, "replay", bounded=True)
    write_records(cfg.kafka, keys, values, first.topic)
    runs = []
    for opt in (first, fresh_job(cfg, "replay", topic=first.topic, bounded=True)):
        features.run(cfg, opt)
        r = reconcile(cfg, opt)
        assert r.events_in == len(values) and r.pending == 0, r.as_dict()
        late = Counter(orjson.loads(v)["payload"] for _, v in read_topic(cfg.kafka, opt.late_topic))
        runs.append((all_rows(opt), late))
    (rows_a, late_a), (rows_b, late_b) = runs
    assert late_a == late_b == late_by_rule(cfg, first.topic)
    old_late = sum(n for payload, n in late_a.items() if orjson.loads(payload)["event_id"].startswith("old-"))
    assert 230 <= old_late <= 240, old_late  # one that comes first in its partition is on time, by the rule
    assert rows_a == rows_b


def test_a_live_job_writes_each_window_to_redis_as_it_fires(cfg):
    """Live (the watermark near the wall clock), each window value reaches Redis as its window fires
    (FeastRedisSink writes at every watermark), while the job runs on.

    The bounded runs above cannot show this: the end of their input writes everything. Here the job never
    ends before the check, and neither a checkpoint nor the catch-up timer can write (both an hour away),
    so only live writes can fill Redis; and with no checkpoint there is no Parquet to compare with, so
    Redis is checked against the reference itself. (A sliding view that lost its watermark on the way to
    the sink passed every bounded test and never went live.) Events from 3 h to 2 h ago are the backlog;
    a heartbeat at the wall clock in every partition, each second, keeps the watermark live, as a real
    stream would."""
    feast_store.ensure_applied(cfg)
    hour = {"online_flush_interval_ms": 3_600_000, "checkpoint_interval_ms": 3_600_000}
    live = cfg.model_copy(update={"features": cfg.features.model_copy(update=hour)})
    opt = fresh_job(live, "live")
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    sim = simulate(SimConfig(events=3_000, users=150, items=80, categories=5, days=1 / 24, start=start, seed=13))
    write_records(cfg.kafka, sim.keys, sim.values, opt.topic)

    stop = threading.Event()

    def heartbeat() -> None:
        n = 0
        while not stop.wait(1.0):
            markers(cfg, opt.topic, int(time.time() * 1000), tag=f"heartbeat{n}")
            n += 1

    beats = threading.Thread(target=heartbeat, daemon=True)
    client = features.run(live, opt, wait=False)
    beats.start()
    try:
        began = time.monotonic()
        for g in GROUPS:
            fired = int(time.time() - live.features.watermark_delay_s - 5) * 1000  # windows ending later may not have
            check = functools.partial(assert_online_matches_reference, live, opt, sim, g, until_ms=fired)
            try:
                wait_until(lambda check=check: check() or True, 180, g.name, retry_on=(AssertionError,), interval_s=2)
            except FlywheelError:
                check()  # not converged: fail with the assertion's message
        print(f"Redis matched the reference {time.monotonic() - began:.1f} s after the heartbeats began")
        assert client.get_job_status().result().name == "RUNNING"  # live writes, not the end of input
    finally:
        stop.set()
        beats.join()
        client.cancel().result()
