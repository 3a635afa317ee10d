"""A DLRM-style ranker for P(click | user, item, context), small enough to train on a CPU.

Categorical ids (user, item, category, position) go through hashed embeddings, so an id never seen in
training still gets a row (shared with whatever it collides with) instead of an error; dense features
go through a bottom MLP into the same space; all pairwise dot products between these vectors, plus the
dense vector itself, feed a top MLP that outputs a logit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

CATEGORICAL = ("user_id", "item_id", "item_category", "position")


@dataclass(frozen=True)
class ModelConfig:
    dense: tuple[str, ...]  # feature columns (counts are log1p'd, missing -> 0 plus the indicators)
    categorical: tuple[str, ...] = CATEGORICAL
    buckets: int = 50_021  # hash buckets per categorical column (prime)
    dim: int = 16
    bottom: tuple[int, ...] = (64,)
    top: tuple[int, ...] = (64, 32)

    def as_dict(self) -> dict:
        return asdict(self)


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Ranker(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.buckets, cfg.dim) for _ in cfg.categorical)
        self.bottom = _mlp([len(cfg.dense), *cfg.bottom, cfg.dim], last_activation=True)
        n = len(cfg.categorical) + 1
        self.pairs = torch.triu_indices(n, n, offset=1)
        self.top = _mlp([cfg.dim + self.pairs.shape[1], *cfg.top, 1], last_activation=False)
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=0.05)  # type: ignore[arg-type]  # ModuleList items are Embeddings

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.stack([x, *(emb(cats[:, i]) for i, emb in enumerate(self.embeddings))], dim=1)
        inter = vectors @ vectors.transpose(1, 2)
        pairs = inter[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([x, pairs], dim=1)).squeeze(1)


@dataclass
class Batch:
    dense: torch.Tensor
    cats: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # request_id, item_id, propensity, position


def _bucket(value: object, buckets: int) -> int:
    return zlib.crc32(str(value).encode()) % buckets


def hash_ids(values: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    """Stable across processes (Python's hash() is salted): crc32 of the string form, computed once per distinct
    value (a request repeats its user, slot and categories; a training set its ids)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    encoded = pc.dictionary_encode(arr, null_encoding="encode")  # a null hashes as str(None), like any value
    distinct = encoded.dictionary.to_pylist()
    codes = np.fromiter((_bucket(v, buckets) for v in distinct), dtype=np.int64, count=len(distinct))
    return codes[encoded.indices.to_numpy(zero_copy_only=False)]


def hash_values(values: Sequence[object], buckets: int) -> np.ndarray:
    """`hash_ids` of Python values (None as a null)."""
    codes: dict[object, int] = {}
    return np.fromiter((codes[v] if v in codes else codes.setdefault(v, _bucket(v, buckets)) for v in values),
                       dtype=np.int64, count=len(values))  # fmt: skip


@lru_cache(maxsize=64)
def _logged(columns: tuple[str, ...]) -> np.ndarray:
    """The columns that are counts or durations: heavy-tailed, so the ranker sees their log1p."""
    return np.array([j for j, c in enumerate(columns)
                     if "impressions" in c or "clicks" in c or "purchases" in c or c.startswith("seconds_")],
                    dtype=np.intp)  # fmt: skip


def dense_matrix(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """The dense features as float32: missing or not finite -> 0 (the `__missing` indicators say which),
    booleans as 0/1, counts and durations log1p'd."""
    return _dense(lambda c: table.column(c).to_numpy(zero_copy_only=False), table.num_rows, columns)


def _dense(column: Callable[[str], np.ndarray], n: int, columns: tuple[str, ...]) -> np.ndarray:
    out = np.empty((n, len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        out[:, j] = column(c)
    out[~np.isfinite(out)] = 0.0
    logged = _logged(columns)
    out[:, logged] = np.log1p(np.maximum(out[:, logged], 0.0))
    return out.astype(np.float32)


def to_batch(table: pa.Table, cfg: ModelConfig, weight: np.ndarray, label: str = "label_click") -> Batch:
    cats = np.stack([hash_ids(table.column(c), cfg.buckets) for c in cfg.categorical], axis=1)
    extra = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("request_id", "item_id", "propensity",
                                                                         "position")}  # fmt: skip
    return Batch(
        dense=torch.from_numpy(dense_matrix(table, cfg.dense)),
        cats=torch.from_numpy(cats),
        label=torch.from_numpy(np.asarray(table.column(label).to_numpy(zero_copy_only=False), dtype=np.float32)),
        weight=torch.from_numpy(weight.astype(np.float32)),
        extra=extra,
    )


SERVED_AT = 1  # the ranker scores every candidate as if shown first: the ranking decides the slot


def served_batch(
    keys: Mapping[str, Sequence[object]], columns: Mapping[str, np.ndarray], cfg: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's (dense, categorical) inputs for `as_served(keys, columns)` without building the table: the
    service's path, equal to `to_batch` of that table (tests/unit/test_model.py). `keys` holds user_id,
    item_id and item_category per candidate, `columns` the features as float64 (NaN when absent)."""
    n = len(keys["item_id"])
    slot = hash_values([SERVED_AT], cfg.buckets)
    cats = [np.repeat(slot, n) if c == "position" else hash_values(keys[c], cfg.buckets) for c in cfg.categorical]
    dense = _dense(columns.__getitem__, n, cfg.dense)
    return torch.from_numpy(dense), torch.from_numpy(np.stack(cats, axis=1))


def as_served(keys: pa.Table, features: pa.Table) -> pa.Table:
    """The table the ranker scores for (user, candidate) pairs: their keys, the service's features (and
    `<view>__missing` indicators) as the store holds them, every candidate at slot SERVED_AT. Serving and
    off-policy evaluation both build it here, so the evaluated policy is the one that serves."""
    n = keys.num_rows
    cols: dict[str, object] = {c: keys.column(c) for c in ("user_id", "item_id", "item_category")}
    cols |= {
        "position": np.full(n, SERVED_AT, dtype=np.int64),
        "propensity": np.ones(n),
        "request_id": pa.array(["served"] * n),
        "label_click": np.zeros(n, dtype=np.int8),
    }
    cols |= {c: features.column(c) for c in features.column_names if c not in cols and c != "event_timestamp"}
    return pa.table(cols)
