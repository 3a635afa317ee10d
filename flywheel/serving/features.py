"""Online features for a ranking request, read from Feast's Redis online store in one round trip.

Feast's `get_online_features` reads the same keys but spends ~20 ms per 100-candidate request in
Python bookkeeping (measured; docs/design/serving.md), twice the whole latency budget. This reader
issues one pipelined HMGET per entity for exactly the fields the feature service needs (Feast's key and
field layout, through flywheel.compat.feast), decodes Feast's `Value` protos, runs the service's
on-demand views through Feast's own transform, and returns numpy columns (`Served`): the service scores
them with `model.served_batch`, equal to `model.to_batch` of the `model.as_served` table training and
off-policy evaluation build (tests/unit/test_model.py), without building that table on the request path.
`tests/integration/test_serving.py` checks `Served.table()` equals `get_online_features` value for value,
cached or not.

The hashes of items (and any entity keyed by the candidate alone) are shared by most requests: the service
keeps them decoded, with the on-demand outputs computed from them, in a `TrackedCache` that Redis's
invalidation reports keep exact (`serving.feature_cache`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from flywheel.compat import feast as feast_private
from flywheel.serving.feature_cache import TrackedCache
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
    cached: bool  # keyed by the candidate alone: shared by many requests, kept in the TrackedCache


@dataclass
class _Row:
    """One entity's hash, decoded: what the cache keeps."""

    values: tuple[Any, ...]  # per feature, as `get_online_features` returns it (None when absent)
    numbers: np.ndarray  # float64 per feature (timestamps as epoch seconds)
    absent: np.ndarray  # bool per feature
    present: dict[str, bool]  # per view: Feast counts an entity with none of a view's fields as absent
    derived: dict[str, float] = field(default_factory=dict)  # on-demand outputs of this entity alone


@dataclass(frozen=True)
class _OnDemand:
    view: Any  # Feast's OnDemandFeatureView
    inputs: tuple[str, ...]
    entity: int | None  # the entity kind all its inputs come from, when it needs nothing of the request


@dataclass(frozen=True)
class Served:
    """The feature-service columns for one request's candidates: float64 with NaN where a value is absent
    (`nulls` says which, for the stored features; an on-demand output is absent where NaN), the
    `<view>__missing` indicators as bool."""

    user: str
    items: list[str]
    categories: list[str | None]
    columns: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]

    def keys(self) -> dict[str, list[Any]]:
        """user_id, item_id and item_category per candidate."""
        return {"user_id": [self.user] * len(self.items), "item_id": self.items, "item_category": self.categories}

    def table(self) -> pa.Table:
        """As `model.as_served` lays it out: the table training, off-policy evaluation and Feast's path build."""
        out = {}
        for name, col in self.columns.items():
            if col.dtype == np.bool_:
                out[name] = pa.array(col)
            elif name in self.nulls:
                out[name] = pa.array(col, pa.float64(), mask=self.nulls[name])
            else:
                out[name] = pa.array(col, pa.float64(), from_pandas=True)
        return as_served(pa.table(self.keys()), pa.table(out))  # the column order of scoring.online_rows


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
    """The feature-service columns for (user, candidates), as the ranker was trained to see them.

    With `cache` on, the hashes of entities keyed by the candidate alone (items, categories) are kept in a
    `TrackedCache`, which Redis's invalidation reports keep exact; the user's hashes are read every time.
    With `timeout_s`, a Redis that stops answering raises redis.TimeoutError after that long."""

    def __init__(self, store: FeatureStore, plan: Plan, cache: bool = False, timeout_s: float | None = None):
        self.store = store
        self.plan = plan
        self.client = feast_private.redis_client(store, timeout_s)
        self.requested = [v for v in plan.views if v.requested]
        by_keys: dict[tuple[str, ...], list] = {}
        for v in plan.views:
            by_keys.setdefault(v.join_keys, []).append(v)
        self.entities: list[_Entity] = []
        for keys, views in by_keys.items():
            pairs, times, fields = [], set(), []
            for v in views:
                online = feast_private.online_view_name(store, store.get_feature_view(v.name))
                for name, kind in v.features:
                    pairs.append((v.name, name))
                    fields.append(feast_private.redis_field(online, name))
                    if kind == "TIMESTAMPTZ":
                        times.add(name)
            self.entities.append(_Entity(keys, tuple(v.name for v in views), tuple(pairs), frozenset(times),
                                         tuple(fields), cached=cache and "user_id" not in keys))  # fmt: skip
        self.timestamps = frozenset().union(*(e.timestamps for e in self.entities))
        builders = {keys: feast_private.string_key_builder(store, keys) for keys in by_keys}
        self._key = {keys: lru_cache(maxsize=100_000)(b) for keys, b in builders.items()}  # items mostly repeat
        self._values: dict[tuple[bytes, bool], Any] = {}  # decoded Values: most repeat (small counts, rates)
        self._column = {name: (i, j) for i, e in enumerate(self.entities) for j, (_, name) in enumerate(e.features)}
        self.on_demand = [self._plan_on_demand(odfv) for odfv in plan.on_demand]
        prefixes = [self._prefix(e.join_keys) for e in self.entities if e.cached]
        self.cache = TrackedCache(self.client, prefixes) if prefixes else None

    def start(self) -> None:
        """Follow Redis's reports for the cached entities (until then every read goes to Redis)."""
        if self.cache is not None and not self.cache.start():
            log.warning("feature cache not following Redis yet (%s): reading every entity", self.cache.state)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def _plan_on_demand(self, odfv: Any) -> _OnDemand:
        inputs = tuple(f.name for src in odfv.source_feature_view_projections.values() for f in src.features)
        kinds = {self._column[name][0] for name in inputs}
        alone = len(kinds) == 1 and not odfv.source_request_sources
        return _OnDemand(odfv, inputs, kinds.pop() if alone else None)

    def _prefix(self, join_keys: tuple[str, ...]) -> bytes:
        """The bytes every Redis key of this entity kind starts with (up to the first value's length)."""
        a, b = (self._key[join_keys]((x,) * len(join_keys)) for x in ("a", "bb"))
        return a[: next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)]

    def _value(self, raw: bytes, is_time: bool) -> Any:
        got = self._values.get((raw, is_time), self)
        if got is self:
            if len(self._values) > 500_000:
                self._values.clear()
            got = self._values[(raw, is_time)] = _decode(raw, is_time)
        return got

    def _row(self, e: _Entity, reply: list[bytes | None]) -> _Row:
        values = tuple(None if r is None else self._value(r, name in e.timestamps)
                       for r, (_, name) in zip(reply, e.features, strict=True))  # fmt: skip
        numbers = np.array([np.nan if x is None else x.timestamp() if isinstance(x, datetime) else float(x)
                            for x in values], dtype=np.float64)  # fmt: skip
        present = {view: any(r is not None for r, (v, _) in zip(reply, e.features, strict=True) if v == view)
                   for view in e.views}  # fmt: skip
        return _Row(values, numbers, np.array([x is None for x in values]), present)

    def read(self, user: str, items: list[str], categories: list[str | None], at: datetime) -> pa.Table:
        """One row per candidate: the keys, every feature of the service (float64, null when absent), the
        `<view>__missing` indicators, at slot `model.SERVED_AT`: the table `model.to_batch` scores."""
        return self.columns(user, items, categories, at).table()

    def columns(self, user: str, items: list[str], categories: list[str | None], at: datetime) -> Served:
        """What `read` returns, as numpy columns: what the service scores (`model.served_batch`)."""
        n = len(items)
        rows = {"user_id": [user] * n, "item_id": items, "item_category": [c or "" for c in categories]}
        cache = self.cache
        token = cache.token() if cache is not None else 0
        pipe = self.client.pipeline(transaction=False)
        layout = []
        for e in self.entities:
            keys = list(zip(*(rows[k] for k in e.join_keys), strict=True))
            distinct = list(dict.fromkeys(keys))
            key = self._key[e.join_keys]
            redis_keys = [key(k) for k in distinct]
            held = [cache.get(k) for k in redis_keys] if e.cached and cache is not None else [None] * len(distinct)
            for k, row in zip(redis_keys, held, strict=True):
                if row is None:
                    pipe.hmget(k, e.fields)
            position = {k: i for i, k in enumerate(distinct)}
            layout.append((e, redis_keys, held, np.fromiter((position[k] for k in keys), np.intp, n)))
        replies = iter(pipe.execute()) if len(pipe) else iter(())
        got: list[list[_Row]] = []
        for e, redis_keys, held, _ in layout:
            rows_of_e = []
            for k, row in zip(redis_keys, held, strict=True):
                if row is None:
                    row = self._row(e, next(replies))
                    if e.cached and cache is not None:
                        cache.put(k, row, token)
                rows_of_e.append(row)
            got.append(rows_of_e)
        # Per entity kind, its rows' values spread to the candidates once; each feature is a column of that.
        numbers = [np.stack([r.numbers for r in rs])[lay[3]] for rs, lay in zip(got, layout, strict=True)]
        absent = [np.stack([r.absent for r in rs])[lay[3]] for rs, lay in zip(got, layout, strict=True)]
        out: dict[str, np.ndarray] = {}
        nulls: dict[str, np.ndarray] = {}
        for v in self.requested:
            for name, _ in v.features:
                i, j = self._column[name]
                out[name], nulls[name] = numbers[i][:, j], absent[i][:, j]
            i = self._column[v.features[0][0]][0]
            out[f"{v.name}__missing"] = ~np.array([r.present[v.name] for r in got[i]])[layout[i][3]]
        for od in self.on_demand:
            if od.entity is not None:
                cols = self._derived(od, got[od.entity], layout[od.entity][3])
            else:
                cols = self._on_demand(od, got, [lay[3] for lay in layout], at, n)
            for name, col in cols.items():
                if name in self.plan.features and name not in out:
                    out[name] = col
        return Served(user, items, categories, out, nulls)

    def _transform(self, od: _OnDemand, columns: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        """Feast's transform of the view (the one the training-set builder runs) on columns of Python values,
        outputs as float64 with NaN where null or not finite. A python-mode view takes the columns as they are
        (Feast's online path does the same); a pandas-mode one gets a frame."""
        if od.view.mode == "python":
            result = od.view.transform_dict(columns)
        else:
            import pandas as pd

            frame = pd.DataFrame(columns)
            for name in od.inputs:
                if name in self.timestamps:
                    frame[name] = pd.to_datetime(frame[name], utc=True)
            result = od.view.feature_transformation.transform(frame)
        out = {}
        for f in od.view.features:
            col = np.asarray(result[f.name], dtype=np.float64)
            out[f.name] = np.where(np.isfinite(col), col, np.nan)
        return out

    def _derived(self, od: _OnDemand, rows: list[_Row], index: np.ndarray) -> dict[str, np.ndarray]:
        """A view computed from one entity alone: once per entity, kept on its (cached) row."""
        names = [f.name for f in od.view.features]
        todo = [r for r in rows if names[0] not in r.derived]
        if todo:
            cols = [self._column[name][1] for name in od.inputs]
            result = self._transform(
                od, {name: [r.values[j] for r in todo] for name, j in zip(od.inputs, cols, strict=True)}
            )
            for i, r in enumerate(todo):
                r.derived.update({name: float(result[name][i]) for name in names})
        return {name: np.array([r.derived[name] for r in rows])[index] for name in names}

    def _on_demand(
        self, od: _OnDemand, got: list[list[_Row]], index: list[np.ndarray], at: datetime, n: int
    ) -> dict[str, np.ndarray]:
        """A view that needs the request (or several entities): its transform applied once per distinct
        entity of its inputs when they share one (once for the user), else once per row."""
        where = {name: self._column[name] for name in od.inputs}
        kinds = {i for i, _ in where.values()}
        if len(kinds) == 1:  # every input is keyed by the same entity
            (kind,) = kinds
            rows_index = index[kind]
            columns = {name: [r.values[j] for r in got[kind]] for name, (_, j) in where.items()}
        else:
            rows_index = np.arange(n)
            columns = {name: [got[i][x].values[j] for x in index[i]] for name, (i, j) in where.items()}
        m = len(next(iter(columns.values())))
        for req in od.view.source_request_sources.values():
            for f in req.schema:
                columns[f.name] = [at if f.name == REQUEST_TIME else None] * m
        result = self._transform(od, columns)
        return {name: col[rows_index] for name, col in result.items()}
