"""The feature job on real Kafka and Redis (embedded Flink): every value it stores equals an independent
reference computed in pandas from the raw events, the counts reconcile exactly, and the Feast SDK reads
from Redis what the offline store holds."""

from __future__ import annotations

import uuid

import orjson
import pytest

from feature_repo.spec import GROUPS
from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel import feast_store
from flywheel.cli import write_records
from flywheel.events.consumer import read_topic
from flywheel.events.schema import parse
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.infra.services import Redis
from flywheel.kafka import ensure_topics
from tests.integration.feature_checks import assert_offline_matches_reference, assert_online_matches_offline

pytestmark = pytest.mark.integration
FAULTS = Faults(out_of_order_rate=0.05, late_rate=0.01, duplicate_rate=0.02, malformed_rate=0.01)


@pytest.fixture(scope="module")
def job(cfg):
    feast_store.apply(cfg)
    Redis(cfg).client().flushdb()  # the online checks must see this run's writes only
    name = f"fj-{uuid.uuid4().hex[:8]}"
    opt = features.options(
        cfg, topic=name, dlq_topic=f"{name}-dlq", late_topic=f"{name}-late", group_id=name, bounded=True
    )
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    sim = simulate(SimConfig(events=6_000, users=250, items=120, categories=6, days=1.0, faults=FAULTS, seed=11))
    write_records(cfg, sim.keys, sim.values, opt.topic)
    features.run(cfg, opt)
    return cfg, opt, sim


def test_counts_reconcile_exactly(job):
    cfg, opt, sim = job
    r = reconcile(cfg, opt.topic, opt.dlq_topic, opt.late_topic, opt.offline_dir)
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


@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_offline_values_equal_the_reference_at_every_window_end(job, group):
    cfg, opt, sim = job
    assert_offline_matches_reference(cfg, opt, sim, group)


def test_feast_sdk_reads_from_redis_what_the_offline_store_holds_last(job):
    cfg, opt, _ = job
    assert_online_matches_offline(cfg, opt)
