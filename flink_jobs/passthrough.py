"""Pass-through job: the feature job's Kafka source (same table, event time and watermark, same
checkpointing) into a discarding sink. Its throughput is the ceiling the feature job can reach on this
machine; `flywheel bench features` measures both on the same topic."""

from __future__ import annotations

from flink_jobs.features import JobOptions, environment, source_ddl
from flywheel.settings import Settings


def run(cfg: Settings, opt: JobOptions) -> None:
    """Entry function (embedded, waits until a bounded run ends)."""
    _, t_env = environment(cfg, opt)
    t_env.execute_sql(source_ddl(cfg, opt))
    t_env.execute_sql(
        "CREATE TABLE discard (payload STRING, event_time TIMESTAMP_LTZ(3)) WITH ('connector' = 'blackhole')"
    )
    t_env.execute_sql("INSERT INTO discard SELECT payload, event_time FROM events_raw").wait()
