"""Versioned feature services: what a model version was trained and served with. Never edit a
published version; add ranker_v2 instead."""

from feast import FeatureService

from feature_repo.feature_views import VIEWS, item_trend, user_recency

ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[
        VIEWS["user_stats_1h"],
        VIEWS["user_stats_24h"],
        VIEWS["user_stats_7d"],
        VIEWS["item_stats_1h"],
        VIEWS["item_stats_24h"],
        VIEWS["item_stats_7d"],
        VIEWS["user_category_stats_7d"],
        user_recency,
        item_trend,
    ],
    description="Features of the first DLRM-style ranker.",
    tags={"version": "1"},
)
