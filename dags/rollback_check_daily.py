"""Daily: score the live champion and the previous model on labels that arrived since the promotion and
roll back automatically if the champion is worse (training.rollback_max_auc_drop)."""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from flywheel.orchestration.dags import COMMON


@dag(
    dag_id="rollback_check_daily",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
    **COMMON,
    tags=["flywheel", "retraining"],
)
def rollback_check_daily():
    @task
    def rollback_check() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        return dag_tasks.rollback_check(get_current_context()["data_interval_end"])

    rollback_check()


rollback_check_daily_dag = rollback_check_daily()  # a name, so dag.test() can find it
