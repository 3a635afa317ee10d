"""The only Python in the feature job: writing window values into Feast's online store (Redis).

Each element is one batch from `OnlineBatches` (flink_jobs/jvm): a feature view and a JSON array of
[entity_keys, window_end_ms, feature_values], each key's latest value (empty once at the start, so that
the writer is opened before the first window fires). The batch is written at once through Feast: its
provider's `online_write_batch`, the call `FeatureStore.write_to_online_store` ends in, given the
values as Feast's protos directly (the DataFrame -> Arrow -> proto conversion on the way took a third of
the writer's time). Nothing is kept in between. PyFlink finishes a bundle
(every batch handed to Python) before a checkpoint barrier passes, so a completed checkpoint covers
only values already in Redis. After a failure the job replays from the last checkpoint: values
written twice carry the same window-end timestamp, and Feast's Redis store skips writes that are not
newer, so replays are no-ops.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import MapFunction, RuntimeContext

from flywheel.compat import feast as feast_private

# What OnlineBatches hands over: feature_view, rows (JSON array of [entity_keys, window_end_ms, values],
# UTF-8 bytes).
BATCH_ROW = Types.ROW([Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
AUDIT_ROW = Types.ROW_NAMED(
    ["feature_view", "rows_written", "max_window_end_ms", "written_at_ms"],
    [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()],
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OnlineWriter(MapFunction):
    def __init__(self, env: dict[str, str], repo_path: str, timestamp_features: dict[str, list[str]]):
        self.env = env
        self.repo_path = repo_path
        self.timestamp_features = timestamp_features

    def open(self, runtime_context: RuntimeContext) -> None:
        os.environ.update(self.env)
        from feast import FeatureStore
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.value_type import ValueType

        self.EntityKey, self.Value = EntityKey, Value  # imported once, used for every value

        self.store = FeatureStore(repo_path=self.repo_path)
        views = {fv.name: fv for fv in self.store.list_feature_views()}
        missing = sorted(set(self.timestamp_features) - set(views))
        if missing:
            raise RuntimeError(
                f"feature views {missing} are not in the Feast registry of {self.repo_path}: "
                "run `flywheel features apply` first"
            )
        self.writer = feast_private.OnlineWriter(self.store)
        # Per view: the view, its join keys (in Feast's order) and each feature's proto field.
        field = {ValueType.INT64: "int64_val", ValueType.DOUBLE: "double_val", ValueType.UNIX_TIMESTAMP: "ts"}
        self.views = {
            name: (
                fv,
                [e.name for e in fv.entity_columns],
                {f.name: field[f.dtype.to_value_type()] for f in fv.features},
            )
            for name, fv in views.items()
            if name in self.timestamp_features
        }

    def map(self, batch: Row) -> Row:
        EntityKey, Value = self.EntityKey, self.Value
        view = batch[0]
        rows = orjson.loads(batch[1])
        if not rows:  # OnlineBatches primes the writer with an empty batch when the job starts
            return Row(view, 0, None, int(time.time() * 1000))
        fv, join_keys, fields = self.views[view]

        def proto(name: str, v: Any) -> Any:  # a feast Value
            # As Feast's own conversion: null is an empty Value, a timestamp is whole epoch seconds.
            if v is None:
                return Value()
            if fields[name] == "ts":
                return Value(unix_timestamp_val=v // 1000)
            return Value(**{fields[name]: v})

        data: list[feast_private.Row] = [
            (
                EntityKey(join_keys=join_keys, entity_values=[Value(string_val=keys[k]) for k in join_keys]),
                {name: proto(name, v) for name, v in values.items()},
                EPOCH + timedelta(milliseconds=ts),
                None,
            )
            for keys, ts, values in rows
        ]
        self.writer.write(fv, data)
        return Row(view, len(data), max(ts for _, ts, _ in rows), int(time.time() * 1000))
