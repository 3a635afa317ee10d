"""Feast internals Flywheel uses: the Redis online store's connection parsing, naming, key layout and
client (FeastRedisSink writes that layout from the JVM). Checked against feast 0.67.0."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.compat import require

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

CHECKED = "0.67.0"


def _checked() -> None:
    require("feast", CHECKED, __name__)


def redis_connection(store: FeatureStore) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Feast's Redis online store's nodes and connection parameters (password, ssl, db, ...), parsed from
    its `connection_string` by Feast's own parser, so a writer outside Feast connects exactly as Feast does."""
    _checked()
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(store.config.online_store.connection_string)
    return [(n["host"], int(n["port"])) for n in nodes], params


def online_view_name(store: FeatureStore, view: FeatureView) -> str:
    """The name under which Feast's Redis store keeps a view's values (`_ts:<name>`, hash fields of
    "<name>:<feature>"): the view's, with a version suffix when online view versioning is on."""
    _checked()
    from feast.infra.online_stores.helpers import compute_versioned_name

    versioning = getattr(store.config.registry, "enable_online_feature_view_versioning", False)
    return compute_versioned_name(view, versioning)


def redis_client(store: FeatureStore) -> Any:
    """The redis-py client Feast's Redis online store uses, with its connection settings."""
    _checked()
    return store._get_provider().online_store._get_client(store.config.online_store)  # type: ignore[attr-defined]


def redis_key(store: FeatureStore, entity: EntityKey) -> bytes:
    """The Redis key under which Feast's Redis online store keeps an entity's values."""
    _checked()
    from feast.infra.online_stores.helpers import _redis_key

    cfg = store.config
    return _redis_key(cfg.project, entity, cfg.entity_key_serialization_version)


def redis_field(view: str, feature: str) -> bytes:
    """The hash field under which Feast's Redis online store keeps a feature of a view."""
    _checked()
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view}:{feature}")
