"""The online path of the feature job: each feature view's values into Feast's Redis online store through
FeastRedisSink (flink_jobs/jvm), a JVM sink that writes Feast's layout itself. No Python runs in the job.

Everything the sink knows about Feast comes from here, read from the Feast registry and feature_store.yaml
when the job is built: the project, the entity-key serialization version, each view's join keys and
features with their value types, the key TTL and the Redis connection (Feast's own connection string,
which Flywheel's settings fill in). A view the job computes that Feast does not know, or knows with other
columns or types, stops the build with the fix to run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from feature_repo.spec import GROUPS, FeatureGroup
from flywheel.compat import feast as feast_private
from flywheel.compat import pyflink as flink_private
from flywheel.errors import FlywheelError
from flywheel.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

# The Feast value type of each spec dtype (feast.types.Value's oneof field the sink writes).
VALUE_TYPES = {"int64": "INT64", "float64": "DOUBLE", "timestamp": "UNIX_TIMESTAMP"}
FIX = "run `flywheel features apply` (or `feast apply` in feature_repo/) first"


class FeastRegistryMismatch(FlywheelError):
    pass


def _connection(store: FeatureStore) -> dict[str, Any]:
    online = store.config.online_store
    if online.type != "redis":
        raise FlywheelError(f"the feature job writes Feast's Redis online store; feature_store.yaml has {online.type}")
    redis_type = str(getattr(online.redis_type, "value", online.redis_type))
    if redis_type not in ("redis", "redis_cluster"):
        raise FlywheelError(f"redis_type {redis_type} is not supported by the feature job: use redis or redis_cluster")
    nodes, params = feast_private.redis_connection(store)
    unknown = sorted(set(params) - {"password", "ssl", "db", "username", "skip_full_coverage_check"})
    if unknown:
        raise FlywheelError(f"Redis connection parameters {unknown} are not supported by the feature job's sink")
    return {
        "nodes": [[host, port] for host, port in nodes],
        "cluster": redis_type == "redis_cluster",
        "ssl": str(params.get("ssl", False)).lower() == "true",
        "db": int(params.get("db", 0)),
        "username": params.get("username"),
        "password": None if params.get("password") is None else str(params["password"]),
    }


def view_config(store: FeatureStore, group: FeatureGroup) -> dict[str, Any]:
    """The sink's view: the Feast view's name online, join keys in the job's row order, features in the
    job's row order with Feast's value types. Raises FeastRegistryMismatch when Feast disagrees with spec.py."""
    fv = store.get_feature_view(group.name)  # sink_configs checked that every view is registered
    join_keys = {e.name: e.dtype.to_value_type().name for e in fv.entity_columns}
    if set(join_keys) != set(group.entities) or any(t != "STRING" for t in join_keys.values()):
        raise FeastRegistryMismatch(
            f"feature view {group.name!r} has join keys {join_keys} in the Feast registry, the job writes "
            f"{list(group.entities)} (strings): {FIX}"
        )
    feast_types = {f.name: f.dtype.to_value_type().name for f in fv.features}
    want = {f.name: VALUE_TYPES[f.dtype] for f in group.features}
    if feast_types != want:
        raise FeastRegistryMismatch(
            f"feature view {group.name!r} has features {feast_types} in the Feast registry, "
            f"the job computes {want}: {FIX}"
        )
    return {
        "name": feast_private.online_view_name(store, fv),
        "join_keys": list(group.entities),
        "features": [{"name": f.name, "type": want[f.name]} for f in group.features],
    }


def sink_configs(cfg: Settings, store: FeatureStore, groups: tuple[FeatureGroup, ...] = GROUPS) -> dict[str, str]:
    """Each view's FeastRedisSink configuration (JSON), checked against the registry before anything runs."""
    known = {fv.name for fv in store.list_feature_views()}
    missing = sorted({g.name for g in groups} - known)
    if missing:
        raise FeastRegistryMismatch(f"feature views {missing} are not in the Feast registry: {FIX}")
    connection = _connection(store)
    common = {
        "project": store.config.project,
        "entity_key_serialization_version": store.config.entity_key_serialization_version,
        "key_ttl_seconds": store.config.online_store.key_ttl_seconds or 0,
        "redis": connection,
        "batch_size": cfg.features.online_batch_size,
        "keys_per_call": cfg.features.online_keys_per_call,
        "max_pending": cfg.features.online_max_pending,
        "live_lag_ms": cfg.features.online_live_lag_s * 1000,
        "flush_interval_ms": cfg.features.online_flush_interval_ms,
        "retry_timeout_ms": cfg.features.online_retry_timeout_s * 1000,
    }
    return {g.name: json.dumps({**common, "view": view_config(store, g)}) for g in groups}


def check_registry(cfg: Settings) -> dict[str, str]:
    """The sinks' configurations, from the live registry (what the job builder calls first)."""
    from flywheel.clients import feast_store

    return sink_configs(cfg, feast_store.store(cfg))


def attach(values: dict[str, Any], configs: dict[str, str]) -> None:
    """A FeastRedisSink behind each view's stream (chained to the view's last operator)."""
    jvm = flink_private.jvm()
    for view, stream in values.items():
        sink = jvm.io.flywheel.flink.FeastRedisSink(configs[view])
        flink_private.java_stream(stream).sinkTo(sink).name(f"feast-redis-{view}").uid(f"feast-redis-{view}")


def write_query(cfg: Settings, view: str, query: str, setup: tuple[str, ...] = (), parallelism: int = 1) -> None:
    """A bounded job that writes the rows of a Flink SQL `query` (the view's join keys, its features, then
    `event_timestamp`, as the feature job's rows) into Redis through FeastRedisSink, and waits for it:
    a backfill from any Flink source, and what the sink's tests and benchmark run. `setup`: statements
    to run first (CREATE TABLE ...)."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from feature_repo.spec import group
    from flink_jobs.common import connector_jars, embedded_logs_to_file
    from flywheel.clients import feast_store

    configs = sink_configs(cfg, feast_store.store(cfg), (group(view),))
    embedded_logs_to_file(cfg)
    conf = Configuration()
    conf.set_string("pipeline.jars", ";".join(p.as_uri() for p in connector_jars(cfg)))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(parallelism)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    for statement in setup:
        t_env.execute_sql(statement)
    attach({view: t_env.to_data_stream(t_env.sql_query(query))}, configs)
    env.execute(f"feast-redis-{view}")
