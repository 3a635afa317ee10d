"""Item metadata the service needs and requests do not carry: each item's category (a key of the
user x category features), and the users the service has seen. Read in the background, never per request.

Sources: the event log (an item's latest category; every user with an event) and any Parquet files in
`var/catalog/` with columns item_id, item_category (a product catalog: items not shown yet, such as the
closed-loop world's new arrivals).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from training.labels import connect, event_log_files

log = logging.getLogger(__name__)


def catalog_dir(var_dir: Path) -> Path:
    return var_dir / "catalog"


class Catalog:
    """Refreshed in the background while requests read it. A refresh reads only what is new (committed
    event-log files never change; the catalog files are re-read when one of them changes), on one DuckDB
    thread, and updates the maps in place: re-reading the whole log on both cores at every refresh stalled
    the service's requests by up to 340 ms (measured). A lookup sees an item's old or new category, both true
    at some point."""

    def __init__(self, offline_dir: Path, var_dir: Path):
        self.offline_dir = offline_dir
        self.dir = catalog_dir(var_dir)
        self.categories: dict[str, str | None] = {}
        self.users: set[str] = set()
        self.refreshed = 0
        self.refreshed_at = 0.0  # wall clock (epoch s) of the start of the last refresh
        self._logged: dict[str, tuple[Any, str | None]] = {}  # item -> (time, category) of its latest category
        self._read: set[str] = set()  # event-log files read
        self._extra: dict[str, str | None] = {}  # item -> category in var/catalog/*.parquet
        self._extra_stamp: tuple[tuple[str, int, int], ...] = ()
        self._lock = threading.Lock()  # one refresh at a time

    def refresh(self) -> None:
        """Read what is new since the last refresh."""
        with self._lock:
            started = time.time()
            with connect() as con:
                con.execute("SET threads = 1")  # in the background: the other core is the requests'
                changed = self._read_log(con) | self._read_extra(con)
            gone = {item for item in changed if item not in self._logged and item not in self._extra}
            # An item's latest category in the log, or the catalog's where the log has none.
            self.categories.update({item: self._category(item) for item in changed - gone})
            for item in gone:  # left the catalog, never in the log
                self.categories.pop(item, None)
            self.refreshed += 1
            self.refreshed_at = started
        log.info("catalog: %d items (%d changed), %d users", len(self.categories), len(changed), len(self.users))

    def _category(self, item: str) -> str | None:
        logged = self._logged.get(item, (None, None))[1]
        return logged if logged is not None else self._extra.get(item)

    def _read_log(self, con: Any) -> set[str]:
        files = [f for f in event_log_files(self.offline_dir) if f not in self._read]
        if not files:
            return set()
        changed = set()
        rows = con.execute(  # arg_max skips null categories: the latest known one
            "SELECT item_id, max(event_timestamp) FILTER (WHERE item_category IS NOT NULL), "
            "arg_max(item_category, event_timestamp) FROM read_parquet($f) GROUP BY item_id",
            {"f": files},
        ).fetchall()
        for item, at, category in rows:
            have = self._logged.get(item)
            if have is None or (at is not None and (have[0] is None or at > have[0])):
                self._logged[item] = (at, category)
                changed.add(item)
        users = con.execute("SELECT DISTINCT user_id FROM read_parquet($f)", {"f": files}).fetchall()
        self.users.update(u for (u,) in users)
        self._read.update(files)
        return changed

    def _read_extra(self, con: Any) -> set[str]:
        paths = sorted(self.dir.glob("*.parquet")) if self.dir.exists() else []
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
        if stamp == self._extra_stamp:
            return set()
        old, self._extra_stamp = self._extra, stamp
        query = "SELECT item_id, any_value(item_category) FROM read_parquet($f) GROUP BY item_id"
        self._extra = dict(con.execute(query, {"f": [str(p) for p in paths]}).fetchall()) if paths else {}
        return old.keys() | self._extra.keys()

    def unknown_items(self, items: list[str]) -> list[str]:
        known = self.categories
        return [i for i in items if i not in known]

    def category(self, items: list[str]) -> list[str | None]:
        known = self.categories
        return [known.get(i) for i in items]
