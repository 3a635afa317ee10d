"""The feature job submitted with `flink run` (flywheel flink submit) to the standalone cluster."""

from __future__ import annotations

import uuid

import pytest

from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel import feast_store
from flywheel.cli import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.flink_cluster import list_jobs, submit, wait_state
from flywheel.kafka import ensure_topics

pytestmark = pytest.mark.integration


def _prepare(cfg, sim_cfg: SimConfig):
    feast_store.apply(cfg)
    name = f"cl-{uuid.uuid4().hex[:8]}"
    opt = features.options(
        cfg,
        topic=name,
        dlq_topic=f"{name}-dlq",
        late_topic=f"{name}-late",
        group_id=name,
        offline_dir=cfg.var_dir / f"offline-{name}",
        bounded=True,
        job_name=name,
    )
    ensure_topics(cfg.kafka, [name])
    sim = simulate(sim_cfg)
    write_records(cfg, sim.keys, sim.values, name)
    return opt, sim


def _args(opt) -> list[str]:
    return [
        "--bounded",
        "--topic",
        opt.topic,
        "--group-id",
        opt.group_id,
        "--dlq-topic",
        opt.dlq_topic,
        "--late-topic",
        opt.late_topic,
        "--offline-dir",
        str(opt.offline_dir),
        "--job-name",
        opt.job_name,
    ]


def test_submitted_job_runs_on_the_cluster_and_reconciles(cfg):
    opt, sim = _prepare(
        cfg,
        SimConfig(
            events=3_000,
            users=150,
            items=80,
            categories=5,
            days=0.5,
            seed=5,
            faults=Faults(duplicate_rate=0.02, malformed_rate=0.01),
        ),
    )
    job_id = submit(cfg, _args(opt))
    assert any(j["jid"] == job_id and j["name"] == opt.job_name for j in list_jobs(cfg))
    assert wait_state(cfg, job_id, {"FINISHED", "FAILED", "CANCELED"}, timeout_s=600) == "FINISHED"
    r = reconcile(cfg, opt.topic, opt.dlq_topic, opt.late_topic, opt.offline_dir)
    assert r.events_in == 3_000 and r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert features.committed_parquet(opt.offline_dir, "user_stats_24h")
