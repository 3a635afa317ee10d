"""Online features for a ranking request, read from Feast's Redis online store in one round trip.

Feast's `get_online_features` reads the same keys but spends ~20 ms per 100-candidate request in
Python bookkeeping (measured; docs/design/serving.md), twice the whole latency budget. This reader
issues one pipelined HMGET per entity for exactly the fields the feature service needs (Feast's key and
field layout, through flywheel.compat.feast), decodes Feast's `Value` protos, runs the service's
on-demand views through Feast's own transform, and hands the result to `model.as_served`, the
function training and off-policy evaluation use. `tests/integration/test_serving.py` checks it equals
`get_online_features` value for value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from flywheel.compat import feast as feast_private
from training.model import as_served
from training.trainset import REQUEST_TIME, Plan

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entity:
    """One kind of entity (its join keys) and the fields of all its views: Feast keeps every view of an
    entity in the same Redis hash, so one HMGET per entity reads them all."""

    join_keys: tuple[str, ...]
    views: tuple[str, ...]
    features: tuple[tuple[str, str], ...]  # (view, feature) in field order
    timestamps: frozenset[str]  # features of type UnixTimestamp (seconds in Feast's Value)
    fields: tuple[bytes, ...]  # the features' hash fields


def _decode(raw: bytes, is_time: bool) -> Any:
    """A Feast `Value` as Python: what `get_online_features` returns for it."""
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value.FromString(raw)
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    x = getattr(v, kind)
    return datetime.fromtimestamp(x, UTC) if is_time else x


class OnlineFeatures:
    """The feature-service columns for (user, candidates), as the ranker was trained to see them."""

    def __init__(self, store: FeatureStore, plan: Plan):
        self.store = store
        self.plan = plan
        self.client = feast_private.redis_client(store)
        self.requested = [v for v in plan.views if v.requested]
        by_keys: dict[tuple[str, ...], list] = {}
        for v in plan.views:
            by_keys.setdefault(v.join_keys, []).append(v)
        self.entities = []
        for keys, views in by_keys.items():
            pairs, times, fields = [], set(), []
            for v in views:
                online = feast_private.online_view_name(store, store.get_feature_view(v.name))
                for name, kind in v.features:
                    pairs.append((v.name, name))
                    fields.append(feast_private.redis_field(online, name))
                    if kind == "TIMESTAMPTZ":
                        times.add(name)
            self.entities.append(
                _Entity(keys, tuple(v.name for v in views), tuple(pairs), frozenset(times), tuple(fields))
            )
        self.timestamps = frozenset().union(*(e.timestamps for e in self.entities))
        self._key = lru_cache(maxsize=200_000)(self._entity_key)
        self._values: dict[tuple[bytes, bool], Any] = {}  # decoded Values: most repeat (small counts, rates)

    def _entity_key(self, join_keys: tuple[str, ...], values: tuple[str, ...]) -> bytes:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        entity = EntityKey(join_keys=list(join_keys), entity_values=[Value(string_val=x) for x in values])
        return feast_private.redis_key(self.store, entity)

    def _value(self, raw: bytes, is_time: bool) -> Any:
        got = self._values.get((raw, is_time), self)
        if got is self:
            if len(self._values) > 500_000:
                self._values.clear()
            got = self._values[(raw, is_time)] = _decode(raw, is_time)
        return got

    def read(self, user: str, items: list[str], categories: list[str | None], at: datetime) -> pa.Table:
        """One row per candidate: the keys, every feature of the service (float64, null when absent), the
        `<view>__missing` indicators, at slot `model.SERVED_AT`: the table `model.to_batch` scores."""
        n = len(items)
        rows = {"user_id": [user] * n, "item_id": items, "item_category": [c or "" for c in categories]}
        pipe = self.client.pipeline(transaction=False)
        layout = []
        for e in self.entities:
            keys = list(zip(*(rows[k] for k in e.join_keys), strict=True))
            distinct = list(dict.fromkeys(keys))
            for k in distinct:
                pipe.hmget(self._key(e.join_keys, k), e.fields)
            position = {k: i for i, k in enumerate(distinct)}
            layout.append((e, distinct, [position[k] for k in keys]))
        replies = iter(pipe.execute())
        values: dict[str, list] = {}  # feature -> value per distinct entity of its kind
        present: dict[str, list[bool]] = {}  # view -> per distinct entity
        index: dict[str, list[int]] = {}  # feature or view -> the distinct entity of each row
        for e, distinct, rows_index in layout:
            got = [next(replies) for _ in distinct]
            for j, (_, name) in enumerate(e.features):
                values[name] = [None if r[j] is None else self._value(r[j], name in e.timestamps) for r in got]
                index[name] = rows_index
            for view in e.views:
                cols = [j for j, (v, _) in enumerate(e.features) if v == view]
                # As Feast: an entity with none of the view's fields is absent, its features all null.
                present[view] = [any(r[j] is not None for j in cols) for r in got]
                index[view] = rows_index
        out: dict[str, Any] = {}
        for v in self.requested:
            for name, _ in v.features:
                idx, col = index[name], values[name]
                out[name] = pa.array([None if col[i] is None else float(col[i]) for i in idx], pa.float64())
            out[f"{v.name}__missing"] = [not present[v.name][i] for i in index[v.name]]
        for odfv in self.plan.on_demand:
            for name, col in self._on_demand(odfv, values, index, at, n).items():
                if name in self.plan.features and name not in out:
                    out[name] = col
        keys = pa.table({"user_id": rows["user_id"], "item_id": items, "item_category": categories})
        return as_served(keys, pa.table(out))  # the column order of scoring.online_rows, Feast's own path

    def _on_demand(
        self, odfv: Any, values: dict[str, list], index: dict[str, list[int]], at: datetime, n: int
    ) -> dict[str, pa.Array]:
        """An on-demand view's outputs per row, its transform (Feast's, the one the builder runs) applied once
        per distinct entity of its inputs: once for the user, once per candidate, not once per row."""
        import pandas as pd

        inputs = [f.name for src in odfv.source_feature_view_projections.values() for f in src.features]
        kinds = {tuple(index[name]) for name in inputs}
        if len(kinds) == 1:  # every input is keyed by the same entity
            rows_index = np.asarray(index[inputs[0]])
            frame = pd.DataFrame({name: values[name] for name in inputs})
        else:
            rows_index = np.arange(n)
            frame = pd.DataFrame({name: [values[name][i] for i in index[name]] for name in inputs})
        for req in odfv.source_request_sources.values():
            for f in req.schema:
                frame[f.name] = pd.Timestamp(at) if f.name == REQUEST_TIME else None
        for name in inputs:
            if name in self.timestamps:
                frame[name] = pd.to_datetime(frame[name], utc=True)
        result = odfv.feature_transformation.transform(frame)
        out = {}
        for f in odfv.features:
            col = np.asarray(result[f.name], dtype=np.float64)[rows_index]
            out[f.name] = pa.array(np.where(np.isfinite(col), col, np.nan), pa.float64(), from_pandas=True)
        return out
