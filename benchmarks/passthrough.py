"""Pass-through job: the feature job's Kafka source (same table, event time and watermark, same
checkpointing) into a discarding sink. Its throughput is the ceiling the feature job can reach on this
machine; `flywheel bench features` measures both on the same topic."""

from __future__ import annotations

from flink_jobs.features import JobOptions, create_source, environment
from flywheel.settings import Settings


def run(cfg: Settings, opt: JobOptions):
    """Entry function (embedded, waits until a bounded run ends). Returns the TableResult."""
    _, t_env = environment(cfg, opt)
    create_source(t_env, cfg, opt)
    t_env.execute_sql(
        "CREATE TABLE discard (payload STRING, event_time TIMESTAMP_LTZ(3)) WITH ('connector' = 'blackhole')"
    )
    result = t_env.execute_sql("INSERT INTO discard SELECT payload, event_time FROM events_raw")
    result.wait()
    return result
