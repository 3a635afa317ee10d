"""Online evaluation against simulated traffic with a known answer: interval coverage with clicks correlated
within a list, the rollback rule's false-alarm rate and power, the interleaving sign test against SciPy,
the exposure Gini against its textbook definition, and click attribution from raw records."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from training import online


def _lists(rng: np.random.Generator, n: int, ctr: float, policy: str, k: int = 10, spread: float = 1.0) -> dict:
    """n lists of k slots; each list's click rate varies around `ctr` (a user who clicks, clicks more)."""
    per_list = rng.beta(spread, spread * (1 - ctr) / ctr, n)
    clicked = rng.random((n, k)) < per_list[:, None]
    return {
        "request_id": np.repeat(np.arange(n) + rng.integers(1 << 40) * 10_000, k).astype(str),
        "policy": np.full(n * k, policy),
        "clicked": clicked.ravel(),
    }


def _table(*parts: dict) -> pa.Table:
    cols = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}
    n = len(cols["request_id"])
    return pa.table({
        "request_id": pa.array(cols["request_id"].astype(str)),
        "policy": pa.array(cols["policy"].astype(str)),
        "clicked": pa.array(cols["clicked"].astype(bool)),
        "item_id": pa.array([f"i{j % 50}" for j in range(n)]),
        "event_time": pa.array(np.zeros(n, dtype=np.int64)),
        "policy_kind": pa.array(["champion"] * n),
        "team": pa.array([None] * n, pa.string()),
    })  # fmt: skip


def test_ctr_interval_covers_the_truth_with_clicks_correlated_in_a_list():
    rng = np.random.default_rng(1)
    truth, reps, covered, naive = 0.05, 400, 0, 0
    for _ in range(reps):
        t = _lists(rng, 400, truth, "v1", spread=0.3)
        rate = online.ctr(np.asarray(t["request_id"]), np.asarray(t["clicked"]))
        covered += rate.low <= truth <= rate.high
        binomial_se = np.sqrt(rate.value * (1 - rate.value) / rate.impressions)
        naive += abs(rate.value - truth) <= 1.96 * binomial_se
    assert 0.92 <= covered / reps <= 0.98
    assert naive / reps < 0.85  # intervals binomial over impressions would be far too narrow here


@pytest.mark.slow  # 400 simulated experiments
def test_online_rule_false_alarms_and_power():
    """Equal CTRs: it fires at most at the nominal 2.5% (one side of a 5% test); a champion 15% worse
    (0.05 vs 0.0425) over 3,000 lists per arm: it fires at least 90% of the time."""
    rng = np.random.default_rng(2)
    reps = 200
    alarms = sum(online.online_rule(_table(_lists(rng, 3000, 0.05, "v2"), _lists(rng, 3000, 0.05, "v1")),
                                    "v2", "v1", min_requests=1000).roll_back for _ in range(reps))  # fmt: skip
    hits = sum(online.online_rule(_table(_lists(rng, 3000, 0.0425, "v2"), _lists(rng, 3000, 0.05, "v1")),
                                  "v2", "v1", min_requests=1000).roll_back for _ in range(reps))  # fmt: skip
    assert alarms / reps <= 0.05, alarms
    assert hits / reps >= 0.9, hits
    few = online.online_rule(_table(_lists(rng, 100, 0.01, "v2"), _lists(rng, 100, 0.2, "v1")), "v2", "v1", 1000)
    assert not few.roll_back and "not enough online traffic" in few.reason


def test_sign_test_equals_scipys_binomial_test():
    from scipy.stats import binomtest

    for wins, losses in [(0, 0), (5, 5), (12, 3), (3, 12), (40, 61), (200, 150), (0, 9)]:
        want = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        assert online.sign_test(wins, losses) == pytest.approx(want, rel=1e-9)


def test_gini_equals_the_mean_absolute_difference_definition():
    rng = np.random.default_rng(3)
    for x in (np.ones(20), np.r_[np.zeros(9), 1.0], rng.pareto(1.5, 300)):
        mad = np.abs(x[:, None] - x[None, :]).mean()
        assert online.gini(x) == pytest.approx(mad / (2 * x.mean()), abs=1e-12)


def _interleaved(rng: np.random.Generator, n: int, p_champion: float, p_previous: float) -> pa.Table:
    rows = []
    for r in range(n):
        teams = ["v2", "v1"] * 3
        for slot, team in enumerate(teams):
            p = p_champion if team == "v2" else p_previous
            rows.append({"request_id": f"r{r}", "policy": "v2+v1", "policy_kind": "interleaved", "team": team,
                         "clicked": bool(rng.random() < p), "item_id": f"i{slot}", "event_time": 0})  # fmt: skip
    return pa.Table.from_pylist(rows)


def test_interleaving_finds_the_better_model_and_rarely_a_difference_that_is_not_there():
    rng = np.random.default_rng(4)
    better = online.interleaving(_interleaved(rng, 3000, 0.06, 0.04))["v2+v1"]
    assert better["preference"] > 0.55 and better["p_value"] < 1e-6
    worse = online.online_rule(_interleaved(rng, 3000, 0.04, 0.06), "v2", "v1", min_requests=1000)
    assert worse.roll_back and "interleaved" in worse.reason
    alarms = sum(online.online_rule(_interleaved(rng, 600, 0.05, 0.05), "v2", "v1", min_requests=1000).roll_back
                 for _ in range(100))  # fmt: skip
    assert alarms <= 6


def test_events_from_records_collapse_replays_and_credit_clicks_to_their_impression():
    def ev(eid, kind, item, **ctx):
        return orjson.dumps({"event_id": eid, "request_id": "r1", "user_id": "u1", "item_id": item,
                             "event_type": kind, "position": 1, "event_time": 1_700_000_000_000,
                             "context": ctx})  # fmt: skip

    records = [
        ev("r1-1-i", "impression", "a", policy="v1", policy_kind="champion"),
        ev("r1-2-i", "impression", "b", policy="v1", policy_kind="champion"),
        ev("r1-1-c", "click", "a", policy="v1"),
        ev("r1-1-c", "click", "a", policy="v1"),  # a replayed click
        b"not json",
    ]
    imps = online.served(online.events_table(records))
    assert imps.num_rows == 2 and imps["clicked"].to_pylist() == [True, False]
    (row,) = online.daily(imps, catalog_size=4)
    assert (row["impressions"], row["clicks"], row["coverage"]) == (2, 1, 0.5)
