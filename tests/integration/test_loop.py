"""The flywheel turning (flywheel.loop) on the real stack, in a state of its own: a bootstrap week through
Kafka and the feature job, the weekly retraining tasks, `flywheel serve` ranking a served week for the
world's users, and the weekly retraining again on what it served."""

from __future__ import annotations

from datetime import datetime

import pytest

from flywheel import loop
from flywheel.orchestration import tasks
from training import pipeline
from training.labels import connect, event_log_files

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # minutes: `make test-e2e`


def test_the_loop_serves_a_week_and_retrains_on_what_it_served(cfg, tmp_path, monkeypatch):
    # A world this small gives a weak first model (AUC about 0.53): the gate's AUC floor is lowered so the loop
    # has a champion to serve; the gate's own power is tested elsewhere (test_retraining_scenarios).
    monkeypatch.setenv("FLYWHEEL_TRAINING__GATE__MIN_AUC", "0.5")
    plan = loop.LoopPlan(weeks=1, requests_per_week=400, users=200, items=60, categories=6, candidates=20,
                         id_prefix="looptest-")  # fmt: skip
    start = datetime.fromisoformat(cfg.simulator.start.replace("Z", "+00:00"))
    with loop.own_state(cfg, tmp_path / "var") as own:
        result = loop.run(own, plan, tasks.retrain_here, start)
        week_start, week_end = start + loop.WEEK, start + 2 * loop.WEEK
        name = f"incremental_{week_start:%Y%m%dT%H%M}_{week_end:%Y%m%dT%H%M}"
        table, manifest = pipeline.read_trainset(own.trainset.output_dir / name)
        # What the event log held of the week up to the training set's last row (later rows of the week waited
        # for the watermark, which only a next week's events move).
        last = max(table.column("event_timestamp").to_pylist())
        served = (
            connect()
            .execute(
                "SELECT count(*) FROM read_parquet($f, union_by_name = true) WHERE source = 'service' "
                "AND event_type = 'impression' AND event_timestamp <= $last",
                {"f": event_log_files(own.offline_dir), "last": last},
            )
            .fetchall()[0][0]
        )

    bootstrap, week = result.weeks
    assert bootstrap.decision["decision"] == "promoted"  # the first model of this world
    first = bootstrap.decision["version"]
    assert week.served_by == {first: 400} and week.failed == 0  # the champion served every request
    # The world reacts to what was served: by its own truth the lists beat random lists of the same candidates.
    assert week.expected_ctr > week.random_ctr
    # Every event is accounted for, and the fast clock's stragglers were waited for.
    r = result.reconciled
    assert r["in"] == r["aggregated"] + r["duplicates"] + r["dead_lettered"] + r["late"] + r["pending"]
    assert r["dead_lettered"] == 0 and r["late"] == 0
    # The retrain at the week's end ran on the served impressions the feature job had logged, every one of them,
    # and decided (promoted, rejected or blocked: the decision is the gate's, on served traffic).
    assert manifest.rows == table.num_rows == served >= 0.6 * 400 * cfg.simulator.positions  # most of the week
    assert week.decision is not None and week.decision["decision"] in ("promoted", "rejected_by_metrics",
                                                                       "blocked_by_data")  # fmt: skip
    # The online report covers the served week with the world's truth.
    assert result.report["versions"][first]["lists"] == 400
    assert result.report["ctr_lift_vs_random"] == pytest.approx(week.lift)
