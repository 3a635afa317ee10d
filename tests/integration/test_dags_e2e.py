"""The retraining DAGs end to end with `dag.test()` on the real stack. Five and a half weeks of simulator
events go through Kafka and the Flink feature job into Parquet and Redis:

    weeks 1-3  normal            backfilled in order: promoted v1, v2 (from v1), v3 (from v2)
    week 3 again                 a re-run changes nothing
    week 4     corrupted         blocked by Great Expectations (null categories, propensity 1.0,
                                 positions out of range), nothing trained
    week 5     layout change     every position is almost equally visible (position bias nearly gone): the
                                 model fitted to it beats the champion on that week, promoted v4
    days after the layout is back  the daily rollback check finds v4 worse than v3 on fresh labels: rolled back
                                 (by 0.004 AUC: the test lowers the rollback threshold, see below)
    week 8     no events         every task skipped, the registry untouched
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flink_jobs import features
from flywheel.clients import feast_store
from flywheel.clients.kafka import ensure_topics
from flywheel.events.producer import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.stack.services import Redis
from tests.integration.dag_runs import airflow_env, run_dag
from training import pipeline

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # minutes each: `make test-e2e`
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: the weekly DAG's interval boundary is Monday 03:00

WEEKLY, DAILY = "retrain_weekly_incremental", "rollback_check_daily"


@pytest.fixture(scope="module")
def stack(cfg, tmp_path_factory):
    feast_store.ensure_applied(cfg)
    Redis(cfg).client().flushdb()
    shutil.rmtree(cfg.offline_dir, ignore_errors=True)
    shutil.rmtree(cfg.training.registry_dir, ignore_errors=True)
    name = f"dag-{uuid.uuid4().hex[:8]}"
    opt = features.options(
        cfg, topic=name, dlq_topic=f"{name}-dlq", late_topic=f"{name}-late", group_id=name, bounded=True
    )
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    faults = Faults(
        corrupt_week_start=week_end(3),  # = week 4
        corrupt_fraction=0.3,
        drift_at=week_end(4),  # = week 5
        drift_until=week_end(5),
        drift_kind="layout",
    )
    # A fixed catalog: the normal weeks are stationary (a catalog growing tenfold would be drift, rightly reported).
    sim = simulate(SimConfig(events=50_000, users=300, items=80, categories=6, days=39.5, faults=faults, seed=5,
                             new_items_per_day=0))  # fmt: skip
    write_records(cfg.kafka, sim.keys, sim.values, opt.topic)
    features.run(cfg, opt)

    env = airflow_env(tmp_path_factory.mktemp("airflow"))
    return cfg, env


def week_end(n: int) -> datetime:
    """The end of weekly interval n (Monday 03:00); a manual run at that time covers the 7 days before."""
    return START + timedelta(days=7 * n, hours=3)


# The scenario's steps are separate tests, run in file order on one stack (each well inside its timeout on a
# busy machine); a step needs the ones before it, so it skips nothing: it fails if they did not leave their state.
VERSIONS: dict[str, str] = {}


def test_a_three_week_backfill_promotes_each_week_in_order(stack):
    cfg, env = stack
    reg = pipeline.registry(cfg)
    for n in (1, 2, 3):
        run_dag(env, WEEKLY, week_end(n))
    audit = reg.audit()
    assert [e["decision"] for e in audit] == ["promoted"] * 3, audit
    v1, v2, v3 = (e["version"] for e in audit)
    for n, (v, parent) in enumerate(((v1, None), (v2, v1), (v3, v2)), start=1):
        mv = reg.get(v)
        assert mv.parent_version == parent
        assert mv.run_key == f"incremental:{week_end(n).isoformat()}"
        assert datetime.fromisoformat(mv.data_window["end"]) == week_end(n)
        assert mv.metrics["auc"] >= cfg.training.gate.min_auc and mv.validation["passed"] is True
    assert reg.aliases() == {"champion": v3, "previous": v2}
    VERSIONS.update(v1=v1, v2=v2, v3=v3)


def test_a_rerun_of_the_same_interval_changes_nothing(stack):
    cfg, env = stack
    reg = pipeline.registry(cfg)
    audit = reg.audit()
    assert len(audit) == 3, "needs the backfill step's registry"
    run_dag(env, WEEKLY, week_end(3))
    assert reg.audit() == audit and len(reg.versions()) == 3


def test_a_corrupted_week_is_blocked_by_great_expectations(stack):
    cfg, env = stack
    reg = pipeline.registry(cfg)
    run_dag(env, WEEKLY, week_end(4))
    last = reg.audit()[-1]
    assert last["decision"] == "blocked_by_data", last
    assert any("position" in r for r in last["reasons"]) and any("item_category" in r for r in last["reasons"])
    assert reg.aliases() == {"champion": VERSIONS["v3"], "previous": VERSIONS["v2"]} and len(reg.versions()) == 3


def test_a_model_fitted_to_a_layout_change_is_promoted(stack):
    cfg, env = stack
    reg = pipeline.registry(cfg)
    run_dag(env, WEEKLY, week_end(5))
    last = reg.audit()[-1]
    assert last["decision"] == "promoted", last
    v4 = last["version"]
    assert reg.get(v4).parent_version == VERSIONS["v3"]
    assert reg.aliases() == {"champion": v4, "previous": VERSIONS["v3"]}
    VERSIONS["v4"] = v4


def test_the_daily_check_rolls_back_once_the_layout_is_back(stack):
    """Four days after the layout came back. Measured: v4 scores 0.0039 AUC below v3 there (fine-tuning is
    gentle: 2 epochs at a third of the learning rate), under the default threshold of 0.02. The run lowers the
    threshold to 0.003 so that this real, small degradation takes the rollback path."""
    cfg, env = stack
    reg = pipeline.registry(cfg)
    env = {**env, "FLYWHEEL_TRAINING__ROLLBACK_MAX_AUC_DROP": "0.003"}
    run_dag(env, DAILY, week_end(5) + timedelta(days=4, hours=3))
    last = reg.audit()[-1]
    assert last["decision"] == "rolled_back", last
    assert last["demoted"] == VERSIONS["v4"] and reg.aliases() == {"champion": VERSIONS["v3"], "previous": None}


def test_a_week_without_events_is_skipped_and_decides_nothing(stack):
    """The scheduler runs the latest interval when a DAG is unpaused, often one with no data yet: its run
    ends green with every task skipped, and the registry records no decision (not a data-quality block)."""
    cfg, env = stack
    reg = pipeline.registry(cfg)
    audit, aliases = reg.audit(), reg.aliases()
    tasks = run_dag(env, WEEKLY, week_end(8))  # the events end in week 6
    assert tasks and all(state == "skipped" for state in tasks.values()), tasks
    assert reg.audit() == audit and reg.aliases() == aliases
