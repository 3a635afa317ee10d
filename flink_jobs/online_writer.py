"""The only Python in the feature job: writing window values into Feast's online store (Redis).

Each element is one batch from `OnlineBatches` (flink_jobs/jvm): a feature view and a JSON array of
[entity_keys, window_end_ms, feature_values], each key's latest value (empty once at the start, so that
the writer is opened before the first window fires). The batch is written at once
through `FeatureStore.write_to_online_store`; nothing is kept in between. PyFlink finishes a bundle
(every batch handed to Python) before a checkpoint barrier passes, so a completed checkpoint covers
only values already in Redis. After a failure the job replays from the last checkpoint: values
written twice carry the same window-end timestamp, and Feast's Redis store skips writes that are not
newer, so replays are no-ops.
"""

from __future__ import annotations

import os
import time

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import MapFunction, RuntimeContext

# What OnlineBatches hands over: feature_view, rows (JSON array of [entity_keys, window_end_ms, values],
# UTF-8 bytes).
BATCH_ROW = Types.ROW([Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
AUDIT_ROW = Types.ROW_NAMED(
    ["feature_view", "rows_written", "max_window_end_ms", "written_at_ms"],
    [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()],
)


class OnlineWriter(MapFunction):
    def __init__(self, env: dict[str, str], repo_path: str, timestamp_features: dict[str, list[str]]):
        self.env = env
        self.repo_path = repo_path
        self.timestamp_features = timestamp_features

    def open(self, runtime_context: RuntimeContext) -> None:
        os.environ.update(self.env)
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=self.repo_path)
        missing = sorted(set(self.timestamp_features) - {fv.name for fv in self.store.list_feature_views()})
        if missing:
            raise RuntimeError(
                f"feature views {missing} are not in the Feast registry of {self.repo_path}: "
                "run `flywheel features apply` first"
            )

    def map(self, batch: Row) -> Row:
        import pandas as pd

        view = batch[0]
        rows = orjson.loads(batch[1])
        if not rows:  # OnlineBatches primes the writer with an empty batch when the job starts
            return Row(view, 0, None, int(time.time() * 1000))
        df = pd.DataFrame.from_records([{**keys, **values, "event_timestamp": ts} for keys, ts, values in rows])
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], unit="ms", utc=True)
        for col in self.timestamp_features.get(view, []):
            df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
        self.store.write_to_online_store(view, df)
        return Row(view, len(df), max(ts for _, ts, _ in rows), int(time.time() * 1000))
