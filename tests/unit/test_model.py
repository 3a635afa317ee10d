"""The ranker's batch building: the hashed ids and the dense matrix, against their definitions written out
value by value."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pyarrow as pa
import pytest

from training.model import dense_matrix, hash_ids

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
