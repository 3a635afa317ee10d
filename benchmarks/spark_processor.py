"""The stretch figure of the feature benchmark: Feast's own stream ingestion path on the same topic.

Feast's stream processor (`feast.infra.contrib.spark_kafka_processor.SparkKafkaProcessor`) runs a Spark
Structured Streaming query per stream feature view: Kafka -> from_json -> the view's Spark `udf` ->
every micro-batch `toPandas()`, the latest row per entity, `write_to_online_store` (Redis). Here two
views compute what our job's user_stats_1h and item_stats_1h compute (impressions, clicks, purchases over
1 h sliding every 5 min, with the job's watermark delay), one after the other in a local Spark session with two
cores: the time is the sum, since two of Feast's queries would share one checkpoint (below).

What it does not do, and our job does: exactly-once (it is at-least-once, and Feast hard-codes its
checkpoint to /tmp/checkpoint/, shared by every query, which we must delete before each run), dedup,
dead-lettering, late-event accounting, the offline store, the other six feature views.

Like the Flink figures, the rate is sustained: (N - n) / (T_N - T_n) over the big and the calibration topic.
Needs the `spark` dependency group (`make bench` installs it) and Spark's Kafka source jars (`make setup`).
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path

from feature_repo.spec import WINDOWS
from flywheel.settings import Settings

PROJECT = "flywheel_spark_bench"  # a Feast project of its own: its own Redis keys, deleted after each run
FEAST_CHECKPOINT = Path("/tmp/checkpoint")  # hard-coded in SparkKafkaProcessor._write_stream_data
COUNTS = {"impressions": "impression", "clicks": "click", "purchases": "purchase"}  # feature: event_type
MAX_OFFSETS_PER_TRIGGER = 200_000  # micro-batches of a streaming run, not one batch of the whole topic


def _spark_jars(cfg: Settings) -> list[Path]:
    import pyspark

    jars = sorted((cfg.build_dir / "jvm" / "spark").glob("*.jar"))
    kafka = [j for j in jars if j.name.startswith("spark-sql-kafka")]
    if not kafka:
        raise RuntimeError(
            f"Spark's Kafka source jar is missing from {cfg.build_dir / 'jvm' / 'spark'}: run `make setup`"
        )
    if f"-{pyspark.__version__}.jar" not in kafka[0].name:
        raise RuntimeError(
            f"{kafka[0].name} does not match pyspark {pyspark.__version__}: keep infra/jvm/pom.xml's spark.version "
            "and pyproject.toml's spark group on one version, then `make setup`"
        )
    return jars


def _session(cfg: Settings):
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise RuntimeError("pyspark is not installed: `make bench` installs the `spark` dependency group") from e
    return (
        SparkSession.builder.master("local[2]")
        .appName("feast-spark-kafka-processor")
        .config("spark.jars", ",".join(str(j) for j in _spark_jars(cfg)))
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", "4")  # the default 200 would be tasks, not work, on 2 cores
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.numRecentProgressUpdates", "10000")  # _await_input sums all of them
        .getOrCreate()
    )


def _event_schema() -> str:
    """Spark's DDL for the event fields the views read, typed from the event contract (from_json skips
    the others)."""
    from flink_jobs.contract_sql import SQL_TYPES, base_type
    from flywheel.events.schema import schema

    props = schema()["properties"]
    fields = ("user_id", "item_id", "event_type", "event_time")
    # event_type is an enum of strings, with no type of its own
    return ", ".join(f"{f} {SQL_TYPES[base_type(props[f]) or 'string']}" for f in fields)


def _window_counts(key: str, watermark_delay_s: int):
    """The view's Spark udf: per key, impressions/clicks/purchases over 1 h sliding every 5 min."""
    w = WINDOWS["1h"]
    size, slide = f"{int(w.size.total_seconds())} seconds", f"{int(w.slide.total_seconds())} seconds"

    def udf(df):
        from pyspark.sql import functions as F

        def n(kind: str):
            return F.sum((F.col("event_type") == kind).cast("long"))

        return (
            df.withColumn("ts", (F.col("event_time") / 1000).cast("timestamp"))
            .withWatermark("ts", f"{watermark_delay_s} seconds")
            .groupBy(F.window("ts", size, slide), key)
            .agg(*(n(kind).alias(name) for name, kind in COUNTS.items()))
            .select(key, F.col("window.end").alias("event_timestamp"), *COUNTS)
        )

    return udf


def _store(cfg: Settings, topic: str, work: Path):
    """A throwaway Feast project (own registry, same Redis, own key space) and the two stream views.

    The registry holds each view as a plain feature view of the same name and schema, and the processor
    gets the stream feature view object itself: Feast stores a stream view's udf with dill, and the dill
    here (0.3.1.1, pinned by apache-flink's Beam) writes Python 3.11 code that it cannot load again
    ("code() argument 13 must be str"), which fails every later registry read."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, KafkaSource, RepoConfig, ValueType
    from feast.data_format import JsonFormat
    from feast.stream_feature_view import StreamFeatureView
    from feast.types import Int64

    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(work / "registry.db"),
        online_store={"type": "redis", "connection_string": cfg.redis.connection_string},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    fs = FeatureStore(config=config)
    objects, views = [], []
    schema = [Field(name=c, dtype=Int64) for c in COUNTS]
    for key in ("user_id", "item_id"):
        name = f"spark_{key.removesuffix('_id')}_stats_1h"
        entity = Entity(name=key.removesuffix("_id"), join_keys=[key], value_type=ValueType.STRING)
        # The batch side of the source: an empty table of the view's columns (Feast infers from it).
        path = work / f"{key}.parquet"
        columns = {key: pa.array([], pa.string()), "event_timestamp": pa.array([], pa.timestamp("ms", "UTC"))}
        pq.write_table(pa.table({**columns, **{c: pa.array([], pa.int64()) for c in COUNTS}}), path)
        batch = FileSource(name=f"{name}_batch", path=str(path), timestamp_field="event_timestamp")
        source = KafkaSource(
            name=f"{name}_kafka",
            timestamp_field="event_timestamp",
            message_format=JsonFormat(schema_json=_event_schema()),
            kafka_bootstrap_servers=cfg.kafka.bootstrap_servers,
            topic=topic,
            batch_source=batch,
            watermark_delay_threshold=timedelta(seconds=cfg.features.watermark_delay_s),
        )
        ttl = timedelta(hours=2)
        objects += [entity, FeatureView(name=name, source=batch, entities=[entity], ttl=ttl, schema=schema)]
        views.append(
            StreamFeatureView(
                name=name,
                source=source,
                entities=[entity],
                ttl=ttl,
                schema=schema,
                timestamp_field="event_timestamp",
                mode="spark",
                udf=_window_counts(key, cfg.features.watermark_delay_s),
            )
        )
    fs.apply(objects)  # type: ignore[arg-type]  # entities, sources and views
    return fs, views


def processor_seconds(cfg: Settings, topic: str, events: int, log=print) -> float:
    """Wall time for Feast's processor to take `events` events of `topic` through both views into Redis.

    One view at a time: every query of Feast's processor checkpoints to the same /tmp/checkpoint/, so a
    second query started beside the first would share its checkpoint (its offsets and state)."""
    from feast.infra.contrib.spark_kafka_processor import SparkKafkaProcessor, SparkProcessorConfig

    work = cfg.var_dir / "bench" / "spark" / uuid.uuid4().hex[:8]
    work.mkdir(parents=True)
    _entity_keys(cfg, delete=True)  # the count below must be this run's
    spark = _session(cfg)
    seconds = 0.0
    try:
        fs, views = _store(cfg, topic, work)
        config = SparkProcessorConfig(
            mode="spark", source="kafka", spark_session=spark, processing_time="1 second", query_timeout=1
        )
        options = {"startingOffsets": "earliest", "maxOffsetsPerTrigger": str(MAX_OFFSETS_PER_TRIGGER),
                   **{f"kafka.{k}": v for k, v in cfg.kafka.java_config(shaded=False).items()}}  # fmt: skip
        for view in views:
            shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)  # else the query resumes the last one's offsets
            t0 = time.perf_counter()
            proc = SparkKafkaProcessor(fs=fs, sfv=view, config=config, stream_source_options=options)
            query = proc.ingest_stream_feature_view()  # returns after query_timeout, the query still running
            try:
                _await_input(query, events, view.name, log)
            finally:
                query.stop()
            seconds += time.perf_counter() - t0
            log(f"  feast spark processor, {view.name} on {topic}: {time.perf_counter() - t0:.1f}s")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)
    written = _entity_keys(cfg, delete=True)
    if not written:
        raise RuntimeError(
            f"Feast's Spark processor wrote nothing to Redis from {topic}: the figure would be meaningless"
        )
    log(f"  feast spark processor: {written:,} users and items in Redis")
    return seconds


def _entity_keys(cfg: Settings, delete: bool) -> int:
    """How many entity keys of the benchmark's Feast project Redis holds (Feast's Redis keys end with the
    project name), deleting them if asked."""
    from flywheel.stack.services import Redis

    client = Redis(cfg).client()
    keys = list(client.scan_iter(match=f"*{PROJECT}", count=10_000))
    for start in range(0, len(keys) if delete else 0, 1_000):
        client.delete(*keys[start : start + 1_000])  # one round trip per thousand keys, not per key
    return len(keys)


def _await_input(query, events: int, name: str, log) -> None:
    """Until the query has taken `events` input rows through complete micro-batches."""
    last_log = time.perf_counter()
    while True:
        if query.exception():
            raise RuntimeError(f"Feast's Spark query for {name} failed: {query.exception()}")
        done = sum(p["numInputRows"] for p in query.recentProgress)
        if done >= events and not query.status["isTriggerActive"]:
            return
        if time.perf_counter() - last_log > 30:
            log(f"    {name}: {done:,} of {events:,} events")
            last_log = time.perf_counter()
        time.sleep(0.5)
