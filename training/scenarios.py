"""Scripted training-set scenarios for the gate and rollback tests: a seeded click world (users and items
with latent tastes, position bias, a logging policy with known propensities) rendered as a training set
with ranker_v1's columns, written like `flywheel trainset build` writes one (Parquet by day + manifest).

  normal     the world as it is
  corrupted  a broken feature pipeline: most of a feature null, some counts negative
  shuffled   labels permuted across rows: no signal left
  drifted    item tastes reversed while the user/item rate features still describe the old world: a model trained on
             it learns the reversal and is wrong once the world is back to normal
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from feature_repo.spec import EXAMINATION_ETA, GROUPS
from training.trainset import Plan, write_trainset

ODFV_FEATURES = ("seconds_since_last_click", "popularity_trend")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def world(seed: int, users: int = 400, items: int = 120, dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "u": rng.normal(0, 1, (users, dim)),
        "v": rng.normal(0, 1, (items, dim)),
        "cat": rng.integers(0, 8, items),
        "item_bias": rng.normal(0, 0.5, items),
    }


def render(w: dict, n: int, start: datetime, days: float, seed: int, kind: str = "normal") -> pa.Table:
    rng = np.random.default_rng(seed)
    v = -w["v"] if kind == "drifted" else w["v"]
    bias = -w["item_bias"] if kind == "drifted" else w["item_bias"]
    users, items = len(w["u"]), len(v)
    u_idx = rng.integers(0, users, n)
    # Logging policy: prefers popular items (item_bias), known propensity of the item it showed.
    pol = np.exp(w["item_bias"]) / np.exp(w["item_bias"]).sum()
    i_idx = np.minimum(np.searchsorted(pol.cumsum(), rng.random(n)), items - 1)
    propensity = pol[i_idx]
    position = rng.integers(1, 11, n)
    affinity = (w["u"][u_idx] * v[i_idx]).sum(axis=1) / np.sqrt(v.shape[1])
    relevance = _sigmoid(3.0 * affinity + 2.0 * bias[i_idx] - 3.0)
    click = (rng.random(n) < relevance * position.astype(float) ** -EXAMINATION_ETA).astype(np.int8)

    # Features: noisy user and item rates of the world as it was (in the drifted week tastes turned but
    # these still describe the old world, so what they used to predict now points the wrong way).
    user_rate = _sigmoid((w["u"] * w["v"].mean(axis=0)).sum(axis=1) - 2.5)
    item_rate = _sigmoid(w["item_bias"] - 2.0)
    cols: dict[str, np.ndarray] = {}
    for g in GROUPS:
        for f in g.features:
            name = f.name
            if f.dtype == "timestamp":
                continue
            if "impressions" in name:
                cols[name] = rng.poisson(30, n).astype(np.int64)
            elif "clicks" in name:
                base = user_rate[u_idx] if name.startswith("user") else item_rate[i_idx]
                cols[name] = rng.poisson(30 * base).astype(np.int64)
            elif "purchases" in name:
                cols[name] = rng.poisson(0.3, n).astype(np.int64)
            elif name.startswith("cat_"):
                cols[name] = (
                    rng.poisson(10, n).astype(np.int64)
                    if "impressions" in name
                    else np.clip(_sigmoid(2.0 * affinity - 2.0) + rng.normal(0, 0.02, n), 0, 1)
                )
            else:  # ctr / debiased ctr
                base = user_rate[u_idx] if name.startswith("user") else item_rate[i_idx]
                cols[name] = np.clip(base + rng.normal(0, 0.01, n), 0, None)
    cols["seconds_since_last_click"] = rng.exponential(3600, n)
    cols["popularity_trend"] = rng.lognormal(0, 0.3, n)
    ts = np.sort(rng.integers(0, int(days * 86_400_000), n)) + int(start.timestamp() * 1000)
    table = {
        "event_id": [f"{kind}-{seed}-{i}" for i in range(n)],
        "request_id": [f"{kind}-{seed}-r{i // 10}" for i in range(n)],
        "user_id": np.char.add("u", u_idx.astype(str)),
        "item_id": np.char.add("i", i_idx.astype(str)),
        "item_category": np.char.add("c", w["cat"][i_idx].astype(str)),
        "position": position.astype(np.int64),
        "propensity": propensity,
        "event_timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "label_click": click,
        "label_purchase": (click & (rng.random(n) < 0.1)).astype(np.int8),
    }
    missing = rng.random(n) < 0.05
    for name, values in cols.items():
        arr = values.astype(float)
        table[name] = pa.array(arr, mask=missing)
    for g in GROUPS:
        if g.name != "user_last_click":
            table[f"{g.name}__missing"] = missing
    if kind == "corrupted":
        broken = rng.random(n) < 0.95
        table["user_ctr_24h"] = pa.array(cols["user_ctr_24h"], mask=broken)
        table["item_impressions_7d"] = pa.array(np.where(rng.random(n) < 0.2, -5.0, cols["item_impressions_7d"]))
    if kind == "shuffled":
        table["label_click"] = rng.permutation(click)
    return pa.table(table)


def write(table: pa.Table, out_dir: Path, start: datetime, days: float, name: str) -> Path:
    """As `flywheel trainset build` writes it (the same writer, so the same manifest)."""
    features = [c for c in table.column_names if c not in _BASE and not c.endswith("__missing") and
                not c.startswith("label_")]  # fmt: skip
    plan = Plan("ranker_v1", "1", [], features=features)
    missing_views = [c.removesuffix("__missing") for c in table.column_names if c.endswith("__missing")]
    plan.views = [_View(v) for v in missing_views]  # type: ignore[misc]  # only their names matter for the manifest
    write_trainset(
        table, out_dir, plan, name=name, start=start, end=start + timedelta(days=days),
        label_columns=["label_click", "label_purchase"], labels_in=table.num_rows, attribution_window_s=1800,
        event_log_reaches=start + timedelta(days=days + 1), build_seconds=0.0,
    )  # fmt: skip
    return out_dir


_BASE = {"event_id", "request_id", "user_id", "item_id", "item_category", "position", "propensity",
         "event_timestamp"}  # fmt: skip


class _View:
    def __init__(self, name: str):
        self.name = name
        self.requested = True
