"""Feast internals Flywheel uses: the Redis online store's connection parsing, naming, key layout and
client (FeastRedisSink writes that layout from the JVM). Checked against feast 0.67.0."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flywheel.compat import require
from flywheel.errors import FlywheelError

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


def redis_client(store: FeatureStore, timeout_s: float | None = None) -> Any:
    """The redis-py client Feast's Redis online store uses, with its connection settings. With `timeout_s`, a
    client of its own built the same way (single node, cluster or sentinel), whose connects and replies time
    out after that long unless the connection string sets its own: redis-py waits forever by default."""
    _checked()
    if timeout_s is None:
        return store._get_provider().online_store._get_client(store.config.online_store)  # type: ignore[attr-defined]
    from feast.infra.online_stores.redis import RedisOnlineStore

    cfg = store.config.online_store
    extra = "".join(f",{k}={timeout_s}" for k in ("socket_timeout", "socket_connect_timeout")
                    if f"{k}=" not in cfg.connection_string)  # fmt: skip
    return RedisOnlineStore()._get_client(cfg.model_copy(update={"connection_string": cfg.connection_string + extra}))


def redis_key(store: FeatureStore, entity: EntityKey) -> bytes:
    """The Redis key under which Feast's Redis online store keeps an entity's values."""
    _checked()
    from feast.infra.online_stores.helpers import _redis_key

    cfg = store.config
    return _redis_key(cfg.project, entity, cfg.entity_key_serialization_version)


def string_key_builder(store: FeatureStore, join_keys: tuple[str, ...]) -> Callable[[tuple[str, ...]], bytes]:
    """`redis_key` for an entity whose values are strings (given in `join_keys` order), built by joining bytes:
    serialization v3 is the join keys' prefix, then each value as (type, length, UTF-8) in the keys' sorted
    order, then the project. Through EntityKey protos a key costs ~20 us, and the service builds ~20 per
    request. Checked against Feast's own serialization here, so a changed layout fails at start, not in Redis."""
    _checked()
    from feast.infra.key_encoding_utils import serialize_entity_key_prefix
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    cfg = store.config
    head = serialize_entity_key_prefix(list(join_keys), cfg.entity_key_serialization_version)
    tail = cfg.project.encode()
    string = struct.pack("<I", ValueType.STRING.value)
    order = sorted(range(len(join_keys)), key=join_keys.__getitem__)

    def key(values: tuple[str, ...]) -> bytes:
        parts = [head]
        for i in order:
            value = values[i].encode()
            parts += (string, struct.pack("<I", len(value)), value)
        parts.append(tail)
        return b"".join(parts)

    for probe in (tuple(f"{k}-ünï-{i}" for i, k in enumerate(join_keys)), ("",) * len(join_keys)):
        entity = EntityKey(join_keys=list(join_keys), entity_values=[Value(string_val=v) for v in probe])
        if key(probe) != redis_key(store, entity):
            raise FlywheelError(f"feast's entity key layout is not {CHECKED}'s: re-check {__name__}.string_key_builder")
    return key


def redis_field(view: str, feature: str) -> bytes:
    """The hash field under which Feast's Redis online store keeps a feature of a view."""
    _checked()
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view}:{feature}")
