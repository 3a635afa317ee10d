"""The feature job submitted with `flink run` (flywheel flink submit) to the standalone cluster."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import orjson
import pytest

from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel.clients import feast_store
from flywheel.clients.flink import (
    cancel,
    checkpoints,
    completed_checkpoints,
    job,
    list_jobs,
    rest,
    stop_with_savepoint,
    submit,
    wait_state,
)
from flywheel.clients.kafka import ensure_topics
from flywheel.events.consumer import read_topic
from flywheel.events.producer import write_records
from flywheel.events.schema import parse
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.stack.services import Flink, Redis
from tests.integration.feature_checks import (
    FOUR_VIEWS,
    all_rows,
    assert_exactly_once,
    assert_online_matches_offline,
    await_accounted,
    await_online_matches_offline,
    fresh_job,
    kill_taskmanager,
    markers,
)

pytestmark = pytest.mark.integration


def _prepare(cfg, sim_cfg: SimConfig, first: int | None = None):
    """A fresh topic holding the simulated events (only the `first` ones, if given)."""
    feast_store.ensure_applied(cfg)
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
    write_records(cfg.kafka, sim.keys[:first], sim.values[:first], name)
    return opt, sim


def test_submitted_job_runs_on_the_cluster_without_python_and_writes_both_stores(cfg):
    """No Python at run time: the TaskManager is told to start Python workers with an interpreter that does
    not exist, so any Python operator would fail the job. It finishes, reconciles, has no Python vertex,
    and the Feast SDK reads from Redis what the offline store holds."""
    Redis(cfg).client().flushdb()
    faults = Faults(duplicate_rate=0.02, malformed_rate=0.01)
    world = SimConfig(events=3_000, users=150, items=80, categories=5, days=0.5, seed=5, faults=faults)
    opt, sim = _prepare(cfg, world)
    job_id = submit(cfg, opt.argv(), pyexec="/nonexistent/python3")
    assert any(j["jid"] == job_id and j["name"] == opt.job_name for j in list_jobs(cfg))
    assert wait_state(cfg, job_id, {"FINISHED", "FAILED", "CANCELED"}, timeout_s=600) == "FINISHED"
    vertices = [v["name"] for v in job(cfg, job_id)["vertices"]]
    assert not [v for v in vertices if "python" in v.lower()], vertices
    assert any("feast-redis-user_category_stats_7d" in v for v in vertices), vertices
    r = reconcile(cfg, opt)
    assert r.events_in == 3_000 and r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert features.committed_parquet(opt.offline_dir, "user_stats_24h")
    assert_online_matches_offline(cfg, opt)


def _second_checkpoint(cfg, job_id: str, timeout_s: float = 300) -> None:
    """Until the job has completed 2 checkpoints: the second one starts after what was already in the
    topic at submission was read."""
    deadline = time.monotonic() + timeout_s
    while completed_checkpoints(cfg, job_id) < 2:
        assert time.monotonic() < deadline, f"fewer than 2 completed checkpoints after {timeout_s:.0f} s"
        time.sleep(0.5)


def _taskmanagers_of(cfg, job_id: str) -> set[str]:
    """The TaskManagers (resource ids) that run a subtask of the job."""
    out: set[str] = set()
    for vertex in job(cfg, job_id)["vertices"]:
        answer = rest(cfg, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
        out |= {tm["taskmanager-id"] for tm in answer["taskmanagers"]}
    return out


@pytest.mark.faults  # a fault-matrix row: minutes; `make test-faults`
def test_a_killed_taskmanager_is_recovered_from_exactly(cfg, monkeypatch):
    """The job at parallelism 4 across the test cluster's two TaskManagers (two slots each, separate working
    directories): SIGKILL one of them after a completed checkpoint and start a new one; the job restores
    from the checkpoint and goes on. Parquet then has no duplicate and no missing value against the
    reference, the counts reconcile, and Redis holds what the offline store holds.

    The job is unbounded, and half the events are produced only after the kill: a bounded job on this
    machine can reach the end of its input before its first checkpoint completes, and then there is
    nothing left to recover."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "2000")  # read by `flink run`'s client
    Redis(cfg).client().flushdb()
    faults = Faults(out_of_order_rate=0.05, duplicate_rate=0.02, malformed_rate=0.01)
    world = SimConfig(events=40_000, users=400, items=150, categories=6, days=1.5, seed=9, faults=faults)
    opt, sim = _prepare(cfg, world, first=20_000)
    flink = Flink(cfg)
    assert len(flink.tm_procs) == 2 and cfg.flink.taskmanager_slots == 2, "the test stack runs 2 TaskManagers"
    job_id = submit(cfg, replace(opt, bounded=False, parallelism=4).argv())
    _second_checkpoint(cfg, job_id)
    assert _taskmanagers_of(cfg, job_id) == {"taskmanager-0", "taskmanager-1"}
    kill_taskmanager(flink, 1)
    write_records(cfg.kafka, sim.keys[20_000:], sim.values[20_000:], opt.topic)
    markers(cfg, opt.topic, int(SimConfig().start.timestamp() * 1000) + 11 * 86_400_000)
    await_accounted(cfg, opt, 40_000, "the job to catch up after the TaskManager's loss")
    assert checkpoints(cfg, job_id)["latest"]["restored"] is not None, "the job did not restore from a checkpoint"
    await_online_matches_offline(cfg, opt)  # values not yet written were in checkpointed state, then restored
    cancel(cfg, job_id)

    r = reconcile(cfg, opt)
    assert r.accounted == 40_000 and r.events_in == 40_000 + cfg.kafka.partitions, r.as_dict()  # + the markers
    assert_exactly_once(cfg, opt, sim, r.aggregated, FOUR_VIEWS)


def test_stop_with_savepoint_and_resume_equals_an_uninterrupted_run(cfg):
    """The same events through one uninterrupted run and through a run stopped with a savepoint halfway
    and resumed from it: identical Parquet rows in every view and in the event log.

    The second half starts with late events (hours behind the watermark). The resumed job reads them
    first, before its source has a watermark again: they must still go to the late topic, as they do
    in the uninterrupted run (flink_jobs/jvm PartitionLateness), not be dropped by the restored windows."""
    feast_store.ensure_applied(cfg)  # the Redis sink is configured from the registry (when this test runs alone)
    sim = simulate(
        SimConfig(events=8_000, users=200, items=80, categories=5, days=1.0, seed=21,
                  faults=Faults(out_of_order_rate=0.05, duplicate_rate=0.02, malformed_rate=0.01))
    )  # fmt: skip
    end_ms = int(SimConfig().start.timestamp() * 1000) + 11 * 86_400_000  # 10 days after the last event
    half = len(sim.values) // 2
    late = [(k, v) for k, v in zip(sim.keys[:200], sim.values[:200], strict=True) if parse(v)[1] is None][:20]
    late_keys = [k for k, _ in late]
    late_values = [orjson.dumps({**orjson.loads(v), "event_id": f"late-{i}"}) for i, (_, v) in enumerate(late)]
    runs = []
    for interrupted in (False, True):
        opt = fresh_job(cfg, "sp")
        if interrupted:
            Redis(cfg).client().flushdb()
        args = opt.argv()
        write_records(cfg.kafka, sim.keys[:half], sim.values[:half], opt.topic)
        job_id = submit(cfg, args)
        _second_checkpoint(cfg, job_id)
        savepoint = stop_with_savepoint(cfg, job_id) if interrupted else None
        write_records(cfg.kafka, late_keys + sim.keys[half:], late_values + sim.values[half:], opt.topic)
        if interrupted:
            job_id = submit(cfg, args, savepoint=savepoint)
        markers(cfg, opt.topic, end_ms)
        await_accounted(cfg, opt, len(sim.values) + len(late), "the run to catch up")
        if interrupted:  # Redis was emptied before this run: the sink wrote what it held at the stop, then the rest
            await_online_matches_offline(cfg, opt)
        cancel(cfg, job_id)
        late_ids = {
            orjson.loads(orjson.loads(v)["payload"])["event_id"] for _, v in read_topic(cfg.kafka, opt.late_topic)
        }
        assert {f"late-{i}" for i in range(len(late))} <= late_ids, "a late event was not sent to the late topic"
        runs.append(all_rows(opt))
    uninterrupted, resumed = runs
    for view, rows in uninterrupted.items():
        assert rows, view
        assert resumed[view] == rows, f"{view}: {len(resumed[view])} rows after resume vs {len(rows)}"
