"""Plackett-Luce propensities against independent truths: brute-force enumeration of every ordered
prefix, Monte Carlo draws, and the shown items' compiled path against the vectorised full marginals."""

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


@pytest.mark.parametrize(
    "rows,items,scale,heavy",
    [(4, 2_000, 1.2, 0), (20, 600, 0.6, 2), (20, 120, 1.0, 1), (20, 100, 0.2, 0), (20, 100, 4.0, 0), (20, 60, 2.0, 3),
     (20, 30, 12.0, 0)],
)  # fmt: skip
def test_marginals_of_shown_equal_the_full_marginals(rows, items, scale, heavy):
    """The compiled loop, on the Laguerre nodes (flat weights) and on the trapezoid grid (peaked ones, or a
    few heavy items), against the vectorised computation of every item at every slot."""
    rng = np.random.default_rng(items)
    logits = rng.normal(0, scale, (rows, items))
    logits[:, :heavy] += rng.uniform(0, 5, (rows, heavy))
    shown = policy.sample(logits, 10, rng)
    full = policy.marginals(logits, 10)
    want = full[np.arange(rows)[:, None], shown, np.arange(10)]
    got = policy.marginals_of_shown(logits, shown)
    assert np.max(np.abs(got - want) / want) < 1e-8


def _list_probabilities(logits: np.ndarray, k: int, temperature: float, epsilon: float) -> dict[tuple, float]:
    """Every ordered k-list of the serving policy, with its probability, by enumeration."""
    w = np.exp((logits - logits.max()) / temperature)
    w /= w.sum()
    m = len(w)
    uniform = 1.0 / np.prod(m - np.arange(k))
    out = {}
    for prefix in itertools.permutations(range(m), k):
        p, left = 1.0, np.ones(m, bool)
        for j in prefix:
            p *= w[j] / w[left].sum()
            left[j] = False
        out[prefix] = (1 - epsilon) * p + epsilon * uniform
    return out


@pytest.mark.parametrize(("temperature", "epsilon"), [(1.0, 0.0), (0.25, 0.05), (0.05, 0.2), (0.01, 0.0)])
def test_served_propensities_equal_enumeration_of_every_list(temperature, epsilon):
    """What a served list logs: each slot's marginal and its conditional on the slots above, both exactly the
    enumerated policy's; and, over all candidates, each slot's marginals sum to 1."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, 6)
    k = 3
    lists = _list_probabilities(logits, k, temperature, epsilon)
    at = np.zeros((6, k))
    for items, p in lists.items():
        for s, i in enumerate(items):
            at[i, s] += p
    np.testing.assert_allclose(at.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(policy.serving_marginals(logits[None], k, temperature, epsilon)[0], at, atol=1e-9)
    for _ in range(20):
        shown, marginal, conditional = policy.draw(logits, k, temperature, epsilon, rng)
        np.testing.assert_allclose(marginal, at[shown, np.arange(k)], atol=1e-9)
        prefix = [sum(p for items, p in lists.items() if items[:s] == tuple(shown[:s])) for s in range(k + 1)]
        np.testing.assert_allclose(conditional, np.array(prefix[1:]) / np.array(prefix[:-1]), rtol=1e-9)


def _team_draft_by_coins(a: list[int], b: list[int], k: int, rng: np.random.Generator) -> tuple[list, list]:
    """Team draft as the paper writes it, flipping real coins: an independent implementation."""
    shown, teams = [], []
    while len(shown) < k:
        na, nb = teams.count(0), teams.count(1)
        team = 0 if na < nb or (na == nb and rng.random() < 0.5) else 1
        shown.append(next(i for i in (a if team == 0 else b) if i not in shown))
        teams.append(team)
    return shown, teams


def test_team_draft_propensities_and_attribution_match_an_independent_draft():
    rng = np.random.default_rng(5)
    m, k, eps = 8, 5, 0.1
    a, b = rng.permutation(m), rng.permutation(m)
    runs, counts, seen = 40_000, np.zeros((m, k)), {}
    for _ in range(runs):
        if rng.random() < eps:
            shown = rng.permutation(m)[:k].tolist()
        else:
            shown, _ = _team_draft_by_coins(a.tolist(), b.tolist(), k, rng)
        counts[shown, np.arange(k)] += 1
    freq = counts / runs
    np.testing.assert_allclose(freq.sum(axis=0), 1.0)
    for _ in range(200):
        shown, teams, marginal, conditional = policy.team_draft(a, b, k, eps, rng)
        seen[tuple(shown)] = marginal
        se = np.sqrt(marginal * (1 - marginal) / runs)
        assert np.all(np.abs(freq[shown, np.arange(k)] - marginal) <= 5 * se + 1e-12)
        assert np.all((conditional > 0) & (conditional <= 1 + 1e-12))
        if teams[0] >= 0:  # each slot is its team's best item not shown above it; teams stay balanced
            for s, t in enumerate(teams):
                ranking = (a if t == 0 else b).tolist()
                assert shown[s] == next(i for i in ranking if i not in shown[:s])
                assert abs(list(teams[: s + 1]).count(0) - list(teams[: s + 1]).count(1)) <= 1
        else:
            assert np.all(teams == -1)
    assert len(seen) > 3
    with pytest.raises(ValueError, match="at most"):
        policy.team_draft(np.arange(40), np.arange(40), 20, 0.0, rng)


def test_logits_far_apart_give_finite_exact_propensities():
    """A served model can put candidates hundreds of logits apart (after dividing by the temperature). The
    propensities stay finite and exact: a far item in the first three slots got there only by a random list
    (epsilon / m); the fourth slot, with three likely items, goes to a far one with probability 1 - epsilon."""
    rng = np.random.default_rng(8)
    logits = np.array([0.0, -1.0, -900.0, -2000.0, -5.0, -1e6])
    far = [2, 3, 5]
    for epsilon in (0.0, 0.5, 1.0):
        for _ in range(30):
            shown, marginal, conditional = policy.draw(logits, 4, 0.25, epsilon, rng)
            assert np.all(np.isfinite(marginal)) and np.all(np.isfinite(conditional))
            assert np.all((marginal > 0) & (marginal <= 1 + 1e-12))
            early = np.isin(shown[:3], far)
            np.testing.assert_allclose(marginal[:3][early], epsilon / 6, atol=1e-12)
        at = policy.serving_marginals(logits[None], 4, 0.25, epsilon)[0]
        np.testing.assert_allclose(at.sum(axis=0), 1.0, atol=1e-9)
        np.testing.assert_allclose(at[far, 3].sum(), (1 - epsilon) + epsilon * 3 / 6, atol=1e-9)
