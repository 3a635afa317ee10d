"""Checks shared by the feature-job tests: an independent pandas reference for every feature, and the
online store (read with the Feast SDK) against the offline store."""

from __future__ import annotations

import math
import random
import re
import time
import uuid
from collections import Counter
from datetime import datetime

import duckdb
import numpy as np
import orjson
import pandas as pd

from feature_repo.spec import GROUPS, FeatureGroup
from flink_jobs.features import committed_parquet
from flywheel.clients import feast_store
from flywheel.events.consumer import read_partitions, read_topic
from flywheel.events.schema import parse

# The views the longest fault rows check (one per window length and entity kind, and the last-click view).
FOUR_VIEWS = ("user_stats_1h", "item_stats_7d", "user_category_stats_7d", "user_last_click")


def all_rows(opt) -> dict[str, list]:
    """Every committed row of every view and of the event log, sorted: what two runs must agree on."""
    out = {}
    for view in [g.name for g in GROUPS] + ["events"]:
        rel = duckdb.sql(f"SELECT * EXCLUDE (dt, hr) FROM read_parquet('{opt.offline_dir}/{view}/*/*/part-*')")
        out[view] = sorted(rel.fetchall(), key=repr)
    return out


def offline_rows(opt, g: FeatureGroup) -> pd.DataFrame:
    files = committed_parquet(opt.offline_dir, g.name)
    assert files, f"no committed Parquet for {g.name}"
    return duckdb.sql("SELECT * EXCLUDE (dt, hr) FROM read_parquet($f)", params={"f": files}).df()


def _event_time_as_the_source_reads_it(raw: bytes) -> int:
    """What the source's event-time column makes of a record (COALESCE(TRY_CAST(JSON_TEXT(...) AS BIGINT),
    0)): an integer, or a string of one; anything else the epoch."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    value = doc.get("event_time") if isinstance(doc, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return 0


# The Python validator costs about half a millisecond a record, and each check reads the same records
# several times (the source topic and the simulator's values, per view): each distinct record is parsed once.
_PARSED: dict[bytes, tuple] = {}


def _parse(raw: bytes) -> tuple:
    hit = _PARSED.get(raw)
    if hit is None:
        if len(_PARSED) >= 1_000_000:
            _PARSED.clear()
        hit = _PARSED[raw] = parse(raw)
    return hit


def late_by_rule(cfg, topic: str) -> Counter[str]:
    """The job's lateness rule, written out again over the source topic: per partition, in offset order, a
    valid event is late when its event time is not above the highest event time of the records before it in
    that partition (every record counts, as for the watermark) minus `features.watermark_delay_s`."""
    delay_ms = cfg.features.watermark_delay_s * 1000
    highest: dict[int, int] = {}
    late: Counter[str] = Counter()
    for partition, _, raw in read_partitions(cfg.kafka, topic):
        before = highest.get(partition)
        event, rejection = _parse(raw)
        if rejection is None and before is not None and event["event_time"] <= before - delay_ms:
            late[raw.decode()] += 1
        ms = _event_time_as_the_source_reads_it(raw)
        if before is None or ms > before:
            highest[partition] = ms
    return late


def clean_events(cfg, opt, sim) -> pd.DataFrame:
    """Valid (Python validator), minus the late ones (as a multiset), deduplicated. The job's late topic must
    hold exactly the events the lateness rule names, whatever the timing of the run."""
    late = Counter(orjson.loads(v)["payload"] for _, v in read_topic(cfg.kafka, opt.late_topic))
    assert late == late_by_rule(cfg, opt.topic), "the late topic differs from the lateness rule"
    seen: set[str] = set()
    rows = []
    for raw in sim.values:
        event, rejection = _parse(raw)
        if rejection is not None:
            continue
        text = raw.decode()
        if late[text] > 0:
            late[text] -= 1
            continue
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        rows.append(event)
    assert sum(late.values()) == 0, "the late topic holds records that were never produced"
    df = pd.DataFrame(rows)
    df["imp"] = (df.event_type == "impression").astype(int)
    df["clk"] = (df.event_type == "click").astype(int)
    df["buy"] = (df.event_type == "purchase").astype(int)
    df["exam"] = np.where(df.imp == 1, df.position.astype(float) ** -0.8, 0.0)
    return df


def reference(events, name: str) -> object:
    """A feature's value over a window's events (a DataFrame, or anything with its columns as attributes),
    from its name (independent of the job's SQL)."""
    imp, clk, buy = events.imp.sum(), events.clk.sum(), events.buy.sum()
    base = name.split("_", 1)[1].rsplit("_", 1)[0] if name.startswith(("user_", "item_", "cat_")) else name
    if base == "impressions":
        return int(imp)
    if base == "clicks":
        return int(clk)
    if base == "purchases":
        return int(buy)
    if base == "ctr":
        return clk / imp if imp else None
    if base == "debiased_ctr":
        return clk / events.exam.sum() if events.exam.sum() else None
    if name == "last_click_time":
        return events.event_time.max() if len(events) else None
    raise KeyError(name)


def same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NaT
    if b is None or b is pd.NaT:
        return False
    if isinstance(b, pd.Timestamp):
        return int(b.value // 1_000_000) == int(a)
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def assert_offline_matches_reference(cfg, opt, sim, group: FeatureGroup, events: pd.DataFrame | None = None) -> None:
    """Every stored value, as of every window end (40 sampled keys), equals the reference; no duplicate rows.
    `events`: `clean_events` of this run, when the caller has them already."""
    stored = offline_rows(opt, group)
    assert not stored.duplicated(subset=[*group.entities, "event_timestamp"]).any(), "duplicate rows"
    events = clean_events(cfg, opt, sim) if events is None else events
    _assert_rows_match_reference(_of_group(events, group), stored, group)


def assert_exactly_once(cfg, opt, sim, aggregated: int, views: tuple[str, ...] | None = None) -> None:
    """After a run through failures: the event log holds each of the `aggregated` events once, and each view
    (default: every one) equals the reference at every window end with no duplicate row."""
    n, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{opt.offline_dir}/events/*/*/part-*')"
    ).fetchall()[0]
    assert n == distinct == aggregated, (n, distinct, aggregated)
    events = clean_events(cfg, opt, sim)
    for g in GROUPS if views is None else [v for v in GROUPS if v.name in views]:
        assert_offline_matches_reference(cfg, opt, sim, g, events)


def assert_online_matches_reference(cfg, opt, sim, group: FeatureGroup, until_ms: int | None = None) -> None:
    """What the Feast SDK reads from Redis for 40 sampled keys is the reference as of the value's timestamp
    and of every window end after it up to `until_ms` (the watermark: later windows have not fired): each
    key's latest value, and no window fired since is missing."""
    events = _of_group(clean_events(cfg, opt, sim), group)
    keys = sorted(events.groupby(list(group.entities)).groups)
    random.Random(0).shuffle(keys)
    rows = [dict(zip(group.entities, k if isinstance(k, tuple) else (k,), strict=True)) for k in keys[:40]]
    names = group.feature_names
    got = (
        feast_store.store(cfg)
        .get_online_features(features=[f"{group.name}:{f}" for f in names], entity_rows=rows)
        .to_dict(include_event_timestamps=True)
    )
    online = pd.DataFrame({**{k: got[k] for k in group.entities}, **{f: got[f] for f in names}})
    online["event_timestamp"] = pd.to_datetime(got[f"{names[0]}__ts"], unit="s")  # Feast's __ts: whole seconds
    online = online[online.event_timestamp > pd.Timestamp(0)]
    assert len(online) == len(rows), f"{group.name}: {len(rows) - len(online)} of {len(rows)} keys have no value"
    if group.emits_changes:  # a sliding value is stamped just after its window end (+1 ms), which __ts drops
        online["event_timestamp"] += pd.Timedelta(milliseconds=1)
    _assert_rows_match_reference(events, online, group, latest_only=True, until_ms=until_ms)


def _of_group(events: pd.DataFrame, group: FeatureGroup) -> pd.DataFrame:
    if group.where == "item_category IS NOT NULL":
        events = events[events.item_category.notna()]
    if group.where == "is_click = 1":
        events = events[events.clk == 1]
    return events


class _Window:
    """One window's events as numpy columns, the attributes `reference` reads (pandas costs ~100x more a call)."""

    def __init__(self, columns: dict[str, np.ndarray], lo: int, hi: int) -> None:
        for name, values in columns.items():
            setattr(self, name, values[lo:hi])

    def __len__(self) -> int:
        return len(self.event_time)


def _by_key(df: pd.DataFrame, entities: tuple[str, ...]) -> dict[tuple, np.ndarray]:
    groups = df.groupby(list(entities)).indices
    return {k if isinstance(k, tuple) else (k,): v for k, v in groups.items()}


def _assert_rows_match_reference(
    events, stored, group: FeatureGroup, latest_only: bool = False, until_ms: int | None = None
) -> None:
    """`latest_only`: `stored` holds each key's latest value only; windows that end before it are skipped,
    and timestamps are compared in whole seconds (as Feast keeps them online)."""
    size_ms = int(group.window.size.total_seconds() * 1000)
    slide_ms = int(group.window.slide.total_seconds() * 1000)
    events_of, stored_of = _by_key(events, group.entities), _by_key(stored, group.entities)
    keys = sorted(events_of)
    random.Random(0).shuffle(keys)
    checked = 0
    for key in keys[:40]:
        mine = events.iloc[events_of[key]].sort_values("event_time", kind="stable")
        columns = {c: mine[c].to_numpy() for c in ("imp", "clk", "buy", "exam", "event_time")}
        times = columns["event_time"]
        rows = stored.iloc[stored_of.get(key, [])].sort_values("event_timestamp")
        row_ms = rows.event_timestamp.to_numpy().astype("datetime64[ms]").astype("int64")
        values = {f: rows[f].tolist() for f in group.feature_names}
        first = (times.min() // slide_ms) * slide_ms
        for end in range(first, times.max() + size_ms + 2 * slide_ms, slide_ms):
            hi = int(np.searchsorted(times, end, side="left"))  # events before `end`
            lo = int(np.searchsorted(times, end - size_ms, side="left")) if group.emits_changes else 0
            in_window = _Window(columns, lo, hi)  # latest-value groups: every event before `end`
            i = np.searchsorted(row_ms, end, side="right") - 1
            if (latest_only and i < 0) or (until_ms is not None and end > until_ms):
                continue
            for f in group.feature_names:
                want = reference(in_window, f)
                got = values[f][i] if i >= 0 else None
                if i < 0 and want in (0, None):
                    continue
                got = None if got is pd.NaT else got
                if latest_only and isinstance(want, (int, np.integer)) and isinstance(got, (pd.Timestamp, datetime)):
                    want, got = want // 1000, int(pd.Timestamp(got).timestamp())
                assert same(want, got), f"{group.name}{key} at {pd.Timestamp(end, unit='ms')}: {f}={got}, want {want}"
                checked += 1
    assert checked > 0


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def await_online_matches_offline(cfg, opt, timeout_s: float = 120) -> None:
    """For a running job: Redis converges to the offline rows (committed at the next checkpoint)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return assert_online_matches_offline(cfg, opt)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def assert_online_matches_offline(cfg, opt) -> None:
    """The Feast SDK reads from Redis the latest offline row of each key (25 per view)."""
    store = feast_store.store(cfg)
    for group in GROUPS:
        latest = offline_rows(opt, group).sort_values("event_timestamp").groupby(list(group.entities)).tail(1).head(25)
        rows = [{k: r[k] for k in group.entities} for _, r in latest.iterrows()]
        online = store.get_online_features(
            features=[f"{group.name}:{f}" for f in group.feature_names], entity_rows=rows
        ).to_df()
        merged = latest.merge(online, on=list(group.entities), suffixes=("_offline", "_online"))
        assert len(merged) == len(latest)
        for f in group.feature_names:
            for off, on in zip(merged[f"{f}_offline"], merged[f"{f}_online"], strict=True):
                off = None if off is pd.NaT or (isinstance(off, float) and math.isnan(off)) else off
                if isinstance(off, pd.Timestamp):  # Feast keeps UnixTimestamp values online in whole seconds
                    assert _utc(pd.Timestamp(on)) == _utc(off).floor("s"), f"{group.name}.{f}: {off} vs {on}"
                else:
                    assert same(off, on), f"{group.name}.{f}: offline {off}, online {on}"


def markers(cfg, topic: str, at_ms: int, tag: str = "marker") -> None:
    """One valid impression at `at_ms` in every partition: it moves the watermark (the lowest partition's)
    to `at_ms` minus the watermark delay, so a running job fires every window that ends before. The
    markers' own windows stay open. Event ids are `<tag>-<partition>`."""
    from confluent_kafka import Producer

    p = Producer(cfg.kafka.client_config())
    for part in range(cfg.kafka.partitions):
        event = {"schema_version": 1, "event_id": f"{tag}-{part}", "user_id": f"marker-{part}", "item_id": "marker",
                 "item_category": "marker", "event_type": "impression", "position": 1, "propensity": 1.0,
                 "request_id": f"{tag}-{part}", "source": "simulator", "context": {}, "event_time": at_ms,
                 "ingest_time": at_ms}  # fmt: skip
        p.produce(topic, value=orjson.dumps(event), key=event["user_id"].encode(), partition=part)
    assert p.flush(30) == 0


def fresh_job(cfg, prefix: str, **overrides):
    """Feature-job options on topics, a consumer group and an offline folder of their own (topics created)."""
    from flink_jobs import features
    from flywheel.clients.kafka import ensure_topics

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    given = dict(topic=name, dlq_topic=f"{name}-dlq", late_topic=f"{name}-late", group_id=name,
                 offline_dir=cfg.var_dir / f"offline-{name}", job_name=name)  # fmt: skip
    opt = features.options(cfg, **{**given, **overrides})
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    return opt


def await_accounted(cfg, opt, expected: int, what: str, timeout_s: float = 600) -> None:
    """Until the job's audit (committed on checkpoint) accounts for `expected` events; before the first
    checkpoint there is no audit to read yet. A timeout names the last reconciliation."""
    from flink_jobs.reconcile import reconcile
    from flywheel.errors import FlywheelError
    from flywheel.polling import wait_until

    last: list[object] = ["no audit yet"]

    def done() -> bool:
        r = reconcile(cfg, opt)
        last[0] = r.as_dict()
        return r.accounted >= expected

    try:
        wait_until(done, timeout_s, what, interval_s=1, retry_on=(FileNotFoundError, ValueError))
    except FlywheelError as exc:
        raise AssertionError(f"{exc} Last: {last[0]}") from exc


def kill_taskmanager(flink, i: int) -> None:
    """SIGKILL TaskManager `i` and its process group, as when its machine dies, and start another."""
    import os
    import signal

    os.killpg(flink.tm_procs[i].pid(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while flink.tm_procs[i].pid() is not None:  # delivered asynchronously: until it is gone, up() sees it run
        assert time.monotonic() < deadline, "the killed TaskManager is still alive after 30 s"
        time.sleep(0.05)
    assert flink.up() == "taskmanager restarted"
