"""The only Python in the feature job: writing window values into Feast's online store (Redis).

Rows are buffered in Flink keyed state (so a checkpoint includes what is not yet written) and flushed
in batches through `FeatureStore.write_to_online_store`, by size or by a processing-time timer. After a
failure the job replays from the last checkpoint: rows written twice carry the same window-end
timestamp, and Feast's Redis store skips writes that are not newer, so replays are no-ops.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

AUDIT_ROW = Types.ROW_NAMED(
    ["feature_view", "rows_written", "max_window_end_ms", "written_at_ms"],
    [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()],
)


class OnlineWriter(KeyedProcessFunction):
    def __init__(
        self,
        env: dict[str, str],
        repo_path: str,
        timestamp_features: dict[str, list[str]],
        batch_size: int,
        flush_ms: int,
    ):
        self.env = env
        self.repo_path = repo_path
        self.timestamp_features = timestamp_features
        self.batch_size = batch_size
        self.flush_ms = flush_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        os.environ.update(self.env)
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=self.repo_path)
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("buffer", Types.PICKLED_BYTE_ARRAY()))
        self.pending = runtime_context.get_state(ValueStateDescriptor("pending", Types.LONG()))
        # A copy of what is buffered, per shard: at the end of a bounded input, processing-time timers
        # no longer fire, so close() writes what is left (the keyed state still covers failures).
        self.unflushed: dict[int, list] = defaultdict(list)

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context):
        # row: feature_view, entity_keys (JSON), window_end_ms, feature_values (JSON)
        self.buffer.add((row[0], row[1], row[2], row[3]))
        self.unflushed[ctx.get_current_key()].append((row[0], row[1], row[2], row[3]))
        n = (self.pending.value() or 0) + 1
        if n >= self.batch_size:
            yield from self._flush(ctx.get_current_key())
            return
        if n == 1:
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + self.flush_ms
            )
        self.pending.update(n)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        yield from self._flush(ctx.get_current_key())

    def close(self) -> None:
        rows = [r for shard in self.unflushed.values() for r in shard]
        self.unflushed.clear()
        for _ in self._write(rows):
            pass

    def _flush(self, shard: int):
        rows = list(self.buffer.get() or [])
        self.buffer.clear()
        self.pending.clear()
        self.unflushed.pop(shard, None)
        yield from self._write(rows)

    def _write(self, rows: list):
        import pandas as pd

        by_view: dict[str, list] = defaultdict(list)
        for view, keys, ts, vals in rows:
            by_view[view].append({**json.loads(keys), **json.loads(vals), "event_timestamp": ts})
        for view, records in by_view.items():
            df = pd.DataFrame.from_records(records)
            df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], unit="ms", utc=True)
            for col in self.timestamp_features.get(view, []):
                df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
            self.store.write_to_online_store(view, df)
            yield Row(view, len(df), int(df["event_timestamp"].max().value // 1_000_000), int(time.time() * 1000))
