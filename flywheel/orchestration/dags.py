"""The retraining DAG shape shared by the weekly incremental and the monthly full DAG (one definition, two
schedules). Each task is a call into flywheel.orchestration.tasks; the DAG file only wires them."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True}
# What every Flywheel DAG shares: a start before any data we replay (OBD: 2019), explicit catchup (backfills
# are explicit, `airflow backfill create`, and run in order), one run at a time, retries with backoff.
COMMON = {
    "start_date": pendulum.datetime(2019, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
}


# What the DAG page in the UI says about both retraining DAGs, after each one's own introduction.
RETRAIN_DOC = """**Tasks.** `build_training_set` (labels from the event log + point-in-time features, `var/trainsets/`)
→ `validate_data` (Great Expectations quality and drift against the champion's training set; Data Docs
in `var/gx/`) → `data_ok` branches to `train_candidate` or `block_on_data` (reasons in the registry's
audit log) → `evaluate` (metrics next to the champion's, on the same holdout) → `gate` branches to
`promote` or `keep_champion` → `rollback_check` of the previous promotion.

**Idempotent.** The run key is the mode and the interval end: a re-run of an interval finds its version
and changes nothing. Backfill in order with `airflow backfill create`; one run at a time.
"""


def retrain_dag(dag_id: str, cron: str, mode: str, description: str, doc_md: str):
    @dag(
        dag_id=dag_id,
        description=description,
        doc_md=f"{doc_md.rstrip()}\n\n{RETRAIN_DOC}",
        # Real data intervals (a bare cron string would give start == end in Airflow 3).
        schedule=CronDataIntervalTimetable(cron, timezone="UTC"),
        **COMMON,
        tags=["flywheel", "retraining", mode],
    )
    def retrain():
        @task
        def build_training_set() -> str:
            from flywheel.orchestration import tasks as dag_tasks

            ctx = get_current_context()
            return dag_tasks.build_trainset(ctx["data_interval_start"], ctx["data_interval_end"], mode)

        @task
        def validate_data(trainset_dir: str) -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            return dag_tasks.validate(trainset_dir)

        @task.branch
        def data_ok(result: dict) -> str:
            return "train_candidate" if result["passed"] else "block_on_data"

        @task
        def block_on_data(trainset_dir: str, result: dict) -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            ctx = get_current_context()
            return dag_tasks.record_blocked(
                trainset_dir, result["reasons"], dag_tasks.run_key(mode, ctx["data_interval_end"])
            )

        @task
        def train_candidate(trainset_dir: str) -> str:
            from flywheel.orchestration import tasks as dag_tasks

            ctx = get_current_context()
            return dag_tasks.train(trainset_dir, mode, dag_tasks.run_key(mode, ctx["data_interval_end"]))

        @task
        def evaluate(version: str) -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            return dag_tasks.evaluation_report(version)

        @task.branch
        def gate(version: str) -> str:
            from flywheel.orchestration import tasks as dag_tasks

            return "promote" if not dag_tasks.gate(version) else "keep_champion"

        @task
        def promote(version: str) -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            return dag_tasks.decide(version)

        @task
        def keep_champion(version: str) -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            return dag_tasks.decide(version)  # records the rejection and its reasons

        @task(trigger_rule="none_failed_min_one_success")
        def rollback_check() -> dict:
            from flywheel.orchestration import tasks as dag_tasks

            return dag_tasks.rollback_check(get_current_context()["data_interval_end"])

        path = build_training_set()
        checked = validate_data(path)
        version = train_candidate(path)
        blocked = block_on_data(path, checked)
        data_ok(checked) >> [version, blocked]
        evaluated = evaluate(version)
        decision = gate(version)
        evaluated >> decision
        done = [promote(version), keep_champion(version)]
        decision >> done
        [*done, blocked] >> rollback_check()

    return retrain()
