"""Scripted training-set scenarios for the gate and rollback tests: a seeded click world with a known
answer, rendered as a training set with ranker_v1's columns and written like `flywheel trainset build`
writes one (Parquet by day + manifest).

The world: users and items with latent tastes (items cluster by category), item popularity, position
bias, and a logging policy with known per-slot propensities (each slot filled from a popularity
distribution). Every feature is an aggregate of one world, per entity: a user's, an item's and a user x
category's true click rates (with counting noise), impression counts, recency; `Store` serves exactly
those values for any (user, item) pair, which is what off-policy evaluation's counterfactual rows need.

  normal     the world as it is
  corrupted  a broken feature pipeline: most of a feature null, some counts negative
  shuffled   labels permuted across the rows a model trains on (the week before its holdout): a model
             that learned nothing, judged on honest labels
  drifted    tastes and popularity reversed while every feature (user, item and user x category rates
             alike) still describes the world as it was: what the features used to predict now points
             the wrong way, so a model trained on it beats the champion on its own week, learns the
             reversal, and is wrong once the world is back
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from feature_repo.spec import EXAMINATION_ETA, GROUPS
from training.trainset import Plan, write_trainset

ODFV_FEATURES = ("seconds_since_last_click", "popularity_trend")
SLOTS = 5
CATEGORIES = 8


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@dataclass(frozen=True)
class World:
    u: np.ndarray  # (users, dim) tastes
    v: np.ndarray  # (items, dim) taste directions: the category's centre plus the item's own part
    cat: np.ndarray  # (items,) category index
    item_bias: np.ndarray  # (items,) popularity, which the logging policy also follows
    seed: int

    @property
    def relevance(self) -> np.ndarray:
        """(users, items) P(click | examined): the truth every feature and label is drawn from."""
        return _sigmoid(3.0 * (self.u @ self.v.T) / np.sqrt(self.u.shape[1]) + 2.0 * self.item_bias[None, :] - 3.0)

    @property
    def logging_policy(self) -> np.ndarray:
        """(items,) the probability that any slot shows each item (popularity; fixed across kinds)."""
        p = np.exp(self.item_bias)
        return p / p.sum()

    def drifted(self) -> World:
        """Tastes and popularity reversed."""
        return replace(self, v=-self.v, item_bias=-self.item_bias)


def world(seed: int, users: int = 400, items: int = 120, dim: int = 4) -> World:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, CATEGORIES, items)
    centres = rng.normal(0, 0.7, (CATEGORIES, dim))
    return World(
        u=rng.normal(0, 1, (users, dim)),
        v=centres[cat] + rng.normal(0, 1, (items, dim)),
        cat=cat,
        item_bias=rng.normal(0, 0.5, items),
        seed=seed,
    )


def examination(position: np.ndarray) -> np.ndarray:
    return np.asarray(position, dtype=float) ** -EXAMINATION_ETA


BLOCK_MS = 3_600_000  # feature values are redrawn every hour: windows move, counts fluctuate


class Store:
    """A week's feature values per entity and hour, as a feature store would serve them
    (offpolicy.FeatureSource): true rates of the world with counting noise."""

    def __init__(self, w: World, seed: int, start: datetime, days: float):
        rng = np.random.default_rng([w.seed, seed])
        self.start_ms = int(start.timestamp() * 1000)
        t = int(np.ceil(days * 86_400_000 / BLOCK_MS))
        rel, n_users, n_items = w.relevance, len(w.u), len(w.v)
        exam = examination(np.arange(1, SLOTS + 1)).mean()
        rates = {
            "user": rel.mean(axis=1) * exam,
            "item": rel.mean(axis=0) * exam,
            "cat": np.stack([rel[:, w.cat == c].mean(axis=1) for c in range(CATEGORIES)], axis=1) * exam,
        }
        self.values: dict[str, np.ndarray] = {}  # feature -> (blocks, entities) ((blocks, users, categories) for cat_)
        for g in GROUPS:
            for f in g.features:
                if f.dtype == "timestamp":
                    continue
                kind = "cat" if f.name.startswith("cat_") else f.name.split("_", 1)[0]
                rate = np.broadcast_to(rates[kind], (t, *rates[kind].shape))
                n_imps = np.asarray(rng.poisson(10 if kind == "cat" else 30, rate.shape), dtype=float)
                clicks = rng.poisson(n_imps * rate).astype(float)
                if "impressions" in f.name:
                    self.values[f.name] = n_imps
                elif "clicks" in f.name:
                    self.values[f.name] = clicks
                elif "purchases" in f.name:
                    self.values[f.name] = rng.poisson(0.1 * clicks).astype(float)
                else:  # ctr / debiased ctr: a noisy estimate of the true rate
                    self.values[f.name] = np.clip(rate + rng.normal(0, 0.01, rate.shape), 0, 1)
        self.values["seconds_since_last_click"] = rng.exponential(3600, (t, n_users))
        self.values["popularity_trend"] = rng.lognormal(0, 0.3, (t, n_items))
        # Whole views are missing per entity and block: the 1 h views mostly (sparse keys), the rest rarely.
        self.missing: dict[str, np.ndarray] = {}
        for g in GROUPS:
            if g.name == "user_last_click":
                continue
            keyed = (n_users, CATEGORIES) if g.name.startswith("user_category") else (
                (n_items,) if g.name.startswith("item") else (n_users,))  # fmt: skip
            self.missing[g.name] = rng.random((t, *keyed)) < (0.6 if "1h" in g.name else 0.05)

    def lookup(self, ts_ms: np.ndarray, users: np.ndarray, items: np.ndarray, cats: np.ndarray) -> dict[str, pa.Array]:
        blocks = self.values["popularity_trend"].shape[0]
        b = np.clip((np.asarray(ts_ms) - self.start_ms) // BLOCK_MS, 0, blocks - 1)
        cols: dict[str, pa.Array] = {}
        for g in GROUPS:
            if g.name == "user_last_click":
                continue
            keyed = g.name.split("_stats")[0]
            index = (b, users, cats) if keyed == "user_category" else (b, items) if keyed == "item" else (b, users)
            missing = self.missing[g.name][index]
            for f in g.features:
                cols[f.name] = pa.array(self.values[f.name][index], mask=missing)
            cols[f"{g.name}__missing"] = pa.array(missing)
        cols["seconds_since_last_click"] = pa.array(self.values["seconds_since_last_click"][b, users])
        cols["popularity_trend"] = pa.array(self.values["popularity_trend"][b, items])
        return cols

    def as_of(self, entities: pa.Table) -> pa.Table:
        ts = entities.column("event_timestamp").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
        ids = [_ids(entities.column(c)) for c in ("user_id", "item_id", "item_category")]
        return pa.table({**{c: entities.column(c) for c in entities.column_names}, **self.lookup(ts, *ids)})


def _ids(col: pa.ChunkedArray) -> np.ndarray:
    return np.array([int(str(x)[1:]) for x in col.to_pylist()], dtype=np.int64)


def render(
    w: World, n: int, start: datetime, days: float, seed: int, kind: str = "normal", train_share: float = 0.8
) -> tuple[pa.Table, Store]:
    """A week of logged rows (by time) and the feature store that served them."""
    rng = np.random.default_rng([w.seed, seed, 1])
    truth = w.drifted() if kind == "drifted" else w
    store = Store(w, seed, start, days)  # the feature pipeline's view: in the drifted week, the world before
    users, items = len(w.u), len(w.v)
    u_idx = rng.integers(0, users, n)
    pol = w.logging_policy
    i_idx = np.minimum(np.searchsorted(pol.cumsum(), rng.random(n)), items - 1)
    position = np.tile(np.arange(1, SLOTS + 1), n // SLOTS + 1)[:n]
    click = (rng.random(n) < truth.relevance[u_idx, i_idx] * examination(position)).astype(np.int8)
    ts = np.sort(rng.integers(0, int(days * 86_400_000), n)) + int(start.timestamp() * 1000)
    table = {
        "event_id": [f"{kind}-{seed}-{i}" for i in range(n)],
        "request_id": [f"{kind}-{seed}-r{i // SLOTS}" for i in range(n)],
        "user_id": np.char.add("u", u_idx.astype(str)),
        "item_id": np.char.add("i", i_idx.astype(str)),
        "item_category": np.char.add("c", w.cat[i_idx].astype(str)),
        "position": position.astype(np.int64),
        "propensity": pol[i_idx],  # each slot is filled from pol independently: its marginal at any slot
        "event_timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "label_click": click,
        "label_purchase": (click & (rng.random(n) < 0.1)).astype(np.int8),
    }
    table |= store.lookup(ts, u_idx, i_idx, w.cat[i_idx])
    if kind == "corrupted":
        broken = rng.random(n) < 0.95
        table["user_ctr_24h"] = pa.array(table["user_ctr_24h"].to_numpy(zero_copy_only=False), mask=broken)
        imps = table["item_impressions_7d"].to_numpy(zero_copy_only=False)
        table["item_impressions_7d"] = pa.array(np.where(rng.random(n) < 0.2, -5.0, imps))
    if kind == "shuffled":  # only where a model trains (the week before its holdout): it is judged on honest labels
        cut = int(n * train_share)
        table["label_click"] = np.concatenate([rng.permutation(click[:cut]), click[cut:]])
    return pa.table(table), store


def true_value(w: World, users: np.ndarray, slots: np.ndarray, pi_at_slot: np.ndarray, items: np.ndarray) -> float:
    """The click rate per slot a policy would get: mean over rows of sum_a pi(a at the row's slot) P(click)."""
    rel = w.relevance[users[:, None], items[None, :]]  # (rows, candidates)
    return float(np.mean((pi_at_slot * rel).sum(axis=1) * examination(slots + 1)))


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
