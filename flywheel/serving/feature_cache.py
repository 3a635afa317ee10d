"""Online-store entries kept in memory until Redis reports that they changed.

Most candidates of a request are items that many requests share, so reading and decoding their hashes on
every request is most of a request's feature read. Redis's client-side caching protocol, in broadcasting
mode, keeps a copy exact: one connection asks Redis to report every key under the cached entities' key
prefixes that any client modifies or expires (`CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX ...`, then
`SUBSCRIBE __redis__:invalidate`), and a thread drops each reported entry. A copy is at most one report's
delivery behind Redis. Without that connection (lost, silent for SILENT_S, or refused by the server)
nothing is cached: every read goes to Redis until the connection is back, and the log says why.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"
CLIENT_NAME = "flywheel-feature-cache"  # how the report connection shows in CLIENT LIST
RETRY_S = 1.0  # between attempts to (re)connect the report connection
PING_S = 1.0  # a silent network partition must not keep stale copies for long: ping, expect an answer
SILENT_S = 3.0
MAX_ENTRIES = 1_000_000  # beyond it the cache starts over (an entry is a few hundred bytes)


class TrackedCache:
    """A dict of Redis keys to decoded values that Redis's invalidation reports keep exact.

    A reader takes `token()` before it sends its reads and passes it to `put`: a report of the key that
    arrived after the token means the value read may predate the change, so it is not kept."""

    def __init__(self, client: Any, prefixes: list[bytes]):
        self._pool = client.connection_pool
        self.prefixes = prefixes
        self._entries: dict[bytes, Any] = {}
        self._reported: dict[bytes, int] = {}  # key -> sequence number of its latest report
        self._seq = 0  # counts reports, and reconnections
        self._floor = 0  # values read before this sequence number are never kept (the connection was down)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="feature-cache-reports", daemon=True)
        self.hits = self.misses = self.reports = self.connections = 0
        self.state = "starting"

    # -- the reader's side -----------------------------------------------------------------------------
    def token(self) -> int:
        return self._seq

    def get(self, key: bytes) -> Any | None:
        got = self._entries.get(key) if self._live.is_set() else None
        if got is None:
            self.misses += 1
        else:
            self.hits += 1
        return got

    def put(self, key: bytes, value: Any, token: int) -> None:
        with self._lock:
            if not self._live.is_set() or token < self._floor or self._reported.get(key, -1) > token:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = value

    @property
    def size(self) -> int:
        return len(self._entries)

    # -- the reports ------------------------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> bool:
        """Start following reports; True when the connection is up within `wait_s` (else reads go uncached
        until it is)."""
        self._thread.start()
        return self._live.wait(wait_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _connect(self) -> Any:
        conn = self._pool.make_connection()
        conn.connect()
        conn.send_command("CLIENT", "SETNAME", CLIENT_NAME)
        conn.read_response()
        conn.send_command("CLIENT", "ID")
        own = conn.read_response()
        conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own, "BCAST",
                          *(x for p in self.prefixes for x in ("PREFIX", p)))  # fmt: skip
        conn.read_response()
        conn.send_command("SUBSCRIBE", CHANNEL)
        conn.read_response()
        return conn

    def reset(self, live: bool) -> None:
        """Forget everything (whatever was read so far may have changed unreported); serve from memory
        from now on (`live`, the reports are followed) or not."""
        with self._lock:
            self._seq += 1
            self._forget_all()
            if live:
                self._live.set()
            else:
                self._live.clear()

    def _follow(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                self.reset(live=True)
                self.connections += 1
                self.state = "tracking"
                log.info("feature cache: following Redis's reports for %d key prefix(es)", len(self.prefixes))
                answered = pinged = time.monotonic()
                while not self._stop.is_set():
                    now = time.monotonic()
                    if now - answered > SILENT_S:
                        raise ConnectionError(f"no answer from Redis for {now - answered:.1f} s")
                    if now - pinged > PING_S:
                        conn.send_command("PING")
                        pinged = now
                    if conn.can_read(timeout=PING_S / 4):
                        message = conn.read_response()
                        answered = time.monotonic()
                        self._report(message)
            except Exception as exc:  # the server went away or refuses tracking: serve uncached, retry
                self.reset(live=False)
                if self.state != f"off: {exc}":
                    log.warning("feature cache off, reading Redis for every request: %s", exc)
                self.state = f"off: {exc}"
                self._stop.wait(RETRY_S)
            finally:
                if conn is not None:
                    conn.disconnect()
        self.reset(live=False)

    def _report(self, message: list) -> None:
        if message[0] == b"message":
            self.invalidate(message[2])

    def invalidate(self, keys: list[bytes] | None) -> None:
        """Drop these keys (None: every key, as FLUSHDB reports); reads that started earlier are not kept."""
        with self._lock:
            self._seq += 1
            self.reports += 1
            if keys is None or len(self._reported) + len(keys) > MAX_ENTRIES:  # a flush, or bounded memory
                self._forget_all()
                return
            for key in keys:
                self._entries.pop(key, None)
                self._reported[key] = self._seq

    def _forget_all(self) -> None:
        """Under the lock: drop every entry, and keep nothing read before the current sequence number."""
        self._floor = self._seq
        self._entries.clear()
        self._reported.clear()
