"""The feature cache's bookkeeping: a value read before Redis reported its key changed is never kept, and
nothing is served from memory while the reports are not followed (the report connection itself is
exercised on the real Redis in tests/integration/test_serving.py)."""

from __future__ import annotations

from types import SimpleNamespace

from flywheel.serving.feature_cache import TrackedCache


def _cache(live: bool = True) -> TrackedCache:
    cache = TrackedCache(SimpleNamespace(connection_pool=None), [b"item"])
    cache.reset(live=live)
    return cache


def test_a_read_that_started_before_its_keys_report_is_not_kept():
    cache = _cache()
    before = cache.token()
    cache.invalidate([b"item:1"])  # the key changed while the read was on its way
    cache.put(b"item:1", "old", before)
    cache.put(b"item:2", "fine", before)  # another key's report does not concern it
    assert cache.get(b"item:1") is None
    assert cache.get(b"item:2") == "fine"
    cache.put(b"item:1", "new", cache.token())
    assert cache.get(b"item:1") == "new"


def test_a_report_drops_the_entry_and_a_flush_drops_everything_read_before_it():
    cache = _cache()
    token = cache.token()
    for key in (b"item:1", b"item:2", b"item:3"):
        cache.put(key, key.decode(), token)
    cache.invalidate([b"item:1"])
    assert [cache.get(k) for k in (b"item:1", b"item:2")] == [None, "item:2"]
    cache.invalidate(None)  # FLUSHDB
    assert cache.size == 0
    cache.put(b"item:3", "stale", token)
    assert cache.get(b"item:3") is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_nothing_is_served_or_kept_while_the_reports_are_not_followed():
    cache = _cache()
    cache.put(b"item:1", "x", cache.token())
    cache.reset(live=False)  # the report connection is lost
    assert cache.get(b"item:1") is None
    cache.put(b"item:1", "x", cache.token())
    assert cache.size == 0
    token = cache.token()
    cache.reset(live=True)  # back: reads that started while it was down are not kept either
    cache.put(b"item:1", "x", token)
    assert cache.size == 0
