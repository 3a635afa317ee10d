"""Feature views, one per feature group in spec.py, plus on-demand features computed at request time."""

import pandas as pd
from feast import FeatureView, Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, UnixTimestamp

from feature_repo.data_sources import SOURCES
from feature_repo.entities import BY_JOIN_KEY
from feature_repo.spec import GROUPS, ttl

FEAST_TYPES = {"int64": Int64, "float64": Float64, "timestamp": UnixTimestamp}

VIEWS: dict[str, FeatureView] = {
    g.name: FeatureView(
        name=g.name,
        entities=[BY_JOIN_KEY[k] for k in g.entities],
        ttl=ttl(g),
        schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype]) for f in g.features],
        source=SOURCES[g.name],
        online=True,
        description=g.description,
        tags={"window": str(g.window.size), "slide": str(g.window.slide), "producer": "flink_jobs.features"},
    )
    for g in GROUPS
}

# `feast apply` discovers objects bound at module level, so bind each view to its own name.
globals().update(VIEWS)

request_context = RequestSource(name="request_context", schema=[Field(name="request_time", dtype=UnixTimestamp)])


@on_demand_feature_view(
    sources=[VIEWS["user_last_click"], request_context],
    schema=[Field(name="seconds_since_last_click", dtype=Float64)],
    mode="python",
)
def user_recency(inputs: dict[str, list]) -> dict[str, list]:
    """Seconds between the request and the user's last click (null if none within 7 days).

    Python mode, not pandas: the ranking service computes it for one user per request, where building a
    frame costs more than the arithmetic. Times come tz-aware (Feast's online path) or naive UTC (the
    training-set builder); Feast rebuilds this function from its source, hence the import inside."""
    from datetime import UTC

    def seconds(request, click):
        if request is None or click is None:
            return None
        if (request.tzinfo is None) != (click.tzinfo is None):  # naive times are UTC
            request, click = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (request, click))
        return (request - click).total_seconds()

    pairs = zip(inputs["request_time"], inputs["last_click_time"], strict=True)
    return {"seconds_since_last_click": [seconds(r, c) for r, c in pairs]}


@on_demand_feature_view(
    sources=[VIEWS["item_stats_1h"], VIEWS["item_stats_24h"]],
    schema=[Field(name="popularity_trend", dtype=Float64)],
    mode="pandas",
)
def item_trend(inputs: pd.DataFrame) -> pd.DataFrame:
    """Hourly impression rate of the last hour over that of the last day: > 1 means rising."""
    last_hour = inputs["item_impressions_1h"].astype("float64")
    hourly_day = inputs["item_impressions_24h"].astype("float64") / 24.0
    return pd.DataFrame({"popularity_trend": last_hour / hourly_day.where(hourly_day > 0)})
