"""Training labels from the event log: one row per impression, label = did an outcome follow it.

The event log is the feature job's deduplicated, on-time events (var/offline/events, Parquet, dt/hr).
An impression's label for a target (label_click, label_purchase, ... from `labels.targets` in
flywheel.yaml) is 1 when an event of that type sharing `labels.match_on` with it happened within
`labels.attribution_window_s` after it. The row keeps what debiased training and ranking metrics need:
position, the logging policy's propensity and request_id. Its entity timestamp is the impression's
event time: features are joined as of strictly before it (training/trainset.py).

Labels near the end of the window are only final once the log covers end + attribution window; the
builder records how far the log reaches so a manifest can say so.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from flywheel.settings import LabelSettings

LABEL_KEYS = ["event_id", "request_id", "user_id", "item_id", "item_category", "position", "propensity"]


def event_log_files(offline_dir: Path) -> list[str]:
    """Committed event-log files (in-progress ones are hidden files and never match)."""
    return sorted(str(p) for p in (offline_dir / "events").glob("dt=*/hr=*/part-*"))


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _events_sql(files: list[str] | str) -> str:
    if isinstance(files, str):  # a registered table or view
        return files
    if not files:
        raise FileNotFoundError(
            "no event log files: run the feature job first (`flywheel features run` or `flywheel flink submit`)"
        )
    quoted = ", ".join(f"'{f}'" for f in files)
    return f"read_parquet([{quoted}], hive_partitioning = false)"


def build_labels(
    events: list[str] | str,
    start: datetime,
    end: datetime,
    cfg: LabelSettings,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """Impressions with start <= event time < end, each with one 0/1 column per target.

    `events` is a list of Parquet files or the name of a table in `con` with the event-log columns.
    """
    con = con or connect()
    window = f"INTERVAL {int(cfg.attribution_window_s)} SECOND"
    match = " AND ".join(f"o.{c} = i.{c}" for c in cfg.match_on)
    targets = ",\n  ".join(
        f"CAST(EXISTS (SELECT 1 FROM ev o WHERE o.event_type = '{etype}' AND {match} "
        f"AND o.event_timestamp BETWEEN i.event_timestamp AND i.event_timestamp + {window}) AS TINYINT) AS {name}"
        for name, etype in cfg.targets.items()
    )
    sql = f"""
WITH ev AS (
  -- event_id is unique by contract; the log can still repeat a row (see README, Status), and a repeated
  -- impression must not become two labels.
  SELECT * REPLACE (CAST(event_timestamp AS TIMESTAMPTZ) AS event_timestamp) FROM {_events_sql(events)}
  QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY event_timestamp) = 1
)
SELECT {", ".join(f"i.{c}" for c in LABEL_KEYS)}, i.event_timestamp,
  {targets}
FROM ev i
WHERE i.event_type = 'impression' AND i.event_timestamp >= $start AND i.event_timestamp < $end
ORDER BY i.event_timestamp, i.event_id"""
    return con.sql(sql, params={"start": start, "end": end}).to_arrow_table()


def log_span(events: list[str] | str, con: duckdb.DuckDBPyConnection | None = None) -> tuple[datetime, datetime]:
    """The first and the latest event time in the log."""
    con = con or connect()
    ts = "CAST(event_timestamp AS TIMESTAMPTZ)"
    return con.execute(f"SELECT min({ts}), max({ts}) FROM {_events_sql(events)}").fetchall()[0]


def log_reaches(events: list[str] | str, con: duckdb.DuckDBPyConnection | None = None) -> datetime | None:
    """The latest event time in the log: labels are final up to this minus the attribution window."""
    return log_span(events, con)[1]
