"""Off-policy evaluation of the policy a model would serve, on logged rows.

For each evaluated row (a logged impression: user, time, slot, item, marginal propensity, click) the
choice set is the evaluation window's most shown items. Each candidate's feature vector is what serving
would have built at that row's time: item features and user x item-category features as of the row,
from a `FeatureSource` (the offline store through the training-set builder's point-in-time join; a
scenario's world in the tests), assembled by `model.as_served` like the online path. So the evaluated
policy depends on the row's user and time only, never on which item the logging policy happened to show.

The policy is the serving one (`policy` in flywheel.yaml): a Plackett-Luce draw from
softmax(logit / temperature) mixed with epsilon uniformly random lists, judged per slot through its exact
marginals (`flywheel.policy`). Baselines: a uniformly random ranking, and popularity (PL with weights
proportional to past clicks + 1). Every logged row counts; rows whose item is not a candidate have weight
0, and the report gives that coverage. Models are compared on the same rows with a paired bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from flywheel import policy
from flywheel.settings import Settings
from training import ope
from training.model import ModelConfig, Ranker, as_served, hash_ids, to_batch

if TYPE_CHECKING:  # the builder imports DuckDB: only when the offline store is used
    from training.trainset import Plan


class FeatureSource(Protocol):
    def as_of(self, entities: pa.Table) -> pa.Table:
        """Entity rows (user_id, item_id, item_category, event_timestamp) -> the same rows, in order, with
        the feature service's columns as of strictly before each timestamp (and `<view>__missing`)."""
        ...


@dataclass
class OfflineFeatures:
    """The offline store, joined point-in-time exactly as training sets are built."""

    plan: Plan

    def as_of(self, entities: pa.Table) -> pa.Table:
        from training.trainset import point_in_time_join

        return point_in_time_join(self.plan, entities)


def offline_features(cfg: Settings, service: str) -> OfflineFeatures:
    from flywheel.clients import feast_store
    from training.trainset import plan

    return OfflineFeatures(plan(feast_store.store(cfg), service))


@dataclass
class Setup:
    """The shared part of one evaluation: the rows, the choice set and every (row, candidate) as served."""

    rows: pa.Table  # the logged rows evaluated
    candidates: list[str]
    logged: np.ndarray  # (n,) index of the row's item among the candidates, -1 if it is not one
    slot: np.ndarray  # (n,) 0-based logged slot
    slots: int
    served: pa.Table  # n * m rows, row-major: row i's candidates j at SERVED_AT

    @property
    def coverage(self) -> float:
        return float((self.logged >= 0).mean()) if len(self.logged) else 0.0


def _choice_set(history: pa.Table, rows: pa.Table, k: int) -> tuple[list[str], list[str | None]]:
    """The k most shown items of the evaluated rows, with each one's latest known category."""
    counts = pc.value_counts(rows.column("item_id")).to_pylist()
    top = [c["values"] for c in sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))[:k]]
    both = pa.concat_tables([history.select(["item_id", "item_category"]), rows.select(["item_id", "item_category"])])
    latest = dict(zip(both.column("item_id").to_pylist(), both.column("item_category").to_pylist(), strict=True))
    return top, [latest.get(i) for i in top]


def setup(history: pa.Table, rows: pa.Table, cfg: Settings, features: FeatureSource) -> Setup:
    """Sample the evaluated rows (all rows when there are few), pick the choice set, fetch every candidate's
    features as of each row's time."""
    o = cfg.training.ope
    if rows.num_rows > o.rows:
        keep = np.sort(np.random.default_rng(cfg.training.seed).choice(rows.num_rows, o.rows, replace=False))
        rows = rows.take(pa.array(keep))
    cands, cats = _choice_set(history, rows, o.candidates)
    index = {item: j for j, item in enumerate(cands)}
    logged = np.array([index.get(i, -1) for i in rows.column("item_id").to_pylist()], dtype=np.int64)
    slot = np.asarray(rows.column("position").to_numpy(zero_copy_only=False), dtype=np.int64) - 1
    n, m = rows.num_rows, len(cands)
    entities = pa.table(
        {
            "user_id": np.repeat(np.asarray(rows.column("user_id").to_pylist(), dtype=object), m),
            "item_id": np.tile(np.asarray(cands, dtype=object), n),
            "item_category": np.tile(np.asarray(cats, dtype=object), n),
            "event_timestamp": pc.take(rows.column("event_timestamp"), pa.array(np.repeat(np.arange(n), m))),
        }
    )
    served = as_served(entities, features.as_of(entities))
    return Setup(rows, cands, logged, slot, int(slot.max()) + 1 if n else 1, served)


@dataclass
class Scores:
    """A model on a setup: its serving logits (n, m) and its click probability at each row's slot (n, m)."""

    logits: np.ndarray
    at_slot: np.ndarray


def score(model: Ranker, mcfg: ModelConfig, s: Setup) -> Scores:
    n, m = s.rows.num_rows, len(s.candidates)
    batch = to_batch(s.served, mcfg, np.ones(s.served.num_rows))
    pos = mcfg.categorical.index("position") if "position" in mcfg.categorical else None
    model.eval()
    with torch.no_grad():
        served = model(batch.dense, batch.cats).numpy().reshape(n, m)
        if pos is not None:  # the reward model for DR: the click probability at the slot the row was shown in
            cats = batch.cats.clone()
            cats[:, pos] = torch.from_numpy(hash_ids(pa.array(np.repeat(s.slot + 1, m)), mcfg.buckets))
            logits_at = model(batch.dense, cats).numpy().reshape(n, m)
        else:
            logits_at = served
    return Scores(served.astype(np.float64), 1.0 / (1.0 + np.exp(-logits_at.astype(np.float64))))


def _terms(pi: np.ndarray, s: Setup, q: np.ndarray) -> ope.Terms:
    n = len(s.logged)
    at = pi[np.arange(n), :, s.slot]  # (n, m): each candidate's probability at the row's logged slot
    pi_logged = np.where(s.logged >= 0, at[np.arange(n), np.maximum(s.logged, 0)], 0.0)
    prop = np.asarray(s.rows.column("propensity").to_numpy(zero_copy_only=False), dtype=float)
    return ope.terms(pi_logged, prop, dm=(at * q).sum(axis=1))


def evaluate(
    models: dict[str, tuple[Ranker, ModelConfig]], s: Setup, history: pa.Table, cfg: Settings, reward_model: str
) -> dict:
    """Estimates for every model's serving policy and the baselines, and paired differences of the first
    model against the others. `reward_model` names the model whose click probabilities DR uses for all."""
    scores = {name: score(model, mcfg, s) for name, (model, mcfg) in models.items()}
    q = scores[reward_model].at_slot
    n, m = q.shape
    q_logged = np.where(s.logged >= 0, q[np.arange(n), np.maximum(s.logged, 0)], 0.0)
    reward = np.asarray(s.rows.column("label_click").to_numpy(zero_copy_only=False), dtype=float)
    p = cfg.policy
    pis = {name: policy.serving_marginals(sc.logits, s.slots, p.temperature, p.epsilon) for name, sc in scores.items()}
    pis["random"] = np.broadcast_to(np.where(np.arange(s.slots) < m, 1.0 / m, 0.0), (n, m, s.slots))
    clicks = np.zeros(m)
    index = {item: j for j, item in enumerate(s.candidates)}
    for item, c in zip(history.column("item_id").to_pylist(), history.column("label_click").to_pylist(), strict=True):
        if item in index:
            clicks[index[item]] += c
    popular = policy.marginals(np.log(clicks + 1.0)[None, :], min(s.slots, m))
    pis["popularity"] = np.broadcast_to(
        np.concatenate([popular, np.zeros((1, m, s.slots - popular.shape[2]))], axis=2), (n, m, s.slots)
    )
    o, seed = cfg.training.ope, cfg.training.seed
    terms = {name: _terms(pi, s, q) for name, pi in pis.items()}
    first = next(iter(models))
    return {
        "policies": {
            name: {e: v.as_dict() for e, v in ope.estimate(t, reward, q_logged, o.bootstrap, seed).items()}
            for name, t in terms.items()
        },
        "versus": {
            f"{first} - {other}": {
                e: v.as_dict() for e, v in ope.compare(terms[first], t, reward, q_logged, o.bootstrap, seed).items()
            }
            for other, t in terms.items()
            if other != first
        },
        "rows": n,
        "candidates": m,
        "slots": s.slots,
        "coverage": s.coverage,
        "logged_click_rate": float(reward.mean()) if n else 0.0,
        "policy": cfg.policy.model_dump(),
        "reward_model": reward_model,
    }
