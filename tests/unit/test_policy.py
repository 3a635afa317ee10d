"""Plackett-Luce propensities against independent truths: brute-force enumeration of every ordered
prefix, Monte Carlo draws, and the fast path against the direct one on large catalogs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flywheel import policy


def brute_force(logits: np.ndarray, k: int) -> np.ndarray:
    """P(item at slot s) by summing the sequential-draw probability of every ordered k-prefix."""
    w = np.exp(logits - logits.max())
    w /= w.sum()
    out = np.zeros((len(w), k))
    for prefix in itertools.permutations(range(len(w)), k):
        p, left = 1.0, np.ones(len(w), bool)
        for j in prefix:
            p *= w[j] / w[left].sum()  # summed, not 1 - taken: exact when one item holds nearly all weight
            left[j] = False
        for s, j in enumerate(prefix):
            out[j, s] += p
    return out


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 12.0])  # from nearly uniform to nearly deterministic
def test_marginals_equal_brute_force_enumeration(scale):
    rng = np.random.default_rng(int(scale * 10))
    logits = rng.normal(0, scale, (4, 8))
    logits[0, 3] = -np.inf  # an unavailable item: never shown
    got = policy.marginals(logits, 4)
    want = np.array([brute_force(row[np.isfinite(row)], 4) for row in logits[1:]])
    assert np.abs(got[1:] - want).max() < 1e-9
    assert np.abs(got[0, np.arange(8) != 3] - brute_force(np.delete(logits[0], 3), 4)).max() < 1e-9
    assert np.all(got[0, 3] == 0)
    shown = policy.sample(logits, 4, rng)
    at_slot = got[np.arange(4)[:, None], shown, np.arange(4)]
    assert np.abs(policy.marginals_of_shown(logits, shown) - at_slot).max() < 1e-9
    # The sequential conditional is another quantity: equal at slot 1 only.
    seq = policy.sequential(logits, shown)
    assert np.allclose(seq[:, 0], at_slot[:, 0]) and not np.allclose(seq[:, 1:], at_slot[:, 1:])


def test_marginals_agree_with_monte_carlo_draws():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.0, (1, 30))
    draws = 200_000
    shown = policy.sample(np.repeat(logits, draws, axis=0), 5, rng)
    freq = np.zeros((30, 5))
    np.add.at(freq, (shown, np.broadcast_to(np.arange(5), shown.shape)), 1.0 / draws)
    exact = policy.marginals(logits, 5)[0]
    se = np.sqrt(exact * (1 - exact) / draws)
    assert np.all(np.abs(freq - exact) <= 4.5 * se + 1e-12)
    assert np.allclose(exact.sum(axis=0), 1.0, atol=1e-9)  # every slot is filled by some item


@pytest.mark.parametrize("items,scale,heavy", [(2_000, 1.2, 0), (400, 0.6, 2), (120, 1.0, 1), (60, 2.0, 3)])
def test_fast_path_equals_the_direct_path(items, scale, heavy):
    """Large catalogs (with a few heavy items, or small and peaked ones that fall back to the direct path)."""
    rng = np.random.default_rng(items)
    logits = rng.normal(0, scale, (40, items))
    logits[:, :heavy] += rng.uniform(0, 5, (40, heavy))
    shown = policy.sample(logits, 10, rng)
    direct = policy._shown_direct(policy._weights(logits), shown)
    got = policy.marginals_of_shown(logits, shown)
    assert np.max(np.abs(got - direct) / direct) < 1e-8
