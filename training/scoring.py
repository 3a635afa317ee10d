"""Online scoring: fetch a user's and the candidate items' features from Redis through the Feast SDK
(the same feature service the model was trained on) and rank the items with the champion.

The feature vector is built by the same code as in training (`model.to_batch`), from a table with the
training set's columns, so the online path and the training path cannot drift apart silently.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from training.model import as_served, to_batch
from training.pipeline import load_model, registry
from training.train import predict


def item_categories(cfg: Settings, items: list[str]) -> dict[str, str | None]:
    """An item's category as the ranking service knows it (the request only names the item)."""
    from flywheel.serving.catalog import Catalog

    catalog = Catalog(cfg.offline_dir, cfg.var_dir)
    catalog.refresh()
    return dict(zip(items, catalog.category(items), strict=True))


def online_rows(
    cfg: Settings,
    store,
    user: str,
    items: list[str],
    service: str,
    at: datetime,
    categories: dict[str, str | None] | None = None,
) -> pa.Table:
    """One row per candidate with the service's features as Redis holds them, plus missing indicators, read
    through Feast's `get_online_features` (the reference the service's reader is checked against)."""
    from training.trainset import plan as make_plan

    p = make_plan(store, service)
    cats = categories if categories is not None else item_categories(cfg, items)
    entity_rows = [{"user_id": user, "item_id": i, "item_category": cats[i] or "", "request_time": at} for i in items]
    online = store.get_online_features(features=store.get_feature_service(service), entity_rows=entity_rows).to_dict()
    n = len(items)
    cols: dict[str, object] = {}
    for v in p.views:
        if not v.requested:
            continue
        names = [name for name, _ in v.features]
        present = [any(online[name][j] is not None for name in names) for j in range(n)]
        for name in names:
            cols[name] = pa.array([float(x) if x is not None else None for x in online[name]], pa.float64())
        cols[f"{v.name}__missing"] = [not x for x in present]
    for name in p.features:
        if name not in cols:
            cols[name] = pa.array([float(x) if x is not None else None for x in online[name]], pa.float64())
    keys = pa.table({"user_id": [user] * n, "item_id": items, "item_category": [cats[i] for i in items]})
    return as_served(keys, pa.table(cols))


def rank(cfg: Settings, user: str, items: list[str], at: datetime | None = None, store=None) -> list[tuple[str, float]]:
    """Items ranked by the champion's predicted click probability, best first."""
    from flywheel.clients import feast_store

    reg = registry(cfg)
    champion = reg.alias("champion")
    if champion is None:
        raise FlywheelError(
            "no champion model yet: trigger the retrain_monthly_full DAG, or run `flywheel train fit --mode full` "
            "and `flywheel train decide <version>`"
        )
    model, mcfg = load_model(reg, champion.version)
    store = store or feast_store.store(cfg)
    table = online_rows(cfg, store, user, items, champion.feature_service, at or datetime.now(UTC))
    p = predict(model, to_batch(table, mcfg, np.ones(table.num_rows)))
    return sorted(zip(items, p.tolist(), strict=True), key=lambda x: -x[1])
