"""The feature spec's typed aggregations: what SQL they render over events and over running sums, which event
columns a sliding group must sum, and a clear error for an aggregation a sliding window cannot compute."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feature_repo.spec import GROUPS, Count, Feature, FeatureGroup, Last, Ratio, Sum, Window
from flink_jobs.features import group_views


def test_aggregations_render_flink_sql():
    assert Count("click").expr() == "SUM(is_click)"
    assert Sum("exam").expr() == "SUM(exam)"
    assert Ratio(Count("click"), Sum("exam")).expr() == "CAST(SUM(is_click) AS DOUBLE) / NULLIF(SUM(exam), 0)"
    assert Last("event_time").expr() == "MAX(event_time)"
    running = Ratio(Count("click"), Count("impression")).expr(lambda c: f"r_{c}")
    assert running == "CAST(r_is_click AS DOUBLE) / NULLIF(r_is_impression, 0)"


def test_a_sliding_group_sums_each_column_once_in_order():
    user_1h = next(g for g in GROUPS if g.name == "user_stats_1h")
    assert user_1h.summed_columns == ["is_impression", "is_click", "is_purchase", "exam"]
    (view,) = group_views(user_1h)
    assert view.name == "g_user_stats_1h" and view.rowtime is None
    assert "NULLIF((CAST(exam AS DOUBLE) / 100000000000), 0) AS DOUBLE) AS user_debiased_ctr_1h" in view.query


def test_a_sliding_window_refuses_an_aggregation_that_is_not_a_sum():
    g = FeatureGroup(
        "bad", ("user_id",), Window(timedelta(hours=1), timedelta(minutes=5)),
        (Feature("last_seen", "timestamp", Last("event_time")),), "not computable from sums",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.last_seen: Last\('event_time'\) is not a sum: use a tumbling window"):
        _ = g.summed_columns


def test_every_feature_is_typed_and_named_once():
    names = [f.name for g in GROUPS for f in g.features]
    assert len(names) == len(set(names))
    assert all(isinstance(f.agg, Sum | Ratio | Last) for g in GROUPS for f in g.features)
