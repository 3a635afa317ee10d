"""Feast internals Flywheel uses: the provider's batch write behind `write_to_online_store`, and the Redis
online store's key layout and client. Checked against feast 0.67.0."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.compat import require

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

CHECKED = "0.67.0"

Row = tuple["EntityKey", dict[str, "Value"], datetime, datetime | None]  # entity, values, event time, created


def _checked() -> None:
    require("feast", CHECKED, __name__)


class OnlineWriter:
    """Rows of Feast protos into the online store through the provider's `online_write_batch`, where
    `FeatureStore.write_to_online_store` ends after converting a DataFrame (which halves the rate)."""

    def __init__(self, store: FeatureStore):
        _checked()
        from feast.infra.provider import get_provider

        self.store = store
        self.provider = get_provider(store.config)

    def write(self, view: FeatureView, rows: list[Row]) -> None:
        self.provider.online_write_batch(self.store.config, view, rows, progress=None)


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
