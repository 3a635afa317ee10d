"""# Weekly incremental retraining

Warm-starts the champion on the last 7 days (`training.incremental_window_days`; from scratch while there
is no champion), gates the candidate and promotes it or keeps the champion. Mondays 03:00 UTC, for the
week that just ended.

**Tasks.** `build_training_set` (labels from the event log + point-in-time features, `var/trainsets/`)
→ `validate_data` (Great Expectations quality and drift against the champion's training set; Data Docs
in `var/gx/`) → `data_ok` branches to `train_candidate` or `block_on_data` (reasons in the registry's
audit log) → `evaluate` (metrics next to the champion's, on the same holdout) → `gate` branches to
`promote` or `keep_champion` → `rollback_check` of the previous promotion.

**Idempotent.** The run key is the mode and the interval end: a re-run of an interval finds its version
and changes nothing. Backfill in order with `airflow backfill create`; one run at a time.
"""

from flywheel.orchestration.dags import retrain_dag

retrain_weekly_incremental = retrain_dag(
    "retrain_weekly_incremental",
    "0 3 * * 1",
    "incremental",
    "Incremental retraining on the last 7 days (warm start from the champion), GE-gated, auto-promoted.",
    __doc__,
)
