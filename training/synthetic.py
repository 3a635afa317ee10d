"""Seeded feature rows and labels shaped like the feature job's output, for the training-set tests and
benchmark: Parquet in the Flink layout (<view>/dt=YYYY-MM-DD/hr=HH/part-*), values at window ends
(whole minutes), so labels (at millisecond times) sometimes fall exactly on a feature row."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from training.trainset import Plan

KEY_PREFIX = {"user_id": "u", "item_id": "i", "item_category": "c"}


def _keys(rng: np.random.Generator, name: str, n: int, cardinality: dict[str, int]) -> pa.Array:
    ids = rng.integers(0, cardinality[name], n)
    return pa.array(np.char.add(KEY_PREFIX[name], ids.astype(str)))


def _ms(start: datetime, ms: np.ndarray) -> pa.Array:
    base = int(start.timestamp() * 1000)
    return pa.array(base + ms, pa.timestamp("ms", tz="UTC"))


def _values(rng: np.random.Generator, dtype: str, n: int, ts_ms: np.ndarray) -> pa.Array:
    if dtype == "BIGINT":
        return pa.array(rng.integers(0, 500, n), pa.int64())
    if dtype == "DOUBLE":
        vals = rng.random(n)
        return pa.array(vals, mask=rng.random(n) < 0.1)  # ratios are null when the denominator is 0
    if dtype == "TIMESTAMPTZ":
        return pa.array(ts_ms - rng.integers(0, 300_000, n), pa.timestamp("ms", tz="UTC"))
    raise ValueError(dtype)


def write_features(
    p: Plan,
    offline_dir: Path,
    rows: int,
    start: datetime,
    days: float,
    card: dict[str, int],
    seed: int,
    single_file: bool = False,
) -> None:
    """`rows` feature rows in total, split evenly over the plan's views."""
    offline_dir.mkdir(parents=True, exist_ok=True)
    n = rows // len(p.views)
    for i, v in enumerate(p.views):
        rng = np.random.default_rng(seed + i)
        minutes = rng.integers(0, int(days * 1440), n)
        rel_ms = minutes * 60_000
        cols = {k: _keys(rng, k, n, card) for k in v.join_keys}
        abs_ms = int(start.timestamp() * 1000) + rel_ms
        cols |= {name: _values(rng, t, n, abs_ms) for name, t in v.features}
        cols[v.timestamp_field] = _ms(start, rel_ms)
        # One row per key and window end, as the feature job writes (a tie would make "as of" ambiguous).
        table = pa.Table.from_pandas(
            pa.table(cols).to_pandas().drop_duplicates([*v.join_keys, v.timestamp_field]), preserve_index=False
        )
        ts = table.column(v.timestamp_field)
        table = table.append_column("dt", pc.strftime(ts, format="%Y-%m-%d")).append_column(
            "hr", pc.strftime(ts, format="%H")
        )
        if single_file:  # one plain file per view, timestamps with their zone: the shape Feast's file store reads
            pq.write_table(table.drop_columns(["dt", "hr"]), offline_dir / f"{v.name}.parquet")
            continue
        # Flink writes TIMESTAMP(3) as Parquet INT96 without a zone; do the same.
        table = table.cast(pa.schema([pa.field(f.name, pa.timestamp("ns")) if pa.types.is_timestamp(f.type) else f
                                      for f in table.schema]))  # fmt: skip
        ds.write_dataset(
            table,
            offline_dir / v.name,
            file_options=ds.ParquetFileFormat().make_write_options(use_deprecated_int96_timestamps=True),
            format="parquet",
            partitioning=["dt", "hr"],
            partitioning_flavor="hive",
            basename_template="part-{i}",
            existing_data_behavior="overwrite_or_ignore",
            max_rows_per_group=1 << 20,
        )


def labels(n: int, start: datetime, days: float, card: dict[str, int], seed: int) -> pa.Table:
    """Label rows as training/labels.py makes them, at random millisecond times."""
    rng = np.random.default_rng(seed)
    rel_ms = rng.integers(0, int(days * 86_400_000), n)
    order = np.argsort(rel_ms, kind="stable")
    rel_ms = rel_ms[order]
    position = rng.integers(1, 11, n)
    return pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in range(n)]),
            "request_id": pa.array(np.char.add("r", (np.arange(n) // 10).astype(str))),
            "user_id": _keys(rng, "user_id", n, card),
            "item_id": _keys(rng, "item_id", n, card),
            "item_category": _keys(rng, "item_category", n, card),
            "position": pa.array(position, pa.int64()),
            "propensity": pa.array(rng.uniform(0.01, 1.0, n)),
            "event_timestamp": _ms(start, rel_ms),
            "label_click": pa.array((rng.random(n) < 0.05).astype(np.int8)),
        }
    )
