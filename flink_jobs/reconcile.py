"""`flywheel features reconcile`: every event that entered the job is accounted for, exactly.

    events in (source topic)  =  aggregated + duplicates dropped + dead-lettered + late

`in`, `dead-lettered` and `late` are counted from Kafka; `on time` and `aggregated` from the job's audit
output (per-minute counts, committed with the same checkpoints as the features); duplicates are
on-time minus aggregated. While the job runs, events whose minute has not closed yet are `pending`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from flywheel.events.consumer import read_topic
from flywheel.settings import Settings

if TYPE_CHECKING:
    from flink_jobs.features import JobOptions


@dataclass
class Reconciliation:
    events_in: int
    aggregated: int
    duplicates: int
    dead_lettered: int
    late: int

    @property
    def accounted(self) -> int:
        return self.aggregated + self.duplicates + self.dead_lettered + self.late

    @property
    def pending(self) -> int:
        return self.events_in - self.accounted

    def as_dict(self) -> dict:
        return {**asdict(self), "accounted": self.accounted, "pending": self.pending}


def audit_counts(offline_dir: Path, since: date | None = None) -> dict[str, int]:
    """On-time and aggregated events by the audit, of the event days from `since` (default: all)."""
    files = [f for f in (offline_dir / "_audit").glob("dt=*/part-*") if since is None or f.parent.name >= f"dt={since}"]
    if not files:
        return {"ontime": 0, "aggregated": 0}
    rows = duckdb.execute(
        "SELECT stage, SUM(events) FROM read_parquet($files) GROUP BY stage", {"files": [str(f) for f in files]}
    ).fetchall()
    return {"ontime": 0, "aggregated": 0, **{stage: int(n) for stage, n in rows}}


def _records(cfg: Settings, topic: str) -> int:
    return sum(1 for _ in read_topic(cfg.kafka, topic))


def reconcile(cfg: Settings, opt: JobOptions, since: date | None = None) -> Reconciliation:
    """The counts of the job run with these options (its topics and offline store). `since`: count only the
    audit's event days from then, when the offline store also holds another input's (the demo's closed loop
    writes beside the Open Bandit replay)."""
    audit = audit_counts(opt.offline_dir, since)
    return Reconciliation(
        events_in=_records(cfg, opt.topic),
        aggregated=audit["aggregated"],
        duplicates=audit["ontime"] - audit["aggregated"],
        dead_lettered=_records(cfg, opt.dlq_topic),
        late=_records(cfg, opt.late_topic),
    )
