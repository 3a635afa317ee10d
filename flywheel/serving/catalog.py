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

from training.labels import connect, event_log_files

log = logging.getLogger(__name__)


def catalog_dir(var_dir: Path) -> Path:
    return var_dir / "catalog"


class Catalog:
    def __init__(self, offline_dir: Path, var_dir: Path):
        self.offline_dir = offline_dir
        self.dir = catalog_dir(var_dir)
        self.categories: dict[str, str | None] = {}
        self.users: frozenset[str] = frozenset()
        self.refreshed = 0
        self.refreshed_at = 0.0  # wall clock (epoch s) of the start of the last refresh
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Re-read every source; the new maps replace the old ones whole (readers never see a half)."""
        started = time.time()
        con = connect()
        categories: dict[str, str | None] = {}
        users: set[str] = set()
        files = event_log_files(self.offline_dir)
        if files:
            rows = con.execute(
                "SELECT item_id, arg_max(item_category, event_timestamp) FROM read_parquet($f) GROUP BY item_id",
                {"f": files},
            ).fetchall()
            categories.update(rows)
            users.update(
                u for (u,) in con.execute("SELECT DISTINCT user_id FROM read_parquet($f)", {"f": files}).fetchall()
            )
        extra = sorted(str(p) for p in self.dir.glob("*.parquet")) if self.dir.exists() else []
        if extra:
            rows = con.execute("SELECT item_id, any_value(item_category) FROM read_parquet($f) GROUP BY item_id",
                               {"f": extra}).fetchall()  # fmt: skip
            categories.update({item: cat for item, cat in rows if item not in categories or categories[item] is None})
        with self._lock:
            self.categories, self.users = categories, frozenset(users)
            self.refreshed += 1
            self.refreshed_at = started
        log.info("catalog: %d items, %d users", len(categories), len(users))

    def unknown_items(self, items: list[str]) -> list[str]:
        known = self.categories
        return [i for i in items if i not in known]

    def category(self, items: list[str]) -> list[str | None]:
        known = self.categories
        return [known.get(i) for i in items]
