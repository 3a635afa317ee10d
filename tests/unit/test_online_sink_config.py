"""The Redis sink's configuration comes from Feast's own configuration (connection string, cluster, TLS,
password, key TTL, project, serialization version) and the registry, and bad ones stop the build."""

from __future__ import annotations

import dataclasses
import json

import pytest

from feature_repo.spec import group
from flink_jobs import online_sink
from flywheel.errors import FlywheelError
from flywheel.settings import load_settings

pytestmark = pytest.mark.slow  # imports Feast


def _store(tmp_path, **online):
    """A store on a registry holding user_stats_1h, with the given Redis online store configuration (the
    registry is applied through a SQLite online store: nothing here may reach a Redis)."""
    from feast import FeatureStore, RepoConfig

    from feature_repo import entities, feature_views

    def config(online_store: dict) -> RepoConfig:
        return RepoConfig(
            project="flywheel",
            provider="local",
            registry=str(tmp_path / "registry.db"),
            online_store=online_store,
            offline_store={"type": "duckdb"},
            entity_key_serialization_version=3,
            repo_path=str(tmp_path),
        )

    tmp_path.mkdir(parents=True, exist_ok=True)
    local = config({"type": "sqlite", "path": str(tmp_path / "online.db")})
    FeatureStore(config=local).apply([entities.user, feature_views.VIEWS["user_stats_1h"]])
    return FeatureStore(config=config({"type": "redis", **online}))


def test_cluster_tls_password_and_ttl_come_from_feasts_configuration(tmp_path):
    store = _store(
        tmp_path,
        redis_type="redis_cluster",
        connection_string="r1.internal:7000,r2.internal:7001,password=s3cret,ssl=true",
        key_ttl_seconds=86400,
    )
    conf = json.loads(online_sink.sink_configs(load_settings(), store, (group("user_stats_1h"),))["user_stats_1h"])
    assert conf["redis"] == {
        "nodes": [["r1.internal", 7000], ["r2.internal", 7001]],
        "cluster": True,
        "ssl": True,
        "db": 0,
        "username": None,
        "password": "s3cret",
    }
    assert (conf["project"], conf["entity_key_serialization_version"], conf["key_ttl_seconds"]) == (
        "flywheel",
        3,
        86400,
    )
    assert conf["view"] == {
        "name": "user_stats_1h",
        "join_keys": ["user_id"],
        "features": [
            {"name": "user_impressions_1h", "type": "INT64"},
            {"name": "user_clicks_1h", "type": "INT64"},
            {"name": "user_purchases_1h", "type": "INT64"},
            {"name": "user_ctr_1h", "type": "DOUBLE"},
            {"name": "user_debiased_ctr_1h", "type": "DOUBLE"},
        ],
    }


def test_sentinel_and_unknown_parameters_are_refused_with_a_reason(tmp_path):
    sentinel = _store(tmp_path / "a", redis_type="redis_sentinel", connection_string="s1:26379")
    with pytest.raises(FlywheelError, match="redis_sentinel is not supported"):
        online_sink.sink_configs(load_settings(), sentinel, (group("user_stats_1h"),))
    odd = _store(tmp_path / "b", connection_string="r1:6379,health_check_interval=3")
    with pytest.raises(FlywheelError, match=r"\['health_check_interval'\] are not supported"):
        online_sink.sink_configs(load_settings(), odd, (group("user_stats_1h"),))


def test_views_missing_from_the_registry_or_with_other_types_stop_the_build(tmp_path):
    store = _store(tmp_path, connection_string="r1:6379")
    with pytest.raises(FlywheelError, match=r"feature views \['item_stats_1h'\] are not in the Feast registry"):
        online_sink.sink_configs(load_settings(), store, (group("user_stats_1h"), group("item_stats_1h")))
    g = group("user_stats_1h")
    changed = dataclasses.replace(g, features=(*g.features[:-1], dataclasses.replace(g.features[-1], dtype="int64")))
    with pytest.raises(FlywheelError, match="user_debiased_ctr_1h.*run `flywheel features apply`"):
        online_sink.sink_configs(load_settings(), store, (changed,))
