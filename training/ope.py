"""Off-policy evaluation: what click rate would a ranking policy have had, estimated from logged data.

Logged row i showed item a_i at slot s_i with the logging policy's marginal propensity p_i (the
probability that it put a_i at s_i) and got reward r_i (click). A target policy pi, evaluated per slot,
gives pi_s(a | x_i): the probability that it would put a at slot s for this context. Rows whose item the
target cannot show (not among its candidates) count with pi = 0, never dropped.

  IPS   = mean(w_i r_i),                  w_i = pi_{s_i}(a_i | x_i) / p_i
  SNIPS = sum(w_i r_i) / sum(w_i)
  DR    = mean(dm_i + w_i (r_i - q_i)),   dm_i = sum_a pi_{s_i}(a | x_i) q(x_i, a, s_i),  q_i = q(x_i, a_i, s_i)

with q a reward model. Each estimates the click rate per shown slot, the quantity the logging policy's
observed click rate measures, so they compare directly. Confidence intervals: 95% bootstrap over rows
(seeded); `compare` bootstraps the difference of two policies on the same resampled rows (paired).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


@dataclass(frozen=True)
class Terms:
    """One target policy on the logged rows: what every estimator needs of it."""

    w: np.ndarray  # (n,) pi_{s_i}(a_i | x_i) / p_i, 0 where the policy cannot show a_i
    dm: np.ndarray | None = None  # (n,) the reward model's value of the policy's choice at slot s_i


def terms(pi_logged: np.ndarray, propensity: np.ndarray, dm: np.ndarray | None = None) -> Terms:
    return Terms(np.asarray(pi_logged, dtype=float) / np.asarray(propensity, dtype=float), dm)


def _values(t: Terms, reward: np.ndarray, q_logged: np.ndarray | None, rows: np.ndarray) -> dict[str, float]:
    w, r = t.w[rows], reward[rows]
    out = {"ips": float(np.mean(w * r)), "snips": float((w * r).sum() / w.sum()) if w.sum() > 0 else 0.0}
    if t.dm is not None and q_logged is not None:
        out["dr"] = float(np.mean(t.dm[rows] + w * (r - q_logged[rows])))
    return out


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def estimate(
    t: Terms, reward: np.ndarray, q_logged: np.ndarray | None = None, n_boot: int = 200, seed: int = 0
) -> dict[str, Estimate]:
    n = len(reward)
    point = _values(t, reward, q_logged, np.arange(n))
    boot = [_values(t, reward, q_logged, idx) for idx in _resamples(n, n_boot, seed)]
    return {e: Estimate(v, *_interval([b[e] for b in boot])) for e, v in point.items()}


def compare(
    a: Terms, b: Terms, reward: np.ndarray, q_logged: np.ndarray | None = None, n_boot: int = 200, seed: int = 0
) -> dict[str, Estimate]:
    """a - b, per estimator, with a paired bootstrap interval (both on the same resampled rows)."""
    n = len(reward)
    everything = np.arange(n)
    pa, pb = _values(a, reward, q_logged, everything), _values(b, reward, q_logged, everything)
    diffs = []
    for idx in _resamples(n, n_boot, seed):
        va, vb = _values(a, reward, q_logged, idx), _values(b, reward, q_logged, idx)
        diffs.append({e: va[e] - vb[e] for e in va})
    return {e: Estimate(pa[e] - pb[e], *_interval([d[e] for d in diffs])) for e in pa}


def _interval(values: list[float]) -> tuple[float, float]:
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))
