"""# Daily rollback check

Scores the champion and the previous model on labels that arrived since the promotion, and rolls back
automatically if the champion's AUC is lower by more than `training.rollback_max_auc_drop`. Fresh labels
that fail the quality suite decide nothing. Then the online rule: if the ranking service split or
interleaved the two models, and the champion's lists did significantly worse over
`training.online_rollback.window_days`, roll back; the service switches back by itself.
Daily 06:00 UTC; the decision and its reasons go to the
registry's audit log (`flywheel registry audit`).
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from flywheel.orchestration.dags import COMMON


@dag(
    dag_id="rollback_check_daily",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
    **COMMON,
    doc_md=__doc__,
    tags=["flywheel", "retraining"],
)
def rollback_check_daily():
    @task
    def rollback_check() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        return dag_tasks.rollback_check(get_current_context()["data_interval_end"])

    @task
    def online_check() -> dict:
        from flywheel.orchestration import tasks as dag_tasks

        return dag_tasks.online_check(get_current_context()["data_interval_end"])

    rollback_check() >> online_check()


rollback_check_daily_dag = rollback_check_daily()  # a name, so dag.test() can find it
