"""Airflow DAG, weekly: warm-start the champion on the last 7 days, gate it, promote or keep, then check the previous
promotion against fresh labels. Mondays 03:00 UTC, for the week that just ended."""

from flywheel.orchestration.dags import retrain_dag

retrain_weekly_incremental = retrain_dag(
    "retrain_weekly_incremental",
    "0 3 * * 1",
    "incremental",
    "Incremental retraining on the last 7 days (warm start from the champion), GE-gated, auto-promoted.",
)
