"""The only Python in the feature job: writing window values into Feast's online store (Redis).

The JVM hands this function Arrow batches (a vectorized pandas UDF): per call, a few thousand rows of
(feature view, entity keys, window end, values), already compacted to the latest value per key over a
short processing-time window. Each batch is written through `FeatureStore.write_to_online_store`, one
call per feature view, before the call returns. PyFlink finishes every in-flight batch before a
checkpoint barrier passes, so a completed checkpoint implies every row before it is in Redis. After a
failure the job replays from that checkpoint: the rows carry the same window-end timestamps, and
Feast's Redis store skips writes that are not newer, so replays are no-ops.
"""

from __future__ import annotations

import os

import orjson
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction, udf


class OnlineWrite(ScalarFunction):
    def __init__(self, env: dict[str, str], repo_path: str, timestamp_features: dict[str, list[str]]):
        self.env = env
        self.repo_path = repo_path
        self.timestamp_features = timestamp_features

    def open(self, function_context) -> None:
        os.environ.update(self.env)
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=self.repo_path)

    def is_deterministic(self) -> bool:
        return False  # it writes: the planner must run it once per row, never fold or reuse it

    def eval(self, view: pd.Series, keys: pd.Series, window_end_ms: pd.Series, values: pd.Series) -> pd.Series:
        batch = pd.DataFrame({"view": view, "keys": keys, "ts": window_end_ms, "values": values})
        for name, rows in batch.groupby("view", sort=False):
            df = pd.DataFrame.from_records(
                [{**orjson.loads(k), **orjson.loads(v)} for k, v in zip(rows["keys"], rows["values"], strict=True)]
            )
            df["event_timestamp"] = pd.to_datetime(rows["ts"].to_numpy(), unit="ms", utc=True)
            for col in self.timestamp_features.get(name, []):
                df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
            self.store.write_to_online_store(name, df)
        return pd.Series(1, index=view.index, dtype="int64")


def online_write(env: dict[str, str], repo_path: str, timestamp_features: dict[str, list[str]]):
    """The UDF, for `t_env.create_temporary_system_function`."""
    return udf(OnlineWrite(env, repo_path, timestamp_features), result_type=DataTypes.BIGINT(), func_type="pandas")
