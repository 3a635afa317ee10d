"""The Open Bandit conversion, checked against the CSVs read independently (csv module, not pandas)."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from flywheel.events import obd
from flywheel.events.schema import validate
from flywheel.settings import load_settings


@pytest.fixture(scope="module")
def root():
    cfg = load_settings()
    return obd.fetch(cfg.obd, cfg.build_dir)


def _csv_counts(path):
    rows = clicks = 0
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            rows += 1
            clicks += int(rec["click"])
    return rows, clicks


@pytest.mark.parametrize(("policy", "campaign"), [("random", "all"), ("bts", "all"), ("bts", "men")])
def test_counts_equal_the_csv(root, policy, campaign):
    rows, clicks = _csv_counts(obd.csv_path(root, policy, campaign))
    events, counts = obd.build(root, [(policy, campaign)])
    by_type = Counter(e["event_type"] for e in events)
    assert by_type == {"impression": rows, "click": clicks}
    assert (counts[0].rows, counts[0].clicks, counts[0].events) == (rows, clicks, rows + clicks)


def test_events_honour_the_contract_and_order(root):
    events, _ = obd.build(root, [("random", "all"), ("bts", "all")])
    assert len({e["event_id"] for e in events}) == len(events)
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    for e in events[:2000]:
        assert validate(e | {"ingest_time": e["event_time"]}) is None
    imps = {e["request_id"]: e for e in events if e["event_type"] == "impression"}
    for c in (e for e in events if e["event_type"] == "click"):
        assert c["event_time"] > imps[c["request_id"]]["event_time"]
        assert c["user_id"] == imps[c["request_id"]]["user_id"]


def test_user_key_is_stable_and_feature_derived():
    a = obd.user_key(["a", "b", "c", "d"])
    assert a == obd.user_key(["a", "b", "c", "d"]) and a != obd.user_key(["a", "b", "c", "e"])
    assert a.startswith("obd-u-") and len(a) == 22


def test_pacing_compresses_event_time_by_the_speedup():
    now = [1000.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    events = [{"event_time": t} for t in (0, 10_000, 20_000)]  # 20 s of event time
    out = list(obd.paced(events, speedup=10.0, clock=lambda: now[0], sleep=sleep))
    assert sum(slept) == pytest.approx(2.0)
    assert [e["ingest_time"] for e in out] == [1_000_000, 1_001_000, 1_002_000]
