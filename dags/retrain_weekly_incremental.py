"""# Weekly incremental retraining

This Airflow DAG warm-starts the champion on the last 7 days (`training.incremental_window_days`; from
scratch while there is no champion), gates the candidate and promotes it or keeps the champion. Mondays
03:00 UTC, for the week that just ended.
"""

from flywheel.orchestration.dags import retrain_dag

retrain_weekly_incremental = retrain_dag(
    "retrain_weekly_incremental",
    "0 3 * * 1",
    "incremental",
    "Incremental retraining on the last 7 days (warm start from the champion), GE-gated, auto-promoted.",
    __doc__,
)
