"""# Monthly full retraining

Trains from scratch on the history window (`training.full_window_days`), with the same gates as the
weekly DAG. The 1st of the month, 04:00 UTC.

**Tasks.** `build_training_set` (labels from the event log + point-in-time features, `var/trainsets/`)
→ `validate_data` (Great Expectations quality and drift against the champion's training set; Data Docs
in `var/gx/`) → `data_ok` branches to `train_candidate` or `block_on_data` (reasons in the registry's
audit log) → `evaluate` (metrics next to the champion's, on the same holdout) → `gate` branches to
`promote` or `keep_champion` → `rollback_check` of the previous promotion.

**Idempotent.** The run key is the mode and the interval end: a re-run of an interval finds its version
and changes nothing. Backfill in order with `airflow backfill create`; one run at a time.
"""

from flywheel.orchestration.dags import retrain_dag

retrain_monthly_full = retrain_dag(
    "retrain_monthly_full",
    "0 4 1 * *",
    "full",
    "Full retraining from scratch on the history window (training.full_window_days), GE-gated, auto-promoted.",
    __doc__,
)
