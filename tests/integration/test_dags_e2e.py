"""The weekly retraining DAG end to end with `dag.test()` on the real stack: two weeks of simulator
events (the second one corrupted: null categories, constant propensities, positions out of range) go
through Kafka and the Flink feature job into Parquet and Redis; week 1 trains and promotes, a re-run of
week 1 changes nothing, and week 2 is blocked by Great Expectations with the failing columns named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flink_jobs import features
from flywheel import feast_store
from flywheel.cli import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.infra.services import Redis
from flywheel.kafka import ensure_topics
from flywheel.settings import REPO_ROOT
from training import pipeline

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: the weekly DAG's interval boundary is Monday 03:00

RUN_DAG = r"""
import json, sys
import pendulum
sys.path.insert(0, sys.argv[1])
import retrain_weekly_incremental as m
run = m.retrain_weekly_incremental.test(logical_date=pendulum.parse(sys.argv[2]))
print("RESULT " + json.dumps({"state": str(run.state)}))
"""


@pytest.fixture(scope="module")
def stack(cfg, tmp_path_factory):
    feast_store.apply(cfg)
    Redis(cfg).client().flushdb()
    shutil.rmtree(cfg.offline_dir, ignore_errors=True)
    shutil.rmtree(cfg.training.registry_dir, ignore_errors=True)
    name = f"dag-{uuid.uuid4().hex[:8]}"
    opt = features.options(
        cfg, topic=name, dlq_topic=f"{name}-dlq", late_topic=f"{name}-late", group_id=name, bounded=True
    )
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    faults = Faults(corrupt_week_start=START + timedelta(days=7, hours=3), corrupt_fraction=0.3)  # = week 2
    sim = simulate(SimConfig(events=24_000, users=300, items=80, categories=6, days=14, faults=faults, seed=5))
    write_records(cfg, sim.keys, sim.values, opt.topic)
    features.run(cfg, opt)

    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    airflow = str(REPO_ROOT / ".venv" / "bin" / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    return cfg, env


def run_week(env, run_after: datetime) -> str:
    out = subprocess.run(
        [sys.executable, "-c", RUN_DAG, str(REPO_ROOT / "dags"), run_after.isoformat()],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-4000:] + out.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))["state"]


def test_weekly_dag_promotes_is_idempotent_and_blocks_a_corrupted_week(stack):
    cfg, env = stack
    reg = pipeline.registry(cfg)
    # A manual run at Monday Jan 12 03:00 covers the interval that ends then: Jan 5 03:00 .. Jan 12 03:00.
    week1 = START + timedelta(days=7, hours=3)
    assert run_week(env, week1).endswith("success")
    audit = reg.audit()
    assert [e["decision"] for e in audit] == ["promoted"], audit
    champion = reg.aliases()["champion"]
    mv = reg.get(champion)
    assert mv.run_key.startswith("incremental:2026-01-12")
    assert mv.metrics["auc"] >= cfg.training.gate.min_auc
    assert mv.validation["passed"] is True

    assert run_week(env, week1).endswith("success")  # re-run of the same interval
    assert [e["decision"] for e in reg.audit()] == ["promoted"]
    assert len(reg.versions()) == 1 and reg.aliases()["champion"] == champion

    assert run_week(env, week1 + timedelta(days=7)).endswith("success")
    last = reg.audit()[-1]
    assert last["decision"] == "blocked_by_data", last
    assert any("position" in r for r in last["reasons"]) and any("item_category" in r for r in last["reasons"])
    assert reg.aliases()["champion"] == champion  # nothing trained, nothing promoted
    assert len(reg.versions()) == 1
