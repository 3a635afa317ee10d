"""The feature job's benchmark (`flywheel bench features`): throughput of the feature job, of a
pass-through job on the same Kafka source, and of a plain Python consumer loop, all on one pre-filled
topic of simulator events; figures merged into var/bench/results.json, chart in var/bench/features.png.

Embedded runs (local mini-cluster, parallelism 2, EXACTLY_ONCE checkpoints as configured). A Flink
run's wall time includes start-up and, for the feature job, firing every window still open at the end
of input. So each Flink job also runs on a small topic of the same traffic, and the sustained rate is
(N - n) / (T_N - T_n): what each further event costs once the job runs.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from feature_repo.spec import WINDOWS
from flywheel.compat import feast as feast_private
from flywheel.settings import Settings

SHAPE: dict[str, Any] = {
    "events": 2_000_000,
    "users": 20_000,
    "items": 2_000,
    "categories": 24,
    "days": 7.0,
    "seed": 17,
}
SMALL = 50_000  # the calibration topic: same traffic, fewer events
EASY_RATE = 2_000  # events/s of the second freshness run
SINK_VALUES = 1_000_000  # values the sink alone writes (the calibration run: a tenth)


def _topic_size(cfg: Settings, topic: str) -> int:
    from flywheel.clients.kafka import admin
    from flywheel.events.consumer import count_topic

    return count_topic(cfg.kafka, topic) if topic in admin(cfg.kafka).list_topics(timeout=10).topics else 0


def prefill(cfg: Settings, events: int, log=print) -> str:
    """A topic holding exactly `events` simulator events (reused when it already does)."""
    from flywheel.clients.kafka import admin
    from flywheel.events.producer import write_records
    from flywheel.events.simulator import SimConfig, simulate

    topic = f"flywheel.bench.{events}.{SHAPE['seed']}"
    have = _topic_size(cfg, topic)
    if have == events:
        log(f"reusing {topic} ({events:,} events)")
        return topic
    if have:
        admin(cfg.kafka).delete_topics([topic])[topic].result(timeout=30)
        time.sleep(2)
    days = SHAPE["days"] * events / SHAPE["events"]
    log(f"simulating {events:,} events ({SHAPE['users']:,} users, {SHAPE['items']:,} items, {days:g} days)")
    sim = simulate(
        SimConfig(
            events=events,
            users=SHAPE["users"],
            items=SHAPE["items"],
            categories=SHAPE["categories"],
            days=days,
            seed=SHAPE["seed"],
        )
    )
    write_records(cfg.kafka, sim.keys, sim.values, topic)
    return topic


def job_options(cfg: Settings, topic: str, **overrides):
    from flink_jobs import features

    run = f"bench-{uuid.uuid4().hex[:8]}"
    given = dict(
        topic=topic,
        dlq_topic=f"{run}-dlq",
        late_topic=f"{run}-late",
        group_id=run,
        bounded=True,
        offline_dir=cfg.var_dir / "bench" / "offline" / run,
        job_name=run,
    )
    return features.options(cfg, **{**given, **overrides})


def flink_seconds(cfg: Settings, topic: str, job: str, log=print) -> tuple[float, int | None]:
    """Wall time of one bounded embedded run: `features` (the real job, Parquet + Redis), `offline`
    (the same job without the Redis sink) or `passthrough`; and, for the feature job, how many
    event-log rows repeat an event_id (exactly-once says 0)."""
    import duckdb

    from benchmarks import passthrough
    from benchmarks.results import timed
    from flink_jobs import features

    opt = job_options(cfg, topic, online=job != "offline")
    stop = threading.Event()
    threading.Thread(target=_progress, args=(cfg, opt.group_id, stop, log), daemon=True).start()
    try:
        if job == "passthrough":
            return timed(f"passthrough on {topic}", lambda: passthrough.run(cfg, opt), log)[0], None
        seconds, _ = timed(f"feature job ({job}) on {topic}", lambda: features.run(cfg, opt), log)
        rows, distinct = duckdb.execute(
            f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{opt.offline_dir}/events/*/*/part-*')"
        ).fetchall()[0]
        log(f"  event log: {rows:,} rows, {distinct:,} distinct event_ids")
        return seconds, rows - distinct
    finally:
        stop.set()
        clean_up(cfg, opt, log=log)


def clean_up(cfg: Settings, opt, *topics: str, log=print) -> None:
    """A run leaves nothing behind: its Parquet, its topics and its consumer group."""
    from flywheel.clients.kafka import admin, delete_topics

    shutil.rmtree(opt.offline_dir, ignore_errors=True)
    try:
        delete_topics(cfg.kafka, [*topics, opt.dlq_topic, opt.late_topic])
        admin(cfg.kafka).delete_consumer_groups([opt.group_id])[opt.group_id].result(timeout=30)
    except Exception as e:  # noqa: BLE001 — a leftover topic or group is not worth failing a benchmark
        log(f"  clean-up: {e}")


def _progress(cfg: Settings, group_id: str, stop: threading.Event, log, every_s: float = 30) -> None:
    """Log the job's committed offsets every `every_s` (they advance with each checkpoint)."""
    from flywheel.clients.kafka import committed_offsets

    t0 = time.monotonic()
    while not stop.wait(every_s):
        try:
            log(f"    {time.monotonic() - t0:4.0f}s: {committed_offsets(cfg.kafka, group_id):,} events committed")
        except Exception as e:  # noqa: BLE001 — progress is best effort; the run itself reports failures
            log(f"    progress unavailable: {e}")


WINDOWS_MS = {name: int(w.slide.total_seconds() * 1000) for name, w in WINDOWS.items()}  # slide per window


def naive_consumer(cfg: Settings, topic: str, events: int, log=print) -> float:
    """The loop most teams start with: poll, parse JSON, count per user and item and slide (the panes a
    sliding count sums). No dedup, late handling, checkpoints or writes: a generous baseline.
    Returns events per second, from the first record to the last."""
    import orjson
    from confluent_kafka import Consumer

    c = Consumer(
        {
            **cfg.kafka.client_config(),
            "group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    kinds = {"impression": 0, "click": 1, "purchase": 2}
    counts: dict[str, defaultdict] = {w: defaultdict(lambda: [0, 0, 0]) for w in WINDOWS_MS}
    seen, t0, last_log = 0, None, time.perf_counter()
    try:
        while seen < events:
            batch = c.consume(num_messages=10_000, timeout=1.0)
            if batch and t0 is None:
                t0 = time.perf_counter()
            for m in batch:
                seen += 1
                try:
                    e = orjson.loads(m.value() or b"")
                    k, t = kinds.get(e["event_type"]), int(e["event_time"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                if k is None:
                    continue
                for w, slide in WINDOWS_MS.items():
                    pane = t // slide
                    counts[w][("u", e["user_id"], pane)][k] += 1
                    counts[w][("i", e["item_id"], pane)][k] += 1
            if time.perf_counter() - last_log > 10:
                log(f"  naive consumer: {seen:,}/{events:,}")
                last_log = time.perf_counter()
    finally:
        c.close()
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    log(f"  naive consumer: {seen:,} events in {seconds:.1f}s")
    return seen / seconds


def freshness(
    cfg: Settings,
    log=print,
    rate: int = 10_000,
    on_the_hour: bool = False,
    lead_s: int = 60,
    tail_s: int = 120,
    sample: int = 200,
    poll_s: float = 0.1,
) -> dict:
    """A live job at a steady `rate`: for up to `sample` keys of every view that fires at a slide boundary
    W (keys with events in the `lead_s` before W), the time from W + watermark delay (the earliest
    moment the value can be final) until the Feast SDK returns a value stamped W or later from Redis.

    W is the next 5-minute boundary, or with `on_the_hour` an hour boundary, where the 24-hour and 7-day
    views fire as well. So as not to wait for the next hour, event time then runs a constant offset behind
    the wall clock (the run's live threshold, features.online_live_lag_s, is raised by as much): the job
    sees a live stream that is that much late, which changes nothing else.

    The poller must not take the CPU the job needs at W. So each round asks Redis, in one pipeline, for
    the stored timestamp of the keys not seen yet (`_StampProbe`), and reads with the Feast SDK only the
    keys whose value is stamped W or later; a value counts as seen when that Feast read returns it."""
    import math
    from datetime import UTC, datetime

    import numpy as np

    from feature_repo.spec import GROUPS
    from flink_jobs import features
    from flywheel.clients import feast_store
    from flywheel.clients.kafka import ensure_topics
    from flywheel.events.simulator import SimConfig, simulate

    delay = cfg.features.watermark_delay_s
    span = lead_s + tail_s
    wall_w = math.ceil((time.time() + 120) / 300) * 300  # after generating data and starting the job
    if not on_the_hour and wall_w % 3600 == 0:
        wall_w += 300  # off the hour means off it
    event_w = wall_w // 3600 * 3600 if on_the_hour else wall_w
    shift = wall_w - event_w  # event time runs this far behind the wall clock
    if shift:
        live_lag = cfg.features.online_live_lag_s + shift
        cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"online_live_lag_s": live_lag})})
    firing = [g for g in GROUPS if event_w % int(g.window.slide.total_seconds()) == 0]
    log(
        f"freshness: {rate:,} events/s, W = {datetime.fromtimestamp(event_w, UTC)} in event time "
        f"({shift} s behind the wall clock), views firing: {', '.join(g.name for g in firing)}"
    )
    sim = simulate(
        SimConfig(
            events=rate * span,
            users=SHAPE["users"],
            items=SHAPE["items"],
            categories=SHAPE["categories"],
            start=datetime.fromtimestamp(event_w - lead_s, UTC),
            days=span / 86400,
            seed=SHAPE["seed"] + 1,
        )
    )
    rng = np.random.default_rng(0)
    by = {g.name: g for g in firing}
    keys = {
        g.name: [tuple(k) for k in rng.permutation(np.array(ks, dtype=object))[:sample].tolist()]
        for g, ks in _firing_keys(sim.values, firing, (event_w - lead_s) * 1000, event_w * 1000).items()
    }
    topic = f"flywheel.bench.live-{uuid.uuid4().hex[:8]}"
    opt = job_options(cfg, topic, bounded=False)
    ensure_topics(cfg.kafka, [topic, opt.dlq_topic, opt.late_topic])
    store = feast_store.store(cfg)
    probe = _StampProbe(store)
    for view, ks in keys.items():  # an earlier run with the same W would otherwise be "seen" at once
        probe.forget(view, by[view].entities, ks)
    job = features.run(cfg, opt, wait=False)
    seen: dict[tuple[str, tuple], float] = {}
    stop = threading.Event()
    sent = _Sender(cfg, topic, sim, stop, shift_ms=shift * 1000)
    total = sum(len(ks) for ks in keys.values())
    try:
        sent.start()
        while time.time() < wall_w + delay:
            time.sleep(0.05)
        deadline = wall_w + tail_s + 60  # whatever is still missing then stays missing
        while len(seen) < total and time.time() < deadline:
            t_round = time.time()
            for view, ks in keys.items():
                g = by[view]
                pending = probe.stamped_since(view, g.entities, [k for k in ks if (view, k) not in seen], event_w)
                if not pending:
                    continue
                feature = g.feature_names[0]
                resp = store.get_online_features(
                    features=[f"{view}:{feature}"], entity_rows=[dict(zip(g.entities, k, strict=True)) for k in pending]
                ).to_dict(include_event_timestamps=True)
                t_seen = time.time()
                for k, ts in zip(pending, resp[f"{feature}__ts"], strict=True):
                    if ts >= event_w:
                        seen[(view, k)] = t_seen - (wall_w + delay)
            time.sleep(max(0.0, poll_s - (time.time() - t_round)))
        stop.set()
        sent.join()
        log(f"  sent {sent.count:,} events; {len(seen):,}/{total:,} values seen")
    finally:
        stop.set()
        job.cancel().result()
        clean_up(cfg, opt, topic, log=log)
    lat = np.array(sorted(seen.values()))
    per_view = {
        v: round(float(np.percentile([t for (w, _), t in seen.items() if w == v], 99)), 2)
        for v in keys
        if any(w == v for w, _ in seen)
    }
    return {
        "freshness_p50_s": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "freshness_p99_s": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "freshness_p99_s_by_view": per_view,
        "freshness_values": len(lat),
        "freshness_missed": total - len(lat),
        "freshness_rate_events_per_s": rate,
        "freshness_w_on_the_hour": event_w % 3600 == 0,
    }


class _StampProbe:
    """Which keys' values in Feast's Redis store are stamped at or after a time: one pipelined HGET of
    the view's timestamp field per key, the key and field as Feast's Redis store writes them (helpers
    of Feast's own; should a Feast upgrade change that layout, the run reports every value missed)."""

    def __init__(self, store):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        self.client = feast_private.redis_client(store)
        self._timestamp = Timestamp

        @functools.cache  # the same keys every round
        def redis_key(names: tuple[str, ...], values: tuple[str, ...]) -> bytes:
            entity = EntityKey(join_keys=list(names), entity_values=[Value(string_val=v) for v in values])
            return feast_private.redis_key(store, entity)

        self._key = redis_key

    def forget(self, view: str, names: tuple[str, ...], keys: list[tuple]) -> None:
        """Delete these entities' values (every view's: the run writes them all again)."""
        with self.client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.delete(self._key(names, k))
            pipe.execute()

    def stamped_since(self, view: str, names: tuple[str, ...], keys: list[tuple], since_s: int) -> list[tuple]:
        with self.client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hget(self._key(names, k), f"_ts:{view}")
            stamps = pipe.execute()
        return [
            k for k, raw in zip(keys, stamps, strict=True) if raw and self._timestamp.FromString(raw).seconds >= since_s
        ]


class _Sender(threading.Thread):
    """Sends each record when the wall clock reaches its arrival time (the simulator's; with no faults
    configured, its event time) plus `shift_ms`, so event time follows the wall clock. A thread of its
    own: sending must not wait for the poller's reads, or the watermark stalls while it reads."""

    def __init__(self, cfg: Settings, topic: str, sim, stop: threading.Event, shift_ms: int = 0):
        super().__init__(daemon=True)
        self.cfg, self.topic, self.sim, self.stop, self.shift_ms = cfg, topic, sim, stop, shift_ms
        self.count = 0

    def run(self) -> None:
        from flywheel.events.producer import EventProducer

        arrival, n = self.sim.arrival_ms, len(self.sim.values)
        with EventProducer(self.cfg.kafka, self.topic, validate_events=False) as producer:
            while self.count < n and not self.stop.is_set():
                now_ms = time.time() * 1000 - self.shift_ms
                while self.count < n and arrival[self.count] <= now_ms:
                    producer.send_raw(self.sim.values[self.count], self.sim.keys[self.count])
                    self.count += 1
                time.sleep(0.01)


def _firing_keys(values: list[bytes], groups, lo_ms: int, hi_ms: int) -> dict:
    """For each group, the entity keys (tuples) with an event of the group's in [lo_ms, hi_ms): their
    values change at hi_ms."""
    import orjson

    out: dict = {g: set() for g in groups}
    for v in values:
        try:
            e = orjson.loads(v)
            if not lo_ms <= e["event_time"] < hi_ms:
                continue
            for g in groups:
                if g.where == "is_click = 1" and e["event_type"] != "click":
                    continue
                if any(not e.get(k) for k in g.entities):
                    continue
                out[g].add(tuple(e[k] for k in g.entities))
        except (orjson.JSONDecodeError, TypeError, KeyError):
            continue  # the simulator's malformed records
    return {g: sorted(ks) for g, ks in out.items()}


def online_sink_seconds(cfg: Settings, values: int, log=print) -> float:
    """Wall time of a bounded job that writes `values` values, each of another key, of user_stats_1h into
    Redis through FeastRedisSink (the sink alone: a generated source, no aggregation)."""
    from benchmarks.results import timed
    from flink_jobs import online_sink

    source = (
        "CREATE TEMPORARY TABLE seq (n BIGINT) WITH ('connector' = 'datagen', 'fields.n.kind' = 'sequence', "
        f"'fields.n.start' = '1', 'fields.n.end' = '{values}', 'rows-per-second' = '100000000')"
    )
    query = (
        "SELECT CONCAT('bench-sink-', CAST(n AS STRING)) AS user_id, n AS user_impressions_1h, n % 7 AS "
        "user_clicks_1h, n % 3 AS user_purchases_1h, CAST(n % 7 AS DOUBLE) / n AS user_ctr_1h, "
        "CAST(NULL AS DOUBLE) AS user_debiased_ctr_1h, "
        "CAST(TIMESTAMPADD(MINUTE, CAST(n % 1000 AS INT), TIMESTAMP '2026-01-05 00:00:00.001') AS TIMESTAMP(3)) "
        "AS event_timestamp FROM seq"
    )
    seconds, _ = timed(
        f"FeastRedisSink, {values:,} values",
        lambda: online_sink.write_query(cfg, "user_stats_1h", query, (source,), parallelism=cfg.flink.parallelism),
        log,
    )
    return seconds


def run(cfg: Settings, log=print) -> dict:
    """All figures; each is merged into results.json as soon as it is measured (the run is long)."""
    from benchmarks.results import merge
    from benchmarks.spark_processor import processor_seconds
    from flywheel.clients import feast_store

    log(f"  {feast_store.apply(cfg)}")  # the job's Redis sink is configured from the registry
    figures: dict = {"features_bench_shape": ", ".join(f"{k}={v}" for k, v in SHAPE.items()) + f", calibration={SMALL}"}

    def keep(**new) -> None:
        figures.update(new)
        merge(cfg, figures)

    n = SHAPE["events"]
    big, small = prefill(cfg, n, log), prefill(cfg, SMALL, log)
    keep(naive_consumer_events_per_s=round(naive_consumer(cfg, big, n, log)))
    wall: dict[str, dict[str, float]] = {}

    def sustained(job: str) -> int:
        return round((n - SMALL) / max(wall[job]["big"] - wall[job]["small"], 1e-9))

    for job in ("passthrough", "features"):
        (big_s, repeated), (small_s, _) = flink_seconds(cfg, big, job, log), flink_seconds(cfg, small, job, log)
        wall[job] = {"big": big_s, "small": small_s}
        keep(**{f"flink_{job}_wall_s": round(big_s, 1), f"flink_{job}_calibration_wall_s": round(small_s, 1)})
        if repeated is not None:
            keep(flink_event_log_repeated_rows=repeated)
    keep(
        flink_events_per_s=sustained("features"),
        flink_passthrough_events_per_s=sustained("passthrough"),
        flink_events_per_s_incl_startup=round(n / wall["features"]["big"]),
        flink_vs_passthrough=round(sustained("features") / sustained("passthrough"), 3),
    )
    # At the rate (10k events/s) even if the job sustains less on a replay: live, event time
    # advances at wall-clock speed, so each key emits once per slide instead of once per event. And at a
    # rate well inside what the job sustains, which shows the pipeline's own latency, not a backlog's.
    keep(**freshness(cfg, log))
    keep(**{f"{k}_on_the_hour": v for k, v in freshness(cfg, log, on_the_hour=True).items()})
    keep(**{f"{k}_at_{EASY_RATE}": v for k, v in freshness(cfg, log, rate=EASY_RATE).items()})
    # The sink alone, sustained (the same calibration as the jobs): fresh keys, so every value is written.
    client = feast_private.redis_client(feast_store.store(cfg))

    def forget() -> None:
        for batch in _batched(client.scan_iter(match=b"*bench-sink-*", count=10_000), 10_000):
            client.delete(*batch)

    forget()
    big_s = online_sink_seconds(cfg, SINK_VALUES, log)
    forget()
    small_s = online_sink_seconds(cfg, SINK_VALUES // 10, log)
    forget()
    keep(online_sink_values_per_s=round((SINK_VALUES - SINK_VALUES // 10) / max(big_s - small_s, 1e-9)))
    # Stretch: Feast's own stream ingestion (its Spark-Kafka processor), two of our eight views.
    big_s, small_s = processor_seconds(cfg, big, n, log), processor_seconds(cfg, small, SMALL, log)
    keep(
        feast_spark_processor_events_per_s=round((n - SMALL) / max(big_s - small_s, 1e-9)),
        feast_spark_processor_wall_s=round(big_s, 1),
        feast_spark_processor_calibration_wall_s=round(small_s, 1),
    )
    _chart(cfg, figures)
    return figures


def _chart(cfg: Settings, f: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {
        "Flink pass-through (ceiling)": f["flink_passthrough_events_per_s"],
        "feature job (Parquet + Redis)": f["flink_events_per_s"],
        "naive Python consumer (counts only)": f["naive_consumer_events_per_s"],
        "Feast Spark processor (2 of 8 views)": f["feast_spark_processor_events_per_s"],
    }
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(bars)
    drawn = ax.barh(names, [bars[k] for k in names], color=["#8d99ae", "#264653", "#e76f51", "#e9c46a"])
    for bar, name in zip(drawn, names, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bars[name]:,}/s", va="center")
    ax.set_xlabel(f"sustained events/s, {SHAPE['events']:,} simulator events, parallelism 2")
    ax.invert_yaxis()
    ax.set_xlim(0, max(bars.values()) * 1.35)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")  # full numbers overlap at this width
    fig.tight_layout()
    fig.savefig(cfg.var_dir / "bench" / "features.png", dpi=110)
    plt.close(fig)


def _batched(items, n: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
