"""Fault-matrix rows of the feature job that the other modules do not cover (the matrix is in
docs/testing.md): each runs the job through a failure on the real stack and holds it to the same oracle
as the feature-job tests (counts reconcile exactly, the event log has each accepted event once, every view
equals the independent reference, the late topic is the lateness rule's)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel.clients import feast_store
from flywheel.clients.flink import cancel, checkpoints, completed_checkpoints, job, list_jobs, rest, submit, wait_state
from flywheel.clients.kafka import ensure_topics
from flywheel.events.producer import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.polling import wait_until
from flywheel.settings import REPO_ROOT, load_settings
from flywheel.stack.services import Flink, Kafka
from tests.integration.dag_runs import RUN_DAG, airflow_env, run_dag
from tests.integration.feature_checks import (
    FOUR_VIEWS,
    assert_exactly_once,
    await_accounted,
    fresh_job,
    kill_taskmanager,
    markers,
)
from training.registry import Registry

# Each row runs minutes of kills and restarts (busy, the longest took 649 s): a ceiling of its own, so none sits
# near it; the waits inside each row have their own, shorter timeouts.
pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(1800)]

WEEKLY = "retrain_weekly_incremental"
FAULTS = Faults(out_of_order_rate=0.05, late_rate=0.01, duplicate_rate=0.02, malformed_rate=0.01)


def test_a_kafka_broker_stopped_for_30_s_mid_run_loses_nothing(cfg, monkeypatch):
    """The broker stops for 30 s while the job runs and starts again, and events keep coming after it: the
    job rides through or restarts from its checkpoint by itself (no one resubmits it), and in the end
    nothing is lost or counted twice."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "2000")
    settings = load_settings()
    feast_store.ensure_applied(settings)
    opt = fresh_job(settings, "kafka-outage")
    sim = simulate(SimConfig(events=20_000, users=300, items=120, categories=6, days=1.0, seed=19, faults=FAULTS))
    half = len(sim.values) // 2
    write_records(settings.kafka, sim.keys[:half], sim.values[:half], opt.topic)
    job = features.run(settings, opt, wait=False)
    try:
        await_accounted(settings, opt, 1, "the first checkpoint", 300)
        kafka = Kafka(settings)
        assert kafka.down()
        time.sleep(30)
        assert kafka.up() == "started"
        write_records(settings.kafka, sim.keys[half:], sim.values[half:], opt.topic)
        markers(settings, opt.topic, int(SimConfig().start.timestamp() * 1000) + 10 * 86_400_000)
        await_accounted(settings, opt, len(sim.values), "the job to catch up after the outage")
        assert job.get_job_status().result().name == "RUNNING"
    finally:
        job.cancel().result()
    r = reconcile(settings, opt)
    assert r.accounted == len(sim.values) and r.events_in == len(sim.values) + settings.kafka.partitions, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert_exactly_once(settings, opt, sim, r.aggregated)  # the late topic too: it is the rule's


def _mount_tmpfs(path: Path, size: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    assert done.returncode == 0, f"this test mounts a tmpfs (root with CAP_SYS_ADMIN): {done.stderr.decode()}"


def test_an_offline_store_out_of_space_fails_loudly_and_resumes_with_nothing_lost(cfg, monkeypatch, tmp_path):
    """The offline store on a 1 MB filesystem: the file sink cannot write its Parquet, the job fails, says
    why ("No space left on device" in its exceptions) and restarts from its checkpoint, again and again.
    Once the filesystem is grown, it goes on by itself, and in the end nothing is lost or written twice."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "2000")  # read by `flink run`'s client
    settings = load_settings()
    feast_store.ensure_applied(settings)
    offline = tmp_path / "offline"
    offline.mkdir()
    _mount_tmpfs(offline, "1m")
    job_id = None
    try:
        opt = fresh_job(settings, "full", offline_dir=offline)
        sim = simulate(SimConfig(events=20_000, users=300, items=120, categories=6, days=1.0, seed=29, faults=FAULTS))
        write_records(settings.kafka, sim.keys, sim.values, opt.topic)
        job_id = submit(settings, opt.argv())

        def out_of_space() -> bool:
            return "No space left on device" in json.dumps(rest(settings, "GET", f"/jobs/{job_id}/exceptions"))

        wait_until(out_of_space, 300, "the job to fail for want of space", interval_s=1)
        subprocess.run(["mount", "-o", "remount,size=512m", str(offline)], check=True)
        markers(settings, opt.topic, int(SimConfig().start.timestamp() * 1000) + 10 * 86_400_000)
        await_accounted(settings, opt, len(sim.values), "the job to catch up once there is space")
        cancel(settings, job_id)
        job_id = None
        r = reconcile(settings, opt)
        assert r.accounted == len(sim.values), r.as_dict()
        assert_exactly_once(settings, opt, sim, r.aggregated)
    finally:
        if job_id is not None:
            cancel(settings, job_id)
        subprocess.run(["umount", "--lazy", str(offline)], check=False)


def _running_feature_job(settings) -> str:
    """The feature job's id once it runs: `flink run --detached` returns before that, later on a busy machine."""

    def running() -> str | None:
        ids = [j["jid"] for j in list_jobs(settings) if j["name"] == features.JOB_NAME and j["state"] == "RUNNING"]
        assert len(ids) <= 1, list_jobs(settings)
        return ids[0] if ids else None

    return wait_until(running, 180, "the feature job to run", interval_s=0.5)


def test_a_killed_jobmanager_is_resumed_by_the_ops_dag_from_the_latest_retained_checkpoint(cfg, monkeypatch, tmp_path):
    """The standalone cluster has no high availability: when its JobManager dies, the job is gone with it.
    `feature_pipeline_ops` (dag.test()) submits the job; its JobManager is SIGKILLed after two checkpoints
    and started again (the TaskManagers stay up and register with it); the DAG's next run finds no job,
    resumes it from the retained checkpoint, and in the end nothing is lost or counted twice."""
    name = f"jm-{uuid.uuid4().hex[:8]}"
    own = {"KAFKA__TOPICS__EVENTS": name, "KAFKA__TOPICS__DEAD_LETTER": f"{name}-dlq",
           "KAFKA__TOPICS__LATE": f"{name}-late", "FEATURES__GROUP_ID": name,
           "FEATURES__CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "FEATURES__SAVEPOINT_DIR": str(tmp_path / "savepoints"),
           "FEATURES__CHECKPOINT_INTERVAL_MS": "2000"}  # fmt: skip
    for key, value in own.items():  # what the DAG's tasks read, in the subprocess that runs them
        monkeypatch.setenv(f"FLYWHEEL_{key}", value)
    settings = load_settings()
    feast_store.ensure_applied(settings)
    opt = features.options(settings)  # what the DAG submits: the configured topics and the offline store
    shutil.rmtree(opt.offline_dir, ignore_errors=True)
    ensure_topics(settings.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    sim = simulate(SimConfig(events=20_000, users=300, items=120, categories=6, days=1.0, seed=37, faults=FAULTS))
    half = len(sim.values) // 2
    write_records(settings.kafka, sim.keys[:half], sim.values[:half], opt.topic)
    env = airflow_env(tmp_path / "airflow")
    now = datetime.now(UTC)
    job_id = None
    try:
        assert run_dag(env, "feature_pipeline_ops", now)["ensure_feature_job"].endswith("success")
        job_id = first = _running_feature_job(settings)
        wait_until(lambda: completed_checkpoints(settings, first) >= 2, 300, "two checkpoints", interval_s=0.5)

        flink = Flink(settings)
        jobmanager = flink.proc.pid()
        assert jobmanager is not None
        os.killpg(jobmanager, signal.SIGKILL)
        wait_until(lambda: flink.proc.pid() is None, 30, "the killed JobManager to be gone", interval_s=0.05)
        assert all(tm.pid() is not None for tm in flink.tm_procs)
        assert flink.up() == "started"  # the JobManager alone; the TaskManagers register with it again
        assert not list_jobs(settings), "a JobManager without HA should know no job after a restart"

        write_records(settings.kafka, sim.keys[half:], sim.values[half:], opt.topic)
        markers(settings, opt.topic, int(SimConfig().start.timestamp() * 1000) + 10 * 86_400_000)
        assert run_dag(env, "feature_pipeline_ops", now + timedelta(minutes=1))["ensure_feature_job"].endswith(
            "success"
        )
        job_id = _running_feature_job(settings)
        restored = checkpoints(settings, job_id)["latest"]["restored"]
        assert restored is not None, "the job was submitted fresh, not resumed"
        assert f"checkpoints/{first}/chk-" in restored["external_path"], restored
        await_accounted(settings, opt, len(sim.values), "the resumed job to catch up")
    finally:
        if job_id is not None:
            cancel(settings, job_id)
    r = reconcile(settings, opt)
    assert r.accounted == len(sim.values) and r.events_in == len(sim.values) + settings.kafka.partitions, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert_exactly_once(settings, opt, sim, r.aggregated)


def _registry_state(registry_dir: Path) -> dict:
    """What a retraining run decides, without the wall-clock times: every version's metadata (the weights'
    sha256 among it), the aliases, and the audit log's decisions."""
    reg = Registry(registry_dir)
    return {
        "versions": [{k: v for k, v in asdict(mv).items() if k != "created_at"} for mv in reg.versions()],
        "aliases": reg.aliases(),
        "audit": [{k: v for k, v in e.items() if k != "at"} for e in reg.audit()],
        "entries": sorted(p.name for p in (registry_dir / "versions").iterdir()),
    }


def test_a_retraining_task_killed_mid_training_and_retried_ends_as_an_undisturbed_run(cfg, tmp_path):
    """A week of events through the feature job, then the weekly retraining DAG (dag.test()) twice, each on
    a registry of its own: once undisturbed, once SIGKILLed while `train_candidate` trains (its first epoch
    logged) and run again, as Airflow retries a task whose process died. The killed attempt leaves nothing
    in the registry, and the retried run ends with the same versions (the same weights, byte for byte),
    aliases and decisions as the undisturbed one."""
    settings = load_settings()
    feast_store.ensure_applied(settings)
    shutil.rmtree(settings.offline_dir, ignore_errors=True)
    opt = fresh_job(settings, "retrain", offline_dir=settings.offline_dir, bounded=True)
    start = SimConfig().start  # a Monday: the weekly interval ends Monday 03:00
    sim = simulate(SimConfig(events=10_000, users=200, items=60, categories=5, days=7.5, seed=41,
                             new_items_per_day=0))  # fmt: skip
    write_records(settings.kafka, sim.keys, sim.values, opt.topic)
    features.run(settings, opt)
    week_end = start + timedelta(days=7, hours=3)
    env = airflow_env(tmp_path / "airflow")
    undisturbed, killed = tmp_path / "registry-undisturbed", tmp_path / "registry-killed"

    run_dag({**env, "FLYWHEEL_TRAINING__REGISTRY_DIR": str(undisturbed)}, WEEKLY, week_end)
    assert [e["decision"] for e in Registry(undisturbed).audit()] == ["promoted"]

    env_killed = {**env, "FLYWHEEL_TRAINING__REGISTRY_DIR": str(killed)}
    with subprocess.Popen(
        [sys.executable, "-c", RUN_DAG, str(REPO_ROOT / "dags"), WEEKLY, week_end.isoformat()],
        env=env_killed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "epoch 1:" in line:  # in train_candidate's fit, before anything is registered
                os.killpg(proc.pid, signal.SIGKILL)
                break
        assert proc.wait(60) == -signal.SIGKILL, "".join(seen[-50:])
    assert not Registry(killed).versions() and not Registry(killed).audit()

    run_dag(env_killed, WEEKLY, week_end)  # the retry
    assert _registry_state(killed) == _registry_state(undisturbed)


def _produce_skewed(settings, keys: list[bytes], values: list[bytes], topic: str) -> None:
    """Eight users in ten write to partition 0, the rest spread over the others (a user always to the same
    one): the sources of the small partitions reach the end of a bounded input long before the big one."""
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka.client_config(), "linger.ms": 20})
    n = settings.kafka.partitions
    for key, value in zip(keys, values, strict=True):
        h = zlib.crc32(key or b"")
        producer.produce(topic, value=value, key=key, partition=0 if h % 10 < 8 else 1 + h % (n - 1))
        producer.poll(0)
    assert producer.flush(60) == 0


def _subtask_states(settings, job_id: str, vertex_name: str) -> list[str]:
    vertex = next(v for v in job(settings, job_id)["vertices"] if vertex_name in v["name"])
    return [t["status"] for t in rest(settings, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]]


ENDED = {"FINISHED", "FAILED", "CANCELED"}


def test_taskmanagers_killed_near_the_end_of_a_bounded_input_lose_and_repeat_nothing(cfg, monkeypatch):
    """A bounded run at parallelism 4 over two TaskManagers, its small partitions' sources finishing long
    before the big one's. Once some sources have finished and a checkpoint has recorded them, one
    TaskManager is killed; once the job has restored and checkpointed again, the other. The job finishes by
    itself, and its outputs are exact: counts reconcile, the event log has each event once, and four views
    equal the reference at every window end with no duplicate row.

    Checkpoints must complete once some source subtasks have finished: they did not while the lateness
    operator's state was union state (flink_jobs/jvm PartitionLateness)."""
    monkeypatch.setenv("FLYWHEEL_FEATURES__CHECKPOINT_INTERVAL_MS", "1000")  # read by `flink run`'s client
    settings = load_settings()
    feast_store.ensure_applied(settings)
    opt = fresh_job(settings, "end", bounded=True)
    sim = simulate(SimConfig(events=100_000, users=400, items=150, categories=6, days=1.5, seed=23, faults=FAULTS))
    _produce_skewed(settings, sim.keys, sim.values, opt.topic)
    flink = Flink(settings)
    job_id = submit(settings, replace(opt, parallelism=4).argv())
    try:
        deadline = time.monotonic() + 300
        while "FINISHED" not in _subtask_states(settings, job_id, "Source"):
            assert job(settings, job_id)["state"] == "RUNNING", "the input ended before a source finished"
            assert time.monotonic() < deadline, "no source finished in 300 s"
            time.sleep(0.2)
        for i in (1, 0):
            done = completed_checkpoints(settings, job_id)
            while completed_checkpoints(settings, job_id) <= done:  # after the first kill: restored and again
                assert job(settings, job_id)["state"] not in ENDED, "the input ended before the kills"
                time.sleep(0.2)
            kill_taskmanager(flink, i)
        state = wait_state(settings, job_id, ENDED, timeout_s=600)
    finally:
        if job(settings, job_id)["state"] not in ENDED:
            cancel(settings, job_id)
    assert state == "FINISHED"
    assert checkpoints(settings, job_id)["counts"]["restored"] >= 2, checkpoints(settings, job_id)["counts"]
    r = reconcile(settings, opt)
    assert r.events_in == len(sim.values) and r.pending == 0, r.as_dict()
    assert r.dead_lettered == sim.stats.malformed
    assert_exactly_once(settings, opt, sim, r.aggregated, FOUR_VIEWS)
