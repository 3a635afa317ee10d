"""Great Expectations gates: a clean training set passes, a corrupted one is blocked with a report that
names the failing column, drift against the reference is caught per feature, GE computes the statistics
the calibration assumes, and the drift checks have their measured power and false-alarm rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import drift as harness
from flywheel.settings import load_settings
from validation import drift
from validation.suites import validate

pytestmark = pytest.mark.slow  # runs Great Expectations: `make test-unit` skips it

FEATURES = ["user_impressions_24h", "user_ctr_24h", "item_ctr_24h"]


def frame(n: int = 4000, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    imps = rng.poisson(20 + shift * 200, n).astype("int64")
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "request_id": [f"r{i // 5}" for i in range(n)],
            "user_id": rng.integers(0, 300, n).astype(str),
            "item_id": rng.integers(0, 50, n).astype(str),
            "item_category": rng.choice(list("abcd"), n, p=[0.4, 0.3, 0.2, 0.1] if not shift else [0.1, 0.1, 0.1, 0.7]),
            "position": rng.integers(1, 6, n),
            "propensity": rng.uniform(0.05, 1.0, n),
            "event_timestamp": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(np.arange(n) * 150, unit="s"),
            "label_click": (rng.random(n) < 0.05).astype("int64"),
            "user_impressions_24h": imps,
            "user_ctr_24h": rng.beta(1, 20, n),
            "item_ctr_24h": rng.beta(1, 20, n) + shift,
        }
    )


@pytest.fixture
def cfg(tmp_path):
    return load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path)})


def test_clean_training_set_passes_and_builds_data_docs(cfg):
    report = validate(frame(), FEATURES, ["label_click"], cfg, reference=frame(seed=1), name="clean")
    assert report.passed, report.summary()
    assert {c.suite for c in report.checks} == {"quality", "drift"}
    assert report.data_docs and report.data_docs.endswith("index.html")


def test_corrupted_week_is_blocked_naming_the_column(cfg):
    bad = frame()
    bad.loc[: len(bad) * 0.95, "user_ctr_24h"] = None  # a broken feature pipeline
    bad.loc[:10, "propensity"] = 0.0  # and a logging bug
    report = validate(bad, FEATURES, ["label_click"], cfg, reference=frame(seed=1), name="corrupted", docs=False)
    assert not report.passed
    failing = {(c.expectation, c.column) for c in report.critical_failures}
    assert ("expect_column_values_to_not_be_null", "user_ctr_24h") in failing
    assert ("expect_column_values_to_be_between", "propensity") in failing
    assert any("user_ctr_24h" in r for r in report.reasons())


def test_drift_is_caught_per_feature(cfg):
    report = validate(frame(seed=2, shift=0.5), FEATURES, ["label_click"], cfg, reference=frame(seed=1),
                      name="drifted", docs=False)  # fmt: skip
    drifted = {c.column for c in report.failures if c.suite == "drift"}
    assert {"item_ctr_24h", "user_impressions_24h", "item_category"} <= drifted
    assert "user_ctr_24h" not in drifted
    # Shifts are reported, not blocking (retraining is for them); a feature going missing blocks.
    assert report.passed and not report.critical_failures
    gone = frame(seed=2).assign(user_ctr_24h=lambda d: d.user_ctr_24h.where(np.arange(len(d)) % 4 == 0))
    report = validate(gone, FEATURES, ["label_click"], cfg, reference=frame(seed=1), name="gone", docs=False)
    assert {(c.expectation, c.column) for c in report.critical_failures} == {
        ("expect_column_values_to_not_be_null", "user_ctr_24h")
    }


def test_great_expectations_reports_the_statistics_the_calibration_computes(cfg):
    """The thresholds are calibrated on drift.observed's statistics; GE must evaluate exactly those."""
    rng = np.random.default_rng(4)
    reference, current = harness.week(6000, rng), harness.week(6000, rng, shift_sd=0.1, category_pp=0.02)
    features = harness.FEATURES[:8] + ["popularity_trend"]
    cats = ["item_category", "position"]
    logged = current.assign(event_id="e", request_id="r", user_id="u", item_id="i", propensity=0.5, label_click=0)
    report = validate(logged, features, ["label_click"], cfg, reference, name="same", docs=False)
    bounds, _ = drift.calibrate(reference, features, cats, len(current), cfg.validation.drift)
    ge = {(c.expectation, c.column): c.observed for c in report.checks if c.suite == "drift"}
    compared = 0
    for b in bounds:
        if b.kind in ("kl", "category"):
            assert ge[("expect_column_kl_divergence_to_be_less_than", b.column)] == pytest.approx(
                drift.observed(current, b), rel=1e-9, abs=1e-12), b.column  # fmt: skip
            compared += 1
        elif b.kind == "mean":
            mean = ge[("expect_column_mean_to_be_between", b.column)]
            assert abs(mean - b.reference) == pytest.approx(drift.observed(current, b), rel=1e-9, abs=1e-12)
            compared += 1
    assert compared == 2 * len(features) + len(cats)


def test_drift_checks_have_power_and_few_false_alarms(cfg):
    """A smaller run of `make bench`'s harness: 12 week pairs of 20k rows per case."""
    rates = {change: harness.alarm_rate(cfg, change, 12, 20_000, seed=i)[0] for i, change in enumerate(harness.CHANGES)}
    assert rates["stationary"] <= 1 / 12, rates
    assert all(rates[c] == 1.0 for c in ("mean_shift_025sd", "category_10pp", "null_5pp")), rates


def test_calibration_survives_a_feature_that_some_splits_leave_without_values(cfg):
    """A sparse feature with values in a few time blocks only: a half-split may leave one half without any,
    where its mean shift is undefined. Those splits skip that check instead of breaking the calibration,
    and the check still gets a threshold from the splits where it is defined."""
    reference = frame(4000, seed=3)
    sparse = np.full(len(reference), np.nan)
    sparse[:40] = np.linspace(0.0, 1.0, 40)  # the first 100 minutes only: one 4-hour block of 42
    reference["user_ctr_1h"] = sparse
    bounds, info = drift.calibrate(reference, [*FEATURES, "user_ctr_1h"], ["item_category"], 4000,
                                   cfg.validation.drift)  # fmt: skip
    assert info["resamples"] == cfg.validation.drift.resamples and np.isfinite(info["tau"])
    mean = [b for b in bounds if b.kind == "mean" and b.column == "user_ctr_1h"]
    assert len(mean) == 1 and np.isfinite(mean[0].threshold) and mean[0].threshold > 0
