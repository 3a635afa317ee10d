"""A feature job that cannot work fails before it starts, with the fix in the message, instead of being
restarted by Flink forever."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from flink_jobs import features
from flywheel.errors import FlywheelError
from flywheel.settings import REPO_ROOT, load_settings

pytestmark = pytest.mark.slow  # imports Feast, starts PyFlink's JVM


def test_an_empty_feast_registry_stops_the_job_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path))  # a registry nobody applied
    monkeypatch.setenv("FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")  # reached only after the check
    cfg = load_settings()
    t0 = time.monotonic()
    missing = r"feature views \[.*user_stats_1h.*\] are not in the Feast registry: run `flywheel features apply`"
    with pytest.raises(FlywheelError, match=missing):
        features.run(cfg, features.options(cfg, bounded=True))
    assert time.monotonic() - t0 < 60


def test_restarts_are_bounded_by_the_setting(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_FEATURES__RESTART_ATTEMPTS", "3")
    cfg = load_settings()
    _, t_env = features.environment(cfg, features.options(cfg, bounded=True))
    conf = t_env.get_config()
    assert conf.get("restart-strategy.type", None) == "exponential-delay"
    assert conf.get("restart-strategy.exponential-delay.attempts-before-reset-backoff", None) == "3"


def test_the_job_entry_point_exits_non_zero_with_the_fix(tmp_path):
    """What `flink run --python flink_jobs/features.py` runs (its client side), against an empty registry."""
    env = {**os.environ, "FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flink_jobs.features", "--bounded"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "are not in the Feast registry: run `flywheel features apply`" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60
