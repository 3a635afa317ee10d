"""The feature job submitted with `flink run` (flywheel flink submit) to the standalone cluster."""

from __future__ import annotations

import uuid

import pytest

from flink_jobs.reconcile import reconcile
from flywheel import feast_store
from flywheel.cli import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.flink_cluster import list_jobs, submit, wait_state
from flywheel.kafka import ensure_topics

pytestmark = pytest.mark.integration


def test_submitted_job_runs_on_the_cluster_and_reconciles(cfg):
    feast_store.apply(cfg)
    name = f"cl-{uuid.uuid4().hex[:8]}"
    offline = cfg.var_dir / f"offline-{name}"
    ensure_topics(cfg.kafka, [name])
    sim = simulate(
        SimConfig(
            events=3_000,
            users=150,
            items=80,
            categories=5,
            days=0.5,
            seed=5,
            faults=Faults(duplicate_rate=0.02, malformed_rate=0.01, out_of_order_rate=0.05),
        )
    )
    write_records(cfg, sim.keys, sim.values, name)
    job_id = submit(
        cfg,
        [
            "--bounded",
            "--topic",
            name,
            "--group-id",
            name,
            "--dlq-topic",
            f"{name}-dlq",
            "--late-topic",
            f"{name}-late",
            "--offline-dir",
            str(offline),
            "--job-name",
            name,
        ],
    )
    assert any(j["jid"] == job_id and j["name"] == name for j in list_jobs(cfg))
    assert wait_state(cfg, job_id, {"FINISHED", "FAILED", "CANCELED"}, timeout_s=600) == "FINISHED"
    r = reconcile(cfg, name, f"{name}-dlq", f"{name}-late", offline)
    assert r.events_in == 3_000 and r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert any((offline / "user_stats_24h").glob("dt=*/hr=*/part-*"))
