"""Stochastic ranking policies and their exact per-slot propensities.

A Plackett-Luce (PL) policy with weights w fills slot 1 with item i with probability w_i / sum(w), slot
2 from the items left, and so on; sampling it is the Gumbel top-k trick. Per-slot off-policy estimators
and IPS-weighted training need the *marginal* probability that the policy put item i at slot k, not the
sequential conditional the draw uses (they agree only at slot 1). Computing it naively sums over every
ordered prefix; instead it uses the exponential-race view of PL: item j "arrives" at T_j ~ Exp(w_j) and
the list is the arrival order, so (with sum(w) = 1)

    P(i at slot k) = integral_0^inf  w_i exp(-w_i t) * P(exactly k-1 other items arrived by t)  dt,

where the second factor is a Poisson-binomial probability. `marginals` evaluates it for any weights
(trapezoid in log t, exponentially convergent for these analytic integrands, Poisson-binomial by a
leave-one-out product); `marginals_of_shown`, what the simulator and the service log, computes only the
shown items' (Gauss-Laguerre in t when the weights allow it) in a loop compiled by numba, checked against
`marginals` in the tests. `docs/design/off-policy.md` has the derivation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

_STEP = 0.25  # trapezoid step in log t: error ~exp(-pi^2 / step); below 1e-10 measured with 10 slots
_T_LOW = 1e-10  # what is left below it is at most w_i * _T_LOW
_TAIL = 30.0  # the integrand has decayed like exp(-_TAIL) once the (k+1)-th heaviest item has surely arrived


_NEGLIGIBLE = 600.0


def _weights(logits: np.ndarray) -> np.ndarray:
    """Row-normalised PL weights; -inf logits (unavailable items) get weight 0. An item more than _NEGLIGIBLE
    below the best gets e^-600, not a subnormal or 0: its reciprocal sizes the integration grid, and a list
    with fewer likelier items than slots must still fill its slots with probability 1."""
    z = np.asarray(logits, dtype=np.float64)
    top = np.max(np.where(np.isfinite(z), z, -np.inf), axis=1, keepdims=True)
    if not np.all(np.isfinite(top)):
        raise ValueError("every row needs at least one candidate with a finite logit")
    w = np.where(np.isfinite(z), np.exp(np.maximum(z - top, -_NEGLIGIBLE)), 0.0)
    return w / w.sum(axis=1, keepdims=True)


def sample(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, k) item indices, slot 1 first: a PL draw via Gumbel top-k (needs k finite logits per row)."""
    z = np.asarray(logits, dtype=np.float64) + rng.gumbel(size=np.shape(logits))
    top = np.argpartition(-z, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(z, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def sequential(logits: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """(rows, k) probability of each shown item given the items above it (what the draw used)."""
    w = _weights(logits)
    chosen = np.take_along_axis(w, shown, axis=1)
    rest = w.copy()
    np.put_along_axis(rest, shown, 0.0, axis=1)
    # What is left before each slot, summed rather than 1 - taken: exact when the shown items are light.
    left = rest.sum(axis=1, keepdims=True) + np.cumsum(chosen[:, ::-1], axis=1)[:, ::-1]
    return chosen / np.maximum(left, 1e-300)


def _times_arrival(a: np.ndarray, stay: np.ndarray, arrive: np.ndarray, out: np.ndarray) -> None:
    """out = a(x) * (stay + arrive x), truncated, with the degree as the first axis: a (k, rows, nodes), stay
    = e^{-w t} (the item has not arrived by t) and arrive = 1 - stay (rows, nodes)."""
    np.multiply(a, stay, out=out)
    out[1:] += a[:-1] * arrive


def _grid(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row nodes t (rows, nodes) on an even grid in log t, and the step: from _T_LOW to where the
    k-th heaviest other item has surely arrived (or, with fewer items than slots, the lightest one)."""
    ranked = -np.sort(-w, axis=1)
    lightest = np.where(w > 0, w, np.inf).min(axis=1)
    kth = ranked[:, k] if w.shape[1] > k else np.zeros(len(w))
    s_hi = np.log(_TAIL / np.where(kth > 0, kth, lightest))
    nodes = max(int(np.ceil((s_hi.max() - np.log(_T_LOW)) / _STEP)) + 1, 8)
    s = np.linspace(np.log(_T_LOW), s_hi, nodes, axis=1)
    return np.exp(s), s[:, 1] - s[:, 0]


def marginals(logits: np.ndarray, k: int) -> np.ndarray:
    """(rows, items, k): P(item at slot s) for s = 1..k under PL(softmax(logits)), to ~1e-9 absolute.

    Works for any weights (flat or nearly deterministic); meant for candidate sets (tens to hundreds
    of items): cost O(items * k^2 * nodes) per row."""
    w = _weights(logits)
    out = np.empty((*w.shape, k))
    m = w.shape[1]
    # Working arrays of ~4 MB: they stay in the allocator's heap, where 64 MB ones were mapped and page-faulted
    # anew every chunk (3-5x slower here).
    rows = max(1, int(5e5 // (m * k * 128)))
    for lo in range(0, len(w), rows):
        wc = w[lo : lo + rows]
        t, h = _grid(wc, k)
        stay = np.exp(-wc.T[:, :, None] * t[None])  # (m, rows, nodes)
        arrive = 1.0 - stay
        # Leave-one-out products by prefix and suffix (no division: stable when an item surely arrived), the
        # polynomial degree first so that every step works on whole (rows, nodes) planes.
        prefix = np.zeros((m + 1, k, *t.shape))
        prefix[0, 0] = 1.0
        suffix = np.zeros_like(prefix)
        suffix[m, 0] = 1.0
        for j, i in zip(range(m), range(m - 1, -1, -1), strict=True):
            _times_arrival(prefix[j], stay[j], arrive[j], out=prefix[j + 1])
            _times_arrival(suffix[i + 1], stay[i], arrive[i], out=suffix[i])
        # P(exactly d others arrived) is the product of item i's prefix and suffix polynomials: its coefficient
        # d collects prefix e times suffix d - e, integrated against item i's arrival density.
        density = wc.T[:, :, None] * stay * (h[:, None] * t)[None]  # (m, rows, nodes)
        slots = np.zeros((k, m, len(wc)))
        for e in range(k):
            weighted = prefix[:m, e] * density
            for f in range(k - e):
                slots[e + f] += np.einsum("irn,irn->ir", weighted, suffix[1:, f])
        out[lo : lo + rows] = slots.transpose(2, 1, 0)
    return out


_LAGUERRE_NODES = 24
_ARRIVED = 42.0  # w t beyond this: the item has arrived but for e^-42 (6e-19)
_POISSON = 1e-6  # w t below this: its factor is exp(w t (x - 1)) but for (w t)^2 / 2 (5e-13)
# Laguerre nodes need this much weight outside the 2k heaviest items: with less, the integrand decays slower than
# the Laguerre weight e^-t and reaches past its nodes (the trapezoid grid then).
_LAGUERRE_TAIL_MASS = 0.4


def marginals_of_shown(logits: np.ndarray, shown: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """(rows, k): P(shown[r, s] at slot s+1), for the items a PL draw showed, to ~1e-9 absolute.

    Rows with enough weight outside their 2k heaviest items integrate on Gauss-Laguerre nodes, the others on
    the trapezoid grid of `marginals`; either way `_shown_exact` multiplies every item out (O(items * k * nodes)
    a row), compiled: vectorised, this work is mostly numpy's per-call overhead (docs/design/off-policy.md)."""
    out = np.empty(shown.shape)
    exact = compiled()
    for lo in range(0, len(shown), chunk):
        w = _weights(logits[lo : lo + chunk])
        s = shown[lo : lo + chunk].astype(np.int64)
        k = s.shape[1]
        heaviest = -np.partition(-w, 2 * k - 1, axis=1)[:, : 2 * k] if w.shape[1] > 2 * k else w
        laguerre = 1.0 - heaviest.sum(axis=1) >= _LAGUERRE_TAIL_MASS
        part = np.empty(s.shape)
        if laguerre.any():
            nodes, weight = _laguerre()
            t = np.tile(nodes, (int(laguerre.sum()), 1))  # one array type for both grids: one compiled kernel
            part[laguerre] = exact(w[laguerre], s[laguerre], t, np.tile(weight, (len(t), 1)))
        if not laguerre.all():
            w_t, s_t = w[~laguerre], s[~laguerre]
            t, h = _grid(w_t, k)
            part[~laguerre] = exact(w_t, s_t, t, h[:, None] * t)
        out[lo : lo + chunk] = part
    return out


def _shown_exact(w: np.ndarray, shown: np.ndarray, t: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """`marginals_of_shown` for rows (w, shown) on nodes t with quadrature weights quad (rows, nodes):
    at each node, the items not shown multiplied out into a polynomial of degree < k, then each shown item's
    leave-one-out product from prefix and suffix products over the shown items (no division). Loops, for
    numba (`compiled`)."""
    rows, m = w.shape
    k = shown.shape[1]
    out = np.zeros((rows, k))
    is_shown = np.zeros(m, dtype=np.bool_)
    rest = np.empty(k)
    prefix = np.empty((k + 1, k))
    suffix = np.empty((k + 1, k))
    stay = np.empty(k)
    arrive = np.empty(k)
    for r in range(rows):
        is_shown[:] = False
        for i in range(k):
            is_shown[shown[r, i]] = True
        for n in range(t.shape[1]):
            tn = t[r, n]
            rest[:] = 0.0
            rest[0] = 1.0
            # Items far from their arrival need no multiplication: those surely arrived (w t > _ARRIVED) shift the
            # polynomial by one degree each, those barely started (w t < _POISSON) enter together as a Poisson factor.
            arrived = 0
            light = 0.0
            for j in range(m):
                if is_shown[j] or w[r, j] <= 0.0:
                    continue
                x = w[r, j] * tn
                if x > _ARRIVED:
                    arrived += 1
                    continue
                if x < _POISSON:
                    light += x
                    continue
                s = np.exp(-x)
                a = -np.expm1(-x)
                for d in range(k - 1, 0, -1):
                    rest[d] = rest[d] * s + rest[d - 1] * a
                rest[0] *= s
            if arrived >= k:  # k others surely arrived before any shown item: nothing to add at this node
                continue
            if light > 0.0:  # times exp(light (x - 1)): coefficients e^-light light^d / d!
                poisson = np.exp(-light)
                for d in range(k - 1, -1, -1):
                    c = 0.0
                    term = poisson
                    for e in range(d + 1):
                        c += rest[d - e] * term
                        term *= light / (e + 1)
                    rest[d] = c
            if arrived > 0:
                for d in range(k - 1, -1, -1):
                    rest[d] = rest[d - arrived] if d >= arrived else 0.0
            for i in range(k):
                stay[i] = np.exp(-w[r, shown[r, i]] * tn)
                arrive[i] = -np.expm1(-w[r, shown[r, i]] * tn)
            # prefix[i]: rest times the shown items above slot i + 1; suffix[i]: the shown items from slot i + 1 down.
            prefix[0, :] = rest
            suffix[k, :] = 0.0
            suffix[k, 0] = 1.0
            for i in range(k):
                b = k - 1 - i
                for d in range(k - 1, 0, -1):
                    prefix[i + 1, d] = prefix[i, d] * stay[i] + prefix[i, d - 1] * arrive[i]
                    suffix[b, d] = suffix[b + 1, d] * stay[b] + suffix[b + 1, d - 1] * arrive[b]
                prefix[i + 1, 0] = prefix[i, 0] * stay[i]
                suffix[b, 0] = suffix[b + 1, 0] * stay[b]
            for i in range(k):  # shown item i, at slot i + 1: exactly i others arrived before it
                c = 0.0
                for e in range(i + 1):
                    c += prefix[i, e] * suffix[i + 1, i - e]
                out[r, i] += quad[r, n] * w[r, shown[r, i]] * stay[i] * c
    return out


@cache
def compiled() -> Callable[..., np.ndarray]:
    """`_shown_exact` compiled by numba on first use (kept on disk in __pycache__, so a restart loads it)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_shown_exact)


def warm_up() -> None:
    """Compile the kernel, or load it from disk, now: the first served list must not wait seconds for it."""
    marginals_of_shown(np.zeros((1, 2)), np.array([[0, 1]]))


@cache
def _laguerre() -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Laguerre nodes and weights times e^t (the integrands carry their own decay)."""
    t, weight = np.polynomial.laguerre.laggauss(_LAGUERRE_NODES)
    return t, weight * np.exp(t)


# ---------------------------------------------------------------------------------------------------
# The serving policy: PL at a temperature, mixed with uniformly random lists (exploration).


def serving_marginals(logits: np.ndarray, slots: int, temperature: float, epsilon: float) -> np.ndarray:
    """(n, m, slots): P(candidate at slot) when a share epsilon of lists is uniformly random and the rest
    a PL draw from softmax(logits / temperature)."""
    m = logits.shape[1]
    pl = marginals(logits / temperature, min(slots, m))
    if slots > m:  # more slots than candidates: the lower slots stay empty
        pl = np.concatenate([pl, np.zeros((*pl.shape[:2], slots - m))], axis=2)
    uniform = np.where(np.arange(slots) < m, 1.0 / m, 0.0)
    return (1 - epsilon) * pl + epsilon * uniform[None, None, :]


def _uniform_prefix(m: int, k: int) -> np.ndarray:
    """P(a given ordered prefix of length s) for s = 0..k under a uniformly random ranking of m items."""
    return np.concatenate([[1.0], np.cumprod(1.0 / (m - np.arange(k)))])


def _mixture(shown_pl_prefix: np.ndarray, m: int, epsilon: float) -> np.ndarray:
    """Sequential conditionals of the epsilon mixture from its PL part's prefix probabilities (length k+1)."""
    prefix = (1 - epsilon) * shown_pl_prefix + epsilon * _uniform_prefix(m, len(shown_pl_prefix) - 1)
    return prefix[1:] / prefix[:-1]


def draw(
    logits: np.ndarray, k: int, temperature: float, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One list from the serving policy over a request's m candidates (logits of shape (m,)).

    Returns the shown candidates' indices (slot 1 first), each one's marginal probability of being at its
    slot (the contract's `propensity`), and its probability given the items above it (the mixture's
    sequential conditional)."""
    m = len(logits)
    k = min(k, m)
    z = np.asarray(logits, dtype=np.float64)[None, :] / temperature
    shown = rng.permutation(m)[:k][None, :] if rng.random() < epsilon else sample(z, k, rng)
    marginal = (1 - epsilon) * marginals_of_shown(z, shown)[0] + epsilon / m
    pl_prefix = np.concatenate([[1.0], np.cumprod(sequential(z, shown)[0])])
    return shown[0], marginal, _mixture(pl_prefix, m, epsilon)


# Team-draft interleaving (Radlinski, Kurup, Joachims 2008) of two deterministic rankings: in every round
# a coin decides which team picks first, each picks its best item not yet shown. With the rankings fixed,
# the coins are the only randomness, so enumerating them gives exact propensities.
MAX_INTERLEAVED = 16  # 2^(k/2) coin paths: 256 at 16 slots


def _team_draft_paths(a: np.ndarray, b: np.ndarray, k: int) -> list[tuple[float, list[int], list[int]]]:
    """Every coin path: (probability, list of item indices, team of each slot: 0 = a, 1 = b)."""
    paths = []

    def step(shown: list[int], teams: list[int], p: float) -> None:
        if len(shown) == k:
            paths.append((p, shown, teams))
            return
        count_a = teams.count(0)
        count_b = len(teams) - count_a
        firsts = [0] if count_a < count_b else [1] if count_b < count_a else [0, 1]
        for team in firsts:
            ranking = a if team == 0 else b
            pick = next(int(i) for i in ranking if int(i) not in shown)
            step([*shown, pick], [*teams, team], p / len(firsts))

    step([], [], 1.0)
    return paths


def team_draft(
    a: np.ndarray, b: np.ndarray, k: int, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An interleaved list of rankings a and b (candidate indices, best first, each a full ranking of the
    m candidates); with probability epsilon a uniformly random list instead.

    Returns shown indices, each slot's team (0: a, 1: b, -1: the random list), the marginal probability of
    each shown item at its slot and its sequential conditional, both exact, under the whole policy."""
    m = len(a)
    k = min(k, m)
    if k > MAX_INTERLEAVED:
        raise ValueError(f"team-draft interleaving takes at most {MAX_INTERLEAVED} slots, got {k}")
    paths = _team_draft_paths(np.asarray(a), np.asarray(b), k)
    if rng.random() < epsilon:
        shown, teams = rng.permutation(m)[:k].tolist(), [-1] * k
    else:
        choice = rng.choice(len(paths), p=[p for p, _, _ in paths])
        shown, teams = paths[choice][1], paths[choice][2]
    at_slot = np.zeros(k)
    prefix = np.zeros(k + 1)
    prefix[0] = 1.0
    for p, items, _ in paths:
        for s in range(k):
            if items[s] == shown[s]:
                at_slot[s] += p
        agree = next((s for s in range(k) if items[s] != shown[s]), k)
        prefix[1 : agree + 1] += p
    marginal = (1 - epsilon) * at_slot + epsilon / m
    return np.asarray(shown), np.asarray(teams), marginal, _mixture(prefix, m, epsilon)
