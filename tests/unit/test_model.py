"""The ranker's batch building: the hashed ids and the dense matrix, against their definitions written out
value by value."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from training.model import ModelConfig, as_served, dense_matrix, hash_ids, hash_values, served_batch, to_batch

BUCKETS = 50_021


@pytest.mark.parametrize(
    "values",
    [
        pa.array([f"u{i % 7}" for i in range(100)]),
        pa.array(["same"] * 50),
        pa.array(np.full(20, 1, dtype=np.int64)),
        pa.array(["a", None, "b", None, "a"]),
        pa.chunked_array([pa.array([1, 2, None]), pa.array([3, 1])]),
        pa.chunked_array([], pa.string()),
        pa.array(["é", "日本", "é"]),
    ],
)
def test_hash_ids_is_the_crc32_of_each_values_string_form(values):
    expected = [zlib.crc32(str(v).encode()) % BUCKETS for v in values.to_pylist()]
    got = hash_ids(values, BUCKETS)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def _dense_by_definition(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    out = np.zeros((table.num_rows, len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        for i, v in enumerate(table.column(c).to_pylist()):
            x = 0.0 if v is None or not math.isfinite(float(v)) else float(v)
            if "impressions" in c or "clicks" in c or "purchases" in c or c.startswith("seconds_"):
                x = math.log1p(max(x, 0.0))
            out[i, j] = np.float32(x)
    return out


def test_dense_matrix_zeroes_missing_and_logs_counts_and_durations():
    rng = np.random.default_rng(3)
    n = 60
    cols: dict[str, pa.Array] = {}
    for j, name in enumerate(["clicks_1h", "seconds_since_click", "ctr_7d", "impressions_7d", "price"] * 3):
        v = rng.random(n) * 100 - 5
        v[rng.random(n) < 0.2] = np.nan
        v[j % n] = np.inf
        cols[f"{name}_{j}"] = pa.array(v, mask=rng.random(n) < 0.1)
    cols["purchases_30d"] = pa.array([3, None] * (n // 2), pa.int64())
    cols["user_stats__missing"] = pa.array(rng.random(n) < 0.3)
    table = pa.table(cols)
    columns = tuple(reversed(table.column_names))
    got = dense_matrix(table, columns)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _dense_by_definition(table, columns), rtol=1e-6, atol=0)


def test_hash_values_equals_hash_ids():
    values = ["a", None, "b", "a", None, "日本"]
    assert hash_values(values, BUCKETS).tolist() == hash_ids(pa.array(values), BUCKETS).tolist()


def test_the_services_batch_equals_training_s_batch_of_the_served_table():
    rng = np.random.default_rng(5)
    n = 80
    items = [f"i{i}" for i in rng.integers(0, 50, n)]
    keys = {"user_id": ["u7"] * n, "item_id": items, "item_category": [None if i % 7 == 0 else f"c{i % 4}"
                                                                        for i in range(n)]}  # fmt: skip
    columns: dict[str, np.ndarray] = {}
    for name in ("user_clicks_1h", "user_ctr_24h", "seconds_since_click", "item_impressions_7d", "trend"):
        v = rng.random(n) * 50 - 2
        v[rng.random(n) < 0.2] = np.nan  # absent
        v[3] = np.inf
        columns[name] = v
    columns["user_stats__missing"] = rng.random(n) < 0.3
    cfg = ModelConfig(dense=tuple(reversed(columns)))
    table = as_served(pa.table(keys), pa.table({c: pa.array(v, from_pandas=True) for c, v in columns.items()}))
    batch = to_batch(table, cfg, np.ones(n))
    dense, cats = served_batch(keys, columns, cfg)
    assert torch.equal(dense, batch.dense) and torch.equal(cats, batch.cats)
