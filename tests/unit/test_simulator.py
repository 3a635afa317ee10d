from __future__ import annotations

import hashlib
from collections import Counter
from datetime import timedelta

import numpy as np
import orjson
import pytest

from flywheel.events.schema import parse
from flywheel.events.simulator import MALFORMED_KINDS, Faults, SimConfig, simulate

pytestmark = pytest.mark.slow  # simulates ~100k events: `make test-unit` skips it

FAULTS = Faults(out_of_order_rate=0.05, late_rate=0.02, duplicate_rate=0.03, malformed_rate=0.01)


def _digest(out) -> str:
    return hashlib.sha256(b"\n".join(out.values)).hexdigest()


@pytest.fixture(scope="module")
def faulty():
    return simulate(SimConfig(events=60_000, users=3_000, items=500, faults=FAULTS))


def test_same_seed_same_bytes_other_seed_other_bytes():
    cfg = SimConfig(events=5_000, users=500, items=200, faults=FAULTS)
    assert _digest(simulate(cfg)) == _digest(simulate(cfg))
    assert _digest(simulate(cfg.model_copy(update={"seed": 8}))) != _digest(simulate(cfg))


def test_exact_record_count_and_arrival_order(faulty):
    assert len(faulty.values) == 60_000 == faulty.stats.records
    assert np.all(np.diff(faulty.arrival_ms) >= 0)


def test_faults_present_at_the_requested_rates(faulty):
    s = faulty.stats
    decoded = [parse(v) for v in faulty.values]
    valid = [e for e, r in decoded if r is None]
    rejected = [r for _, r in decoded if r is not None]
    # Malformed records: exactly the injected ones fail the contract, every kind represented.
    assert len(rejected) == s.malformed
    assert s.malformed / s.records == pytest.approx(FAULTS.malformed_rate, rel=0.15)
    assert set(s.malformed_kinds) == set(MALFORMED_KINDS)
    # Duplicates: same event_id seen twice.
    ids = Counter(e["event_id"] for e in valid)
    assert sum(n - 1 for n in ids.values()) == s.duplicates
    assert s.duplicates / s.valid == pytest.approx(FAULTS.duplicate_rate, rel=0.05)
    # Lateness measured from the records themselves: arrival delay beyond the lateness bound.
    delay_s = np.array([(e["ingest_time"] - e["event_time"]) / 1000 for e in valid])
    late = int((delay_s >= FAULTS.late_min_s).sum())
    assert late >= s.late  # duplicates of late events are late too
    assert s.late / s.valid == pytest.approx(FAULTS.late_rate, rel=0.15)
    ooo = int(((delay_s >= 1.0) & (delay_s <= FAULTS.out_of_order_max_s)).sum())
    assert ooo / s.valid == pytest.approx(FAULTS.out_of_order_rate, rel=0.15)


def test_logged_propensities_are_probabilities_and_positions_in_range(faulty):
    valid = [e for e, r in map(parse, faulty.values) if r is None]
    props = np.array([e["propensity"] for e in valid])
    assert np.all((props > 0) & (props <= 1))
    assert {e["position"] for e in valid} == set(range(1, 11))
    types = Counter(e["event_type"] for e in valid)
    assert 0.005 < types["click"] / types["impression"] < 0.2 and types["purchase"] > 0


def test_position_bias_lowers_clicks_further_down():
    out = simulate(SimConfig(events=80_000, users=2_000, items=300))
    valid = [orjson.loads(v) for v in out.values]
    imps = Counter(e["position"] for e in valid if e["event_type"] == "impression")
    clicks = Counter(e["position"] for e in valid if e["event_type"] == "click")
    assert clicks[1] / imps[1] > 2 * clicks[10] / imps[10]


def test_corrupted_week_only_inside_that_week():
    base = SimConfig(events=40_000, users=2_000, items=300, days=14)
    start = base.start + timedelta(days=7)
    out = simulate(base.model_copy(update={"faults": Faults(corrupt_week_start=start)}))
    evs = [orjson.loads(v) for v in out.values]
    bad = [e for e in evs if e["item_category"] is None]
    assert len(bad) == out.stats.corrupted > 0
    t0 = int(start.timestamp() * 1000)
    assert all(t0 <= e["event_time"] < t0 + 7 * 86_400_000 for e in bad)
    assert all(e["propensity"] == 1.0 and e["position"] > 50 for e in bad)


def test_drift_breaks_the_logging_policy_fit():
    """After the drift, users' tastes move away from what the (unchanged) logging policy believes,
    so the click-through rate of what it shows drops; without drift it stays put."""
    base = SimConfig(events=120_000, users=1_000, items=300, days=14, seed=3)
    drift_at = base.start + timedelta(days=7)
    t = int(drift_at.timestamp() * 1000)

    def ctr(out, after: bool) -> float:
        kinds = Counter(e["event_type"] for e in map(orjson.loads, out.values) if (e["event_time"] >= t) == after)
        return kinds["click"] / kinds["impression"]

    still = simulate(base)
    drifted = simulate(base.model_copy(update={"faults": Faults(drift_at=drift_at)}))
    assert drifted.stats.drifted > 0 and still.stats.drifted == 0
    assert ctr(still, True) == pytest.approx(ctr(still, False), rel=0.1)
    assert ctr(drifted, True) < 0.8 * ctr(drifted, False)


def test_a_transient_drift_ends():
    """With drift_until, tastes return: the logging policy fits again after it (the rollback scenario)."""
    base = SimConfig(events=120_000, users=1_000, items=300, days=15, seed=3)
    a, b = base.start + timedelta(days=5), base.start + timedelta(days=10)
    ta, tb = (int(x.timestamp() * 1000) for x in (a, b))
    out = simulate(base.model_copy(update={"faults": Faults(drift_at=a, drift_until=b)}))
    kinds: dict[int, Counter] = {0: Counter(), 1: Counter(), 2: Counter()}
    for e in map(orjson.loads, out.values):
        kinds[(e["event_time"] >= ta) + (e["event_time"] >= tb)][e["event_type"]] += 1
    before, during, after = (k["click"] / k["impression"] for k in kinds.values())
    assert during < 0.8 * before and during < 0.8 * after
    assert after == pytest.approx(before, rel=0.15)


def test_a_layout_change_flattens_position_bias_while_it_lasts():
    base = SimConfig(events=80_000, users=500, items=200, days=6, seed=4)
    a, b = base.start + timedelta(days=2), base.start + timedelta(days=4)
    ta, tb = (int(x.timestamp() * 1000) for x in (a, b))
    out = simulate(base.model_copy(update={"faults": Faults(drift_at=a, drift_until=b, drift_kind="layout")}))
    n: dict[tuple[bool, bool, str], int] = Counter()
    for e in map(orjson.loads, out.values):
        if e["position"] in (1, 8, 9, 10):
            n[(ta <= e["event_time"] < tb, e["position"] == 1, e["event_type"])] += 1

    def low_vs_top(during: bool) -> float:
        def ctr(top: bool) -> float:
            return n[(during, top, "click")] / n[(during, top, "impression")]

        return ctr(False) / ctr(True)

    assert low_vs_top(True) > 2 * low_vs_top(False)


def _impressions(out) -> dict[str, np.ndarray]:
    """Per impression: slot, logged propensities (marginal and sequential), clicked, request."""
    events = [orjson.loads(v) for v in out.values]
    clicked = {(e["request_id"], e["position"]) for e in events if e["event_type"] == "click"}
    imps = [e for e in events if e["event_type"] == "impression"]
    return {
        "slot": np.array([e["position"] for e in imps]),
        "marginal": np.array([e["propensity"] for e in imps]),
        "sequential": np.array([e["context"]["sequential_propensity"] for e in imps]),
        "click": np.array([(e["request_id"], e["position"]) in clicked for e in imps], dtype=float),
        "request": np.unique([e["request_id"] for e in imps], return_inverse=True)[1],
    }


# A fixed catalog (no new items), so every request's logging policy has exactly ITEMS items to choose from.
ITEMS = 100
WORLD = SimConfig(events=60_000, users=500, items=ITEMS, categories=6, new_items_per_day=0, days=2,
                  policy_temperature=2.0)  # fmt: skip


def test_logged_propensity_is_the_per_slot_marginal():
    """E[1/p] over the rows logged at a slot is the number of items the policy could put there, at every
    slot; the sequential conditional (which the simulator used to log) falls short below slot 1."""
    imps = _impressions(simulate(WORLD))
    for slot in range(1, 11):
        at = imps["slot"] == slot
        inv = 1 / imps["marginal"][at]
        assert abs(inv.mean() - ITEMS) < 4 * inv.std() / np.sqrt(at.sum()), slot
    inv_seq = 1 / imps["sequential"][imps["slot"] == 10]
    assert inv_seq.mean() < ITEMS - 6 * inv_seq.std() / np.sqrt(len(inv_seq))


def test_ips_of_a_uniform_policy_is_unbiased_across_seeds():
    """IPS of 'show a uniformly random list' from the PL-logged world equals the click rate measured by
    running that uniform policy in the same world (on-policy truth), within the CI, on three seeds."""
    for seed in (1, 2, 3):
        world = WORLD.model_copy(update={"seed": seed})
        logged = _impressions(simulate(world))
        truth = _impressions(simulate(world.model_copy(update={"events": 200_000, "policy_temperature": 1e6})))
        x = logged["click"] / (ITEMS * logged["marginal"])  # the uniform policy puts any item at a slot w.p. 1/ITEMS
        per_request = np.bincount(logged["request"], x) / np.bincount(logged["request"])  # rows of a list correlate
        se = np.hypot(
            per_request.std() / np.sqrt(len(per_request)), truth["click"].std() / np.sqrt(len(truth["click"]))
        )
        assert abs(x.mean() - truth["click"].mean()) < 3 * se, (seed, x.mean(), truth["click"].mean(), se)
