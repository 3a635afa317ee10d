"""Off-policy evaluation: what click rate would a ranking policy have had, estimated from logged data.

The logged row i showed item a_i (at its position) with the logging policy's propensity p_i and got
reward r_i (click). A policy pi gives each candidate item a probability in that context; here a model's
policy is the softmax of its scores over the candidate items (the catalog seen in the evaluation
window), with the row's user-side features and each candidate's item-side features.

  IPS   = mean(w_i r_i),                  w_i = pi(a_i | x_i) / p_i
  SNIPS = sum(w_i r_i) / sum(w_i)
  DR    = mean(sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))   with q a reward model

Confidence intervals: 95% bootstrap over rows (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def _boot(stat, arrays: tuple[np.ndarray, ...], n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    idx = rng.integers(0, n, (n_boot, n))
    vals = np.array([stat(*(a[i] for a in arrays)) for i in idx])
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def estimate(
    pi: np.ndarray,  # (n, k) the policy's probabilities over the k candidates
    logged: np.ndarray,  # (n,) index of the logged item among the candidates
    reward: np.ndarray,  # (n,)
    propensity: np.ndarray,  # (n,)
    q: np.ndarray | None = None,  # (n, k) reward model for DR
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Estimate]:
    n = len(reward)
    w = pi[np.arange(n), logged] / propensity
    out = {}
    ips = w * reward
    out["ips"] = Estimate(float(ips.mean()), *_boot(np.mean, (ips,), n_boot, seed))
    snips = lambda a, b: float(a.sum() / b.sum()) if b.sum() > 0 else 0.0  # noqa: E731
    out["snips"] = Estimate(snips(ips, w), *_boot(snips, (ips, w), n_boot, seed))
    if q is not None:
        dr = (pi * q).sum(axis=1) + w * (reward - q[np.arange(n), logged])
        out["dr"] = Estimate(float(dr.mean()), *_boot(np.mean, (dr,), n_boot, seed))
    return out


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uniform_policy(n: int, k: int) -> np.ndarray:
    return np.full((n, k), 1.0 / k)


def popularity_policy(n: int, clicks_per_candidate: np.ndarray) -> np.ndarray:
    """Show items in proportion to their past clicks (+1 so nothing is impossible)."""
    p = (clicks_per_candidate + 1.0) / (clicks_per_candidate + 1.0).sum()
    return np.tile(p, (n, 1))
