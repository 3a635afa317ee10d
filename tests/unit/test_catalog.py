"""The service's catalog reads only what is new at each refresh and ends where a full re-read would."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.serving.catalog import Catalog, catalog_dir

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _log_file(offline: Path, hour: int, rows: list[tuple[str, str, str | None, int]]) -> None:
    """An event-log file of (user, item, category, minutes after T0) rows."""
    path = offline / "events" / "dt=2026-03-01" / f"hr={hour:02d}" / "part-0"
    path.parent.mkdir(parents=True, exist_ok=True)
    users, items, cats, minutes = zip(*rows, strict=True)
    pq.write_table(pa.table({"user_id": list(users), "item_id": list(items), "item_category": list(cats),
                             "event_timestamp": pa.array([T0 + timedelta(minutes=m) for m in minutes],
                                                         pa.timestamp("us", tz="UTC"))}), path)  # fmt: skip


def _full_read(offline: Path, var: Path) -> tuple[dict, set]:
    """The catalog by re-reading everything: the event log's latest category, the catalog files' where the log
    has none."""
    con = duckdb.connect()
    log = str(offline / "events" / "*" / "*" / "part-*")
    query = f"SELECT item_id, arg_max(item_category, event_timestamp) FROM read_parquet('{log}') GROUP BY 1"
    cats = dict(con.execute(query).fetchall())
    users = {u for (u,) in con.execute(f"SELECT DISTINCT user_id FROM read_parquet('{log}')").fetchall()}
    extra = sorted(catalog_dir(var).glob("*.parquet"))
    if extra:
        for item, cat in con.execute("SELECT item_id, any_value(item_category) FROM read_parquet($f) GROUP BY 1",
                                     {"f": [str(p) for p in extra]}).fetchall():  # fmt: skip
            if cats.get(item) is None:
                cats[item] = cat
    return cats, users


def test_refreshes_read_only_new_files_and_end_where_a_full_read_does(tmp_path):
    offline, var = tmp_path / "offline", tmp_path / "var"
    rng = np.random.default_rng(4)
    minutes = rng.permutation(300)  # distinct event times, later files holding older events too
    catalog = Catalog(offline, var)
    catalog.refresh()  # nothing yet
    assert catalog.categories == {} and catalog.users == set()
    for hour in range(6):
        rows = [(f"u{rng.integers(30)}", f"i{rng.integers(40)}", rng.choice(["a", "b", None]), int(m))
                for m in minutes[hour * 50 : (hour + 1) * 50]]  # fmt: skip
        _log_file(offline, hour, rows)
        if hour == 3:  # a product catalog: new items, and a category for items the log has none for
            catalog_dir(var).mkdir(parents=True)
            pq.write_table(pa.table({"item_id": ["i1", "new-1", "new-2"], "item_category": ["c", "c", "d"]}),
                           catalog_dir(var) / "products.parquet")  # fmt: skip
        if hour == 5:  # rewritten: new-2 leaves the catalog, new-1 changes category
            path = catalog_dir(var) / "products.parquet"
            pq.write_table(pa.table({"item_id": ["i1", "new-1"], "item_category": ["c", "e"]}), path)
            os.utime(path, ns=(1, 1))  # a different stamp even within the file system's time resolution
        read_before = set(catalog._read)
        catalog.refresh()
        assert len(catalog._read - read_before) == 1  # only the new file
        assert (catalog.categories, catalog.users) == _full_read(offline, var), f"after hour {hour}"
    assert catalog.categories["new-1"] == "e" and "new-2" not in catalog.categories
