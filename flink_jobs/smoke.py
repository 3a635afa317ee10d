"""Smoke job: count the records on a Kafka topic with Flink SQL, through the fetched Kafka connector.

Proves that the connector jar we fetch works with the Flink we run (on the standalone cluster or
embedded), which is not a given: connector 5.0.0 is built for Flink 2.1/2.2 and we run 2.3.
"""

from __future__ import annotations

import uuid

from flink_jobs.common import kafka_source_options, table_env, with_clause
from flywheel.settings import Settings


def count_topic(cfg: Settings, topic: str, remote: bool = True) -> int:
    """Entry function: run a bounded Flink SQL job that returns COUNT(*) of the topic."""
    t_env = table_env(cfg, streaming=False, remote=remote, parallelism=1)
    opts = kafka_source_options(cfg, topic, f"flywheel-smoke-{uuid.uuid4()}", bounded=True)
    opts.update({"format": "raw"})
    t_env.execute_sql(f"CREATE TABLE raw_events (payload BYTES) WITH (\n  {with_clause(opts)}\n)")
    with t_env.execute_sql("SELECT COUNT(*) AS n FROM raw_events").collect() as rows:
        return int(next(iter(rows))[0])
