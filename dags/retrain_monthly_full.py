"""Airflow DAG, monthly: train from scratch on the full history window, same gates as the weekly DAG.
1st of the month, 04:00 UTC."""

from flywheel.orchestration.dags import retrain_dag

retrain_monthly_full = retrain_dag(
    "retrain_monthly_full",
    "0 4 1 * *",
    "full",
    "Full retraining from scratch on the history window (training.full_window_days), GE-gated, auto-promoted.",
)
