"""Great Expectations gates: a clean training set passes, a corrupted one is blocked with a report that
names the failing column, and drift against the reference is caught per feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flywheel.settings import load_settings
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
            "event_timestamp": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(np.arange(n), unit="s"),
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
    drifted = {c.column for c in report.critical_failures if c.suite == "drift"}
    assert {"item_ctr_24h", "user_impressions_24h", "item_category"} <= drifted
    assert "user_ctr_24h" not in drifted
