"""The feature job submitted with `flink run` (flywheel flink submit) to the standalone cluster,
including a TaskManager killed after a completed checkpoint."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests

from feature_repo.spec import GROUPS
from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel import feast_store
from flywheel.cli import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.flink_cluster import completed_checkpoints, job, list_jobs, submit, wait_state
from flywheel.infra.services import Flink, Redis
from flywheel.kafka import ensure_topics
from tests.integration.feature_checks import assert_offline_matches_reference, assert_online_matches_offline

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
    assert any((opt.offline_dir / "user_stats_24h").glob("dt=*/hr=*/part-*"))


def test_taskmanager_killed_after_a_checkpoint_recovers_exactly_once(cfg, monkeypatch):
    """Kill -9 the TaskManager once a checkpoint has completed, start a new one: the job restores from the
    checkpoint and finishes; Parquet has no duplicate and no missing value against the reference, the
    counts reconcile, and Redis converges to the latest offline value of every key."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "2000")
    Redis(cfg).client().flushdb()
    opt, sim = _prepare(
        cfg,
        SimConfig(
            events=6_000,
            users=250,
            items=120,
            categories=6,
            days=1.0,
            seed=11,
            faults=Faults(duplicate_rate=0.02, malformed_rate=0.01, out_of_order_rate=0.05),
        ),
    )
    job_id = submit(cfg, _args(opt))
    deadline = time.monotonic() + 300
    while completed_checkpoints(cfg, job_id) < 1:
        assert job(cfg, job_id)["state"] in ("CREATED", "INITIALIZING", "RUNNING"), "finished before a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint completed in 300 s"
        time.sleep(0.5)
    flink = Flink(cfg)
    os.killpg(flink.tm_proc.pid(), signal.SIGKILL)
    time.sleep(2)
    flink.start_taskmanager()
    assert wait_state(cfg, job_id, {"FINISHED", "FAILED", "CANCELED"}, timeout_s=900) == "FINISHED"
    counts = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}/checkpoints", timeout=10).json()["counts"]
    assert counts["restored"] >= 1, counts

    r = reconcile(cfg, opt.topic, opt.dlq_topic, opt.late_topic, opt.offline_dir)
    assert r.events_in == 6_000 and r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    for group in GROUPS:
        assert_offline_matches_reference(cfg, opt, sim, group)
    assert_online_matches_offline(cfg, opt)
