"""# Monthly full retraining

This Airflow DAG trains from scratch on the history window (`training.full_window_days`), with the same
gates as the weekly DAG. The 1st of the month, 04:00 UTC.
"""

from flywheel.orchestration.dags import retrain_dag

retrain_monthly_full = retrain_dag(
    "retrain_monthly_full",
    "0 4 1 * *",
    "full",
    "Full retraining from scratch on the history window (training.full_window_days), GE-gated, auto-promoted.",
    __doc__,
)
