"""FeastRedisSink against Feast itself, on the real Redis: the bytes it writes are the bytes Feast's own
Python code writes (its key and field helpers, behind flywheel.compat.feast, and its protos), for every
value type and a two-key entity; its writes are newer-only against values Feast's
`write_to_online_store` wrote; and a Redis outage heals by itself with nothing lost."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pandas as pd
import pytest
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.spec import GROUPS, group
from flink_jobs import features, online_sink
from flink_jobs.reconcile import reconcile
from flywheel.clients import feast_store
from flywheel.compat import feast as feast_private
from flywheel.events.producer import write_records
from flywheel.events.simulator import SimConfig, simulate
from flywheel.settings import load_settings
from flywheel.stack.services import Redis
from tests.integration.feature_checks import (
    assert_online_matches_reference,
    await_accounted,
    await_online_matches_offline,
    fresh_job,
    markers,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(cfg):
    feast_store.ensure_applied(cfg)
    return feast_store.store(cfg)


def _values(rows: list[str]) -> str:
    return "SELECT * FROM (VALUES " + ", ".join(rows) + ")"


def _feast_hash(store, view: str, features: dict, ts: datetime) -> dict[bytes, bytes]:
    """The Redis hash Feast's own Python code writes for these values (its helpers and protos)."""
    fv = store.get_feature_view(view)
    types = {f.name: f.dtype.to_value_type() for f in fv.features}
    stamp = Timestamp()
    stamp.FromDatetime(ts)
    out = {f"_ts:{view}".encode(): stamp.SerializeToString()}
    for name, v in features.items():
        proto = python_values_to_proto_values([v], types[name])[0]
        out[feast_private.redis_field(view, name)] = proto.SerializeToString()
    return out


def _key(store, keys: dict[str, str]) -> bytes:
    entity = EntityKey(join_keys=list(keys), entity_values=[Value(string_val=v) for v in keys.values()])
    return feast_private.redis_key(store, entity)


def _redis_hash(cfg, store, keys: dict[str, str]) -> dict[bytes, bytes]:
    return Redis(cfg).client().hgetall(_key(store, keys))


def test_bytes_are_feasts_own_for_every_value_type_and_a_two_key_entity(cfg, store):
    """int64, double (finite, null) and timestamp features; one-key and two-key entities (the two-key
    one given in the job's column order, user_id first, which Feast's serialization sorts)."""
    client = Redis(cfg).client()
    ts = datetime(2026, 2, 3, 4, 5, 0, 1000, tzinfo=UTC)
    cases = {
        "user_category_stats_7d": (
            {"user_id": "golden-u1", "item_category": "golden-c7"},
            {"cat_impressions_7d": 12, "cat_clicks_7d": 0, "cat_ctr_7d": 0.0},
        ),
        "user_stats_1h": (
            {"user_id": "golden-u2"},
            {
                "user_impressions_1h": 7,
                "user_clicks_1h": 2,
                "user_purchases_1h": 1,
                "user_ctr_1h": 2 / 7,
                "user_debiased_ctr_1h": None,
            },
        ),  # fmt: skip
        "user_last_click": ({"user_id": "golden-u3"}, {"last_click_time": datetime(2026, 2, 3, 4, 1, 2, tzinfo=UTC)}),
    }
    for view, (keys, feats) in cases.items():
        g = group(view)
        assert list(keys) == list(g.entities) and list(feats) == g.feature_names, "the case drifted from spec.py"
        client.delete(_key(store, keys))  # an earlier run's value would be as new: not written over
        cols = [f"'{v}'" for v in keys.values()]
        for f in g.features:
            v = feats[f.name]
            sql_type = {"int64": "BIGINT", "float64": "DOUBLE", "timestamp": "TIMESTAMP(3)"}[f.dtype]
            literal = "NULL" if v is None else (f"TIMESTAMP '{v:%Y-%m-%d %H:%M:%S}'" if f.dtype == "timestamp" else v)
            cols.append(f"CAST({literal} AS {sql_type})")
        cols.append(f"TIMESTAMP '{ts:%Y-%m-%d %H:%M:%S}.001'")
        names = ", ".join([*g.entities, *g.feature_names, "event_timestamp"])
        online_sink.write_query(cfg, view, f"{_values(['(' + ', '.join(cols) + ')'])} AS t({names})")
        assert _redis_hash(cfg, store, keys) == _feast_hash(store, view, feats, ts), view


def test_writes_are_newer_only_against_feasts_own_writes(cfg, store):
    """Feast's write_to_online_store puts a newer value for one user: the sink's older value for that user
    is skipped, while its value for another user lands; a value newer than Feast's then overwrites it;
    the same write again changes nothing."""
    view, cols = "user_stats_1h", group("user_stats_1h").feature_names
    names = ", ".join(["user_id", *cols, "event_timestamp"])
    t1, t2, t3 = (datetime(2026, 3, 1, 10, m, tzinfo=UTC) for m in (0, 5, 10))
    feast_row = {"user_id": "newer-a", "user_impressions_1h": 100, "user_clicks_1h": 10, "user_purchases_1h": 1,
                 "user_ctr_1h": 0.1, "user_debiased_ctr_1h": 0.2, "event_timestamp": t2}  # fmt: skip
    Redis(cfg).client().flushdb()
    store.write_to_online_store(view, pd.DataFrame([feast_row]))

    def sink(rows: list[tuple[str, int, datetime]]) -> None:
        values = [f"('{u}', CAST({n} AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0.5 AS DOUBLE), "
                  f"CAST(0.5 AS DOUBLE), TIMESTAMP '{t:%Y-%m-%d %H:%M:%S}')" for u, n, t in rows]  # fmt: skip
        online_sink.write_query(cfg, view, f"{_values(values)} AS t({names})")

    def read() -> dict[str, int | None]:
        resp = store.get_online_features(
            features=[f"{view}:user_impressions_1h"], entity_rows=[{"user_id": "newer-a"}, {"user_id": "newer-b"}]
        ).to_dict()
        return dict(zip(resp["user_id"], resp["user_impressions_1h"], strict=True))

    sink([("newer-a", 1, t1), ("newer-b", 2, t1)])
    assert read() == {"newer-a": 100, "newer-b": 2}
    sink([("newer-a", 3, t2)])  # the same instant as Feast's: not newer, skipped (as Feast's writer does)
    assert read() == {"newer-a": 100, "newer-b": 2}
    sink([("newer-a", 4, t3)])
    assert read() == {"newer-a": 4, "newer-b": 2}
    before = _redis_hash(cfg, store, {"user_id": "newer-a"})
    sink([("newer-a", 4, t3)])  # a replay
    assert _redis_hash(cfg, store, {"user_id": "newer-a"}) == before
    # And Feast's own writer, now the older one, does not overwrite the sink's value either.
    store.write_to_online_store(view, pd.DataFrame([{**feast_row, "event_timestamp": t1}]))
    assert read()["newer-a"] == 4


@pytest.mark.faults  # a fault-matrix row: minutes; `make test-faults`
def test_a_redis_outage_heals_by_itself_and_loses_nothing(cfg, store, monkeypatch):
    """Redis stops for 30 s while the job runs and events keep coming: the sink retries, gives up after
    its retry timeout (10 s here), the job restarts from its checkpoint until Redis is back, and in the end
    Redis holds each key's latest value, as the offline store does, and as the reference computes it:
    nothing lost, nothing older written over newer."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__ONLINE_RETRY_TIMEOUT_S", "10")
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "2000")
    outage = load_settings()
    redis = Redis(outage)
    redis.client().flushdb()
    opt = fresh_job(outage, "outage")
    sim = simulate(SimConfig(events=20_000, users=300, items=120, categories=6, days=1.0, seed=17))
    write_records(outage.kafka, sim.keys[:10_000], sim.values[:10_000], opt.topic)
    job = features.run(outage, opt, wait=False)
    try:
        await_accounted(outage, opt, 1, "the first checkpoint", 300)
        assert redis.down()
        write_records(outage.kafka, sim.keys[10_000:], sim.values[10_000:], opt.topic)
        time.sleep(30)
        assert redis.up() == "started"
        watermark_ms = int(SimConfig().start.timestamp() * 1000) + 10 * 86_400_000
        markers(outage, opt.topic, watermark_ms)
        await_accounted(outage, opt, 20_000, "the job to catch up after the outage")
        await_online_matches_offline(outage, opt, timeout_s=120)
        for g in GROUPS:
            assert_online_matches_reference(outage, opt, sim, g, until_ms=watermark_ms - 60_000)
        assert job.get_job_status().result().name == "RUNNING"
    finally:
        job.cancel().result()
    r = reconcile(outage, opt)
    assert r.accounted == 20_000 and r.events_in == 20_000 + outage.kafka.partitions, r.as_dict()  # + markers
