"""# Feature pipeline operations

Daily 01:00 UTC: `feast apply` when `feature_repo/` changed; keep the Flink feature job running (resume
it from its newest savepoint or retained checkpoint, else submit it); and, when asked, backfill Redis
from the offline store.

Trigger with `{"backfill_online_days": 7}` to backfill the last 7 days online.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from flywheel.orchestration.dags import COMMON


@dag(
    dag_id="feature_pipeline_ops",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    **COMMON,
    doc_md=__doc__,
    params={"backfill_online_days": Param(0, type="integer", minimum=0, description="0 = no backfill")},
    tags=["flywheel", "features"],
)
def feature_pipeline_ops():
    @task
    def feast_apply() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        return dag_tasks.feast_apply_if_changed()

    @task
    def ensure_feature_job() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        return dag_tasks.ensure_feature_job()

    @task.short_circuit
    def backfill_requested() -> bool:
        return get_current_context()["params"]["backfill_online_days"] > 0

    @task
    def backfill_online() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        ctx = get_current_context()
        end = ctx["data_interval_end"]
        return dag_tasks.backfill_online(end - timedelta(days=ctx["params"]["backfill_online_days"]), end)

    applied = feast_apply()
    applied >> ensure_feature_job()
    applied >> backfill_requested() >> backfill_online()


feature_pipeline_ops_dag = feature_pipeline_ops()  # a name, so dag.test() can find it
