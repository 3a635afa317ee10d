"""The feature job: interaction events from Kafka into Feast's offline (Parquet) and online (Redis) stores.

    Kafka events ──► contract check ──► reject ─────────────────────────► dead-letter topic (with reason)
       (watermark at source)    └─► valid ─► late in its partition? ────► late-events topic
                                               └─► on time ─► dedup(event_id) ─► one windowed aggregation
                                                   per feature group (spec.py) ─► Parquet (committed on
                                                   checkpoint) and ─► FeastRedisSink (Feast's Redis layout)

Every operator runs in the JVM (Flink SQL, and flink_jobs/jvm): Python only declares the job. Checkpoints
are EXACTLY_ONCE; Kafka offsets are restored from them; the file sink and the transactional Kafka sinks
commit on checkpoint; the Redis sink writes newer-only upserts and flushes before each checkpoint.

Entry function: `run(cfg, ...)`, embedded (a local mini-cluster, used by `make demo` and tests) or on
the cluster (`flywheel flink submit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from feature_repo.spec import EXAMINATION_ETA, GROUPS, FeatureGroup
from flink_jobs import online_sink
from flink_jobs.common import FUNCTIONS, connector_jars, embedded_logs_to_file, kafka_security_options, with_clause
from flink_jobs.contract_sql import fields_sql, reject_reason_sql
from flywheel.compat import pyflink as flink_private
from flywheel.settings import Settings

JOB_NAME = "flywheel-features"  # what the ops DAG looks for on the cluster
SQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "timestamp": "TIMESTAMP(3)"}


class ViewStep(NamedTuple):
    """One temporary view of the job: its name, its SQL, and the rowtime column when it sits behind a
    DataStream boundary (read by more than one view)."""

    name: str
    query: str
    rowtime: str | None = None


@dataclass(frozen=True)
class JobOptions:
    topic: str
    offline_dir: Path
    dlq_topic: str
    late_topic: str
    group_id: str
    bounded: bool = False  # stop at the topic's current end (tests, demo, backfills)
    parallelism: int = 2
    job_name: str = JOB_NAME
    online: bool = True  # False: Parquet only (offline backfills; the benchmark's offline-only figure)

    def argv(self) -> list[str]:
        """The arguments of `main` (what `flywheel flink submit` passes on to `flink run`) for these options."""
        if not self.online:
            raise ValueError("an offline-only run is embedded only: `main` has no flag for it")
        given = {"--topic": self.topic, "--group-id": self.group_id, "--dlq-topic": self.dlq_topic,
                 "--late-topic": self.late_topic, "--offline-dir": str(self.offline_dir),
                 "--parallelism": str(self.parallelism), "--job-name": self.job_name}  # fmt: skip
        return [*(["--bounded"] if self.bounded else []), *(x for pair in given.items() for x in pair)]


def options(cfg: Settings, **overrides) -> JobOptions:
    base: dict[str, Any] = dict(
        topic=cfg.kafka.topics.events,
        offline_dir=cfg.offline_dir,
        dlq_topic=cfg.kafka.topics.dead_letter,
        late_topic=cfg.kafka.topics.late,
        group_id=cfg.features.group_id,
        parallelism=cfg.flink.parallelism,
    )
    base.update(overrides)
    return JobOptions(**base)


def committed_parquet(offline_dir: Path, view: str) -> list[str]:
    """The Parquet files of a feature view that a checkpoint has committed (in-progress ones are hidden)."""
    return sorted(str(p) for p in (offline_dir / view).glob("dt=*/hr=*/part-*"))


def _interval(seconds: float) -> str:
    """The largest unit that divides it (interval literals keep to two digits)."""
    seconds = int(seconds)
    for unit, size in (("DAY", 86400), ("HOUR", 3600), ("MINUTE", 60), ("SECOND", 1)):
        if seconds % size == 0 and seconds // size < 100:
            return f"INTERVAL '{seconds // size}' {unit}"
    raise ValueError(f"{seconds}s cannot be written as a two-digit interval; use whole minutes, hours or days")


def source_ddl(cfg: Settings, opt: JobOptions) -> str:
    kafka = {
        "connector": "kafka",
        "topic": opt.topic,
        "properties.bootstrap.servers": cfg.kafka.bootstrap_servers,
        "properties.group.id": opt.group_id,
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "earliest",
        "format": "raw",
        **kafka_security_options(cfg),
    }
    if opt.bounded:
        kafka["scan.bounded.mode"] = "latest-offset"
    # Event time comes from the payload. A record without a usable one (it will be dead-lettered) gets
    # the epoch: it must never move the watermark (a wall-clock fallback would make a replay of old
    # events all "late" after the first malformed record).
    return f"""
CREATE TABLE events_raw (
  payload STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  event_time AS COALESCE(TO_TIMESTAMP_LTZ(TRY_CAST(JSON_TEXT(payload, 'event_time') AS BIGINT), 3),
                         TO_TIMESTAMP_LTZ(0, 3)),
  WATERMARK FOR event_time AS event_time - {_interval(cfg.features.watermark_delay_s)}
) WITH (
  {with_clause(kafka)}
)"""


def create_source(t_env, cfg: Settings, opt: JobOptions) -> None:
    """The `events_raw` table, and Flywheel's SQL functions first (its watermark reads the event time
    with JSON_TEXT)."""
    for name, cls in FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION {name} AS '{cls}' LANGUAGE JAVA")
    t_env.execute_sql(source_ddl(cfg, opt))


def _kafka_sink(cfg: Settings, name: str, topic: str, columns: str, opt: JobOptions) -> str:
    props = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": cfg.kafka.bootstrap_servers,
        "format": "json",
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": f"{opt.job_name}-{name}",
        "properties.transaction.timeout.ms": "900000",
        **kafka_security_options(cfg),
    }
    return f"CREATE TABLE {name} ({columns}) WITH (\n  {with_clause(props)}\n)"


def _checked_select() -> str:
    fields = {
        "event_id": "STRING",
        "user_id": "STRING",
        "item_id": "STRING",
        "item_category": "STRING",
        "event_type": "STRING",
        "request_id": "STRING",
        "list_position": "BIGINT",
        "propensity": "DOUBLE",
        "source": "STRING",
        "context__policy": "STRING",  # the ranking service's model version and, in an interleaved list, the
        "context__team": "STRING",  # model a slot came from: what online evaluation groups by
        "schema_version": "BIGINT",
        "session_id": "STRING",
    }

    # `position` is a reserved word in Flink SQL: the column is list_position; context__x is x.
    def column(f: str, t: str) -> str:
        if t != "STRING":
            return f"TRY_CAST(j_{f.removeprefix('list_')} AS {t}) AS {f}"
        return f"j_{f} AS {f.removeprefix('context__')}"

    parsed = ",\n  ".join(column(f, t) for f, t in fields.items())
    # The payload is parsed once (JSON_FIELDS); the contract and the columns read its columns.
    return f"""SELECT payload, event_time AS event_ts,
  {parsed},
  extras,
  {reject_reason_sql()} AS reject_reason,
  kafka_partition,
  CURRENT_WATERMARK(event_time) AS wm
FROM events_raw, LATERAL TABLE({fields_sql()}) AS p"""


# Dedup by event-time window (Flink's window deduplication): an event and its copies carry the same
# event_time, so they fall into the same one-second window, and a copy that is still on time reaches that
# window before the watermark closes it; a copy behind the watermark went to the late topic upstream. The
# state is therefore exactly what is needed and is dropped when the watermark passes, with no TTL (a
# processing-time TTL would also have expired the sliding windows' state of a key silent for a while).
CLEAN_SELECT = f"""SELECT event_id, request_id, user_id, item_id, item_category, event_type, list_position, propensity,
  source, policy, team, schema_version, session_id, extras, event_time AS event_ts,
  CASE WHEN event_type = 'impression' THEN 1 ELSE 0 END AS is_impression,
  CASE WHEN event_type = 'click' THEN 1 ELSE 0 END AS is_click,
  CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END AS is_purchase,
  CASE WHEN event_type = 'impression' THEN POWER(CAST(list_position AS DOUBLE), -{EXAMINATION_ETA}) ELSE 0.0 END AS exam
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, event_id ORDER BY event_time ASC) AS rn
  FROM TABLE(TUMBLE(TABLE events_ontime, DESCRIPTOR(event_time), INTERVAL '1' SECOND))
) WHERE rn = 1"""


def _materialize(t_env, name: str, query: str, lateness_delay_ms: int | None = None) -> None:
    """Register `query` as view `name` behind a DataStream boundary (JVM only, no Python), with
    `event_time` as its rowtime and the upstream watermark. With `lateness_delay_ms`, the rows' `wm` column
    is raised to the bound their lateness is judged against (flink_jobs/jvm PartitionLateness).

    The planner pushes each branch's projection down into shared sub-plans. Branches that need
    different columns then get their own copy: their own Kafka reader, their own dedup. The boundary
    makes every branch consume one stream: one reader (so the late and on-time branches agree on the
    watermark, and the counts reconcile) and one dedup, not one per feature group.
    """
    from pyflink.table import DataTypes, Schema

    schema = (
        Schema.new_builder()
        .column_by_metadata("event_time", DataTypes.TIMESTAMP_LTZ(3), "rowtime")
        .watermark("event_time", "SOURCE_WATERMARK()")
        .build()
    )
    table = t_env.sql_query(query)
    stream = t_env.to_data_stream(table)
    if lateness_delay_ms is not None:  # chained to the source: each partition's records in their order
        names = table.get_schema().get_field_names()
        fields = [names.index(c) for c in ("event_ts", "kafka_partition", "wm")]
        judge = flink_private.jvm().io.flywheel.flink.PartitionLateness(*fields, lateness_delay_ms)
        stream = flink_private.transform(stream, "lateness", flink_private.java_stream(stream).getType(), judge)
    t_env.create_temporary_view(name, t_env.from_data_stream(stream, schema))


def _stream_view(t_env, name: str, query: str, rowtime: str | None = None):
    """Register `query` as view `name` behind a DataStream boundary (JVM only) and return the stream.

    Two uses. A panes view read by more than one view (`pane_views`): otherwise each reader plans its own
    copy; `rowtime` names the column that stays its event time, carrying the upstream watermark. And a
    feature view's output has two consumers (the Parquet sink in the statement set, the Redis sink as
    a DataStream) that are otherwise planned apart, each with its own copy of the view's operators: both
    read the returned stream instead."""
    from pyflink.table import Schema

    stream = t_env.to_data_stream(t_env.sql_query(query))
    if rowtime:
        schema = Schema.new_builder().watermark(rowtime, "SOURCE_WATERMARK()").build()
        t_env.create_temporary_view(name, t_env.from_data_stream(stream, schema))
    else:
        t_env.create_temporary_view(name, t_env.from_data_stream(stream))
    return stream


def _register_streams(t_env, cfg: Settings) -> None:
    """events_checked (every record, with its verdict and lateness bound), events_ontime, events_clean
    (deduplicated)."""
    _materialize(t_env, "events_checked", _checked_select(), lateness_delay_ms=cfg.features.watermark_delay_s * 1000)
    t_env.create_temporary_view(
        "events_ontime",
        t_env.sql_query("SELECT * FROM events_checked WHERE reject_reason IS NULL AND (wm IS NULL OR event_ts > wm)"),
    )
    _materialize(t_env, "events_clean", CLEAN_SELECT)


def _window(g: FeatureGroup, table: str) -> str:
    size, slide = int(g.window.size.total_seconds()), int(g.window.slide.total_seconds())
    if g.window.hopping:
        return f"TABLE(HOP(TABLE {table}, DESCRIPTOR(event_time), {_interval(slide)}, {_interval(size)}))"
    return f"TABLE(TUMBLE(TABLE {table}, DESCRIPTOR(event_time), {_interval(size)}))"


# Fractional event columns that sliding windows sum, and the fixed-point scale they are summed at
# (1e-11 resolution, far inside the reference check's 1e-9 relative tolerance; a BIGINT then holds sums
# up to 9.2e7, a user's examined impressions in one window). Every other summed column is a 0/1 count.
FIXED_POINT = {"exam": 10**11}


def _fixed(column: str) -> str:
    scale = FIXED_POINT.get(column)
    return f"CAST(ROUND({column} * {scale}) AS BIGINT)" if scale else f"CAST({column} AS BIGINT)"


def _unfixed(column: str, total: str) -> str:
    scale = FIXED_POINT.get(column)
    return f"(CAST({total} AS DOUBLE) / {scale})" if scale else total


def pane_views(groups: tuple[FeatureGroup, ...]) -> tuple[list[ViewStep], dict[str, str]]:
    """The per-slide partial sums (panes) of the sliding groups, shared: ((name, query, rowtime) of the
    views, in order; each sliding group's panes view).

    A window's value changes only when a slide of events enters it or leaves it, so a sliding group is
    computed from its keys' sums per slide (see `group_views`). Groups with the same keys and filter
    share them: one panes view per slide (user_stats_24h and _7d read the same hourly panes), and a
    slide that is a multiple of a finer one sums the finer panes, not the events (the hourly panes are
    twelve 5-minute ones). So each family's events are summed once, not once per group.

    Exact sums: every partial sum is a BIGINT (counts as they are, fractional columns in fixed point,
    FIXED_POINT), because added and subtracted DOUBLEs drift and an emptied window must sum to exactly 0,
    and a wide DECIMAL would be a BigDecimal in every operator and checkpoint."""
    families: dict[tuple, list[FeatureGroup]] = {}
    for g in groups:
        if g.emits_changes:
            families.setdefault((g.entities, g.where), []).append(g)
    views: list[ViewStep] = []
    of: dict[str, str] = {}
    named: set[str] = set()
    for n, ((entities, where), members) in enumerate(families.items()):
        keys = ", ".join(entities)
        cols = list(dict.fromkeys(c for g in members for c in g.summed_columns))
        family = "_".join(entities)
        if family in named:  # the same keys under another filter
            family = f"{family}_{n}"
        named.add(family)
        views.append(ViewStep(f"events_{family}", "SELECT * FROM events_clean" + (f" WHERE {where}" if where else "")))
        slides = sorted({int(g.window.slide.total_seconds()) for g in members})
        finest = slides[0]
        name = {slide: f"panes_{family}_{slide}s" for slide in slides}
        derived = [slide for slide in slides[1:] if slide % finest == 0]
        for slide in slides:
            if slide in derived:
                src, sums = f"TABLE {name[finest]}, DESCRIPTOR(t)", ", ".join(f"SUM({c}) AS {c}" for c in cols)
            else:
                src, sums = (
                    f"TABLE events_{family}, DESCRIPTOR(event_time)",
                    ", ".join(f"SUM({_fixed(c)}) AS {c}" for c in cols),
                )
            readers = sum(1 for g in members if g.window.slide.total_seconds() == slide)
            readers += len(derived) if slide == finest else 0
            query = (
                f"SELECT {keys}, {sums}, window_time AS t FROM TABLE(TUMBLE({src}, {_interval(slide)})) "
                f"GROUP BY {keys}, window_start, window_end, window_time"
            )
            # Read by more than one view: behind a boundary, or each reader would plan its own copy.
            views.append(ViewStep(name[slide], query, "t" if readers > 1 else None))
        for g in members:
            of[g.name] = name[int(g.window.slide.total_seconds())]
    return views, of


def group_views(g: FeatureGroup) -> list[ViewStep]:
    """(name, query, rowtime) of the views that end in g_<group>: keys, features, event_timestamp (the
    window end), only what changed. A sliding group's g_<group> reads sums_<group>, which
    `_sliding_sums` registers from the group's panes view (`pane_views`) first."""
    keys = ", ".join(g.entities)
    if not g.emits_changes:
        src = f"events_{g.name}"
        feats = ",\n  ".join(f"CAST({f.sql} AS {SQL_TYPES[f.dtype]}) AS {f.name}" for f in g.features)
        return [
            ViewStep(src, "SELECT * FROM events_clean" + (f" WHERE {g.where}" if g.where else "")),
            ViewStep(
                f"g_{g.name}",
                f"SELECT {keys}, {feats}, CAST(window_end AS TIMESTAMP(3)) AS event_timestamp "
                f"FROM {_window(g, src)} GROUP BY {keys}, window_start, window_end",
            ),
        ]

    # A sliding window's value changes only when a slide of events enters it or leaves it. So instead of
    # evaluating every (key, window) (a 7-day window sliding hourly: 168 per event), each key's panes
    # (its sums per slide) are turned into running sums that change at a pane's end and one window
    # later (`_sliding_sums`, the view sums_<group>). The value at a move holds the panes that ended in
    # (t - size, t], and is valid from just after the move (the window end).
    def running_sum(column: str) -> str:  # sums_<group> has one column per summed event column
        return _unfixed(column, column)

    running = ",\n  ".join(f"CAST({f.agg.expr(running_sum)} AS {SQL_TYPES[f.dtype]}) AS {f.name}" for f in g.features)
    return [
        ViewStep(
            f"g_{g.name}",
            f"SELECT {keys}, {running}, CAST(t + INTERVAL '0.001' SECOND AS TIMESTAMP(3)) AS event_timestamp "
            f"FROM sums_{g.name}",
        )
    ]


def _sliding_sums(t_env, g: FeatureGroup, panes: str) -> None:
    """View sums_<group>: the group's window sums for each key, emitted when they change, stamped with
    the move (flink_jobs/jvm SlidingSums: one keyed JVM operator, where SQL needed three stateful steps
    and two network exchanges; docs/design/feature-job.md)."""
    from pyflink.table import DataTypes, Schema

    jvm = flink_private.jvm()
    keys, cols = list(g.entities), g.summed_columns
    query = f"SELECT {', '.join(keys + cols)}, t FROM {panes}"
    j = flink_private.java_stream(t_env.to_data_stream(t_env.sql_query(query)))
    out = jvm.io.flywheel.flink.SlidingSums.outputType(",".join(keys), ",".join(cols))
    size_ms = int(g.window.size.total_seconds() * 1000)
    sums = (
        j.keyBy(jvm.io.flywheel.flink.RowKey(len(keys)))
        .process(jvm.io.flywheel.flink.SlidingSums(len(keys), len(cols), size_ms), out)
        .name(f"sliding-sums-{g.name}")
    )
    # Declared, or the conversion back to a table drops the watermark, and the Redis sink behind this
    # view would never see one (no live writes).
    schema = (
        Schema.new_builder()
        .column_by_metadata("move_time", DataTypes.TIMESTAMP_LTZ(3), "rowtime")
        .watermark("move_time", "SOURCE_WATERMARK()")
        .build()
    )
    t_env.create_temporary_view(f"sums_{g.name}", t_env.from_data_stream(flink_private.python_stream(sums), schema))


def _parquet_table(table: str, folder: Path, columns: str, partitions: str) -> str:
    """A Parquet table under the offline store, committed on checkpoint (a _SUCCESS file per partition)."""
    props = {
        "connector": "filesystem",
        "path": folder.as_uri(),
        "format": "parquet",
        "parquet.utc-timezone": "true",
        # One open writer per (table, partition) until the next checkpoint: keep each one small.
        "parquet.block.size": "8388608",
        "parquet.page.size": "65536",
        "sink.partition-commit.policy.kind": "success-file",
        "sink.partition-commit.trigger": "process-time",
        "sink.partition-commit.delay": "0 s",
    }
    return f"CREATE TABLE {table} ({columns}) PARTITIONED BY ({partitions}) WITH (\n  {with_clause(props)}\n)"


def _offline_sink(g: FeatureGroup, opt: JobOptions) -> str:
    cols = [f"{k} STRING" for k in g.entities] + [f"{f.name} {SQL_TYPES[f.dtype]}" for f in g.features]
    cols += ["event_timestamp TIMESTAMP(3)", "dt STRING", "hr STRING"]
    return _parquet_table(f"offline_{g.name}", opt.offline_dir / g.name, ", ".join(cols), "dt, hr")


EVENT_LOG = "events"  # the deduplicated on-time events, where training labels come from (training/labels.py)


def _event_log_sink(opt: JobOptions) -> str:
    """The clean event log, partitioned like the feature views. `position` keeps its contract name here;
    `extras` holds the fields outside the contract (a newer producer's), as JSON."""
    cols = (
        "event_id STRING, request_id STRING, user_id STRING, item_id STRING, item_category STRING, "
        "event_type STRING, `position` BIGINT, propensity DOUBLE, source STRING, policy STRING, team STRING, "
        "schema_version BIGINT, session_id STRING, extras STRING, event_timestamp TIMESTAMP(3), dt STRING, hr STRING"
    )
    return _parquet_table("offline_events", opt.offline_dir / EVENT_LOG, cols, "dt, hr")


def _audit_sink(opt: JobOptions) -> str:
    cols = "stage STRING, minute_end TIMESTAMP(3), events BIGINT, dt STRING"
    return _parquet_table("audit", opt.offline_dir / "_audit", cols, "dt")


def environment(cfg: Settings, opt: JobOptions):
    """The stream and table environments every Flywheel streaming job runs in: connector jars,
    EXACTLY_ONCE checkpoints into durable storage, restart strategy, UTC. Returns (env, t_env)."""
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    embedded_logs_to_file(cfg)
    conf = Configuration()
    conf.set_string("pipeline.jars", ";".join(p.as_uri() for p in connector_jars(cfg)))
    # Embedded runs: ~20 window operators share each slot's managed memory; the default is too thin.
    conf.set_string("taskmanager.memory.managed.size", "768m")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(opt.parallelism)
    env.enable_checkpointing(cfg.features.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    t_env = StreamTableEnvironment.create(env)
    tc = t_env.get_config()
    tc.set("pipeline.name", opt.job_name)
    tc.set("table.local-time-zone", "UTC")
    if not opt.bounded:
        # Not for replays of a backlog: a partition the reader is merely slow to get to would be marked
        # idle, the watermark would jump to the fastest partition, and its events would all turn late.
        tc.set("table.exec.source.idle-timeout", f"{cfg.features.idle_timeout_s} s")
    # Keyed state is small (open panes and dedup windows, one running sum per key) and the heap backend is
    # faster; RocksDB, with incremental checkpoints, is the choice when the keys outgrow the heap.
    tc.set("state.backend.type", cfg.features.state_backend)
    tc.set("execution.checkpointing.incremental", str(cfg.features.state_backend == "rocksdb").lower())
    tc.set("execution.checkpointing.dir", cfg.checkpoint_uri)
    tc.set("execution.checkpointing.savepoint-dir", cfg.savepoint_uri)
    tc.set("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    # Aligned checkpoints: unaligned ones persist the in-flight window output, which is large in a replay.
    # Bounded: a job that cannot heal (a missing view, a wrong password) stops and says why instead of
    # restarting forever; the count resets after an hour without failures.
    tc.set("restart-strategy.type", "exponential-delay")
    tc.set("restart-strategy.exponential-delay.attempts-before-reset-backoff", str(cfg.features.restart_attempts))
    # A checkpoint that expires while barriers queue behind a backlog must not fail the job: the restart
    # would replay from the last checkpoint, and at the end of a bounded input the file sink has already
    # committed its final files (the suspected cause of duplicate Parquet rows in a 200k-event run).
    tc.set("execution.checkpointing.timeout", "30 min")
    tc.set("execution.checkpointing.tolerable-failed-checkpoints", "10")
    # One-phase window aggregation: the local pre-aggregation's buffers are flushed at every slide the
    # watermark crosses, which a replay does thousands of times.
    tc.set("table.optimizer.agg-phase-strategy", "ONE_PHASE")
    # Chained operators hand records on without a defensive copy (the SQL operators do not keep
    # references to their input; the Redis sink copies what it holds).
    tc.set("pipeline.object-reuse", "true")
    return env, t_env


def build(cfg: Settings, opt: JobOptions):
    """Create the environment and declare the whole job. Returns (stream env, statement set)."""
    from flywheel.clients.kafka import ensure_topics

    # Before anything starts: a view missing from Feast's registry (or with other columns) must stop the
    # build with the fix, not fail the running job over and over.
    sinks = online_sink.check_registry(cfg) if opt.online else {}
    ensure_topics(cfg.kafka, [opt.topic, opt.dlq_topic, opt.late_topic])
    env, t_env = environment(cfg, opt)
    create_source(t_env, cfg, opt)
    _register_streams(t_env, cfg)
    t_env.execute_sql(_kafka_sink(cfg, "dead_letters", opt.dlq_topic, "reason STRING, payload STRING", opt))
    t_env.execute_sql(
        _kafka_sink(
            cfg,
            "late_events",
            opt.late_topic,
            "payload STRING, event_time TIMESTAMP_LTZ(3), kafka_partition INT, lateness_bound TIMESTAMP_LTZ(3)",
            opt,
        )
    )
    stmts = t_env.create_statement_set()
    # Every branch reads the same source columns, so the planner reuses one Kafka reader: the late and
    # on-time branches must see the same verdict for each record, or the counts cannot reconcile.
    stmts.add_insert_sql(
        "INSERT INTO dead_letters SELECT reject_reason, payload FROM events_checked WHERE reject_reason IS NOT NULL"
    )
    stmts.add_insert_sql(
        "INSERT INTO late_events SELECT payload, event_ts, kafka_partition, wm FROM events_checked "
        "WHERE reject_reason IS NULL AND wm IS NOT NULL AND event_ts <= wm"
    )
    # Audit: per-minute counts of on-time valid events and of those left after dedup, so that
    # `flywheel features reconcile` can check in = aggregated + dead-lettered + late + duplicates.
    t_env.execute_sql(_audit_sink(opt))
    for stage, view in (("ontime", "events_ontime"), ("aggregated", "events_clean")):
        stmts.add_insert_sql(
            f"INSERT INTO audit SELECT '{stage}', CAST(window_end AS TIMESTAMP(3)), COUNT(*), "
            f"DATE_FORMAT(CAST(window_end AS TIMESTAMP(3)), 'yyyy-MM-dd') "
            f"FROM TABLE(TUMBLE(TABLE {view}, DESCRIPTOR(event_time), INTERVAL '1' MINUTE)) "
            f"GROUP BY window_start, window_end"
        )
    t_env.execute_sql(_event_log_sink(opt))
    stmts.add_insert_sql(
        "INSERT INTO offline_events SELECT event_id, request_id, user_id, item_id, item_category, event_type, "
        "list_position, propensity, source, policy, team, schema_version, session_id, extras, ts, "
        "DATE_FORMAT(ts, 'yyyy-MM-dd'), DATE_FORMAT(ts, 'HH') "
        "FROM (SELECT *, CAST(event_time AS TIMESTAMP(3)) AS ts FROM events_clean)"
    )

    def register(steps: list[ViewStep]) -> None:
        for step in steps:
            if step.rowtime:
                _stream_view(t_env, step.name, step.query, step.rowtime)
            else:
                t_env.create_temporary_view(step.name, t_env.sql_query(step.query))

    shared, panes = pane_views(GROUPS)
    register(shared)
    values = {}
    for g in GROUPS:
        if g.emits_changes:
            _sliding_sums(t_env, g, panes[g.name])
        *steps, last = group_views(g)
        register(steps)
        values[g.name] = _stream_view(t_env, last.name, last.query)  # g_<group>: read by Parquet and Redis
        t_env.execute_sql(_offline_sink(g, opt))
        stmts.add_insert_sql(
            f"INSERT INTO offline_{g.name} SELECT *, DATE_FORMAT(event_timestamp, 'yyyy-MM-dd'), "
            f"DATE_FORMAT(event_timestamp, 'HH') FROM g_{g.name}"
        )

    if opt.online:
        online_sink.attach(values, sinks)
    return env, stmts


def run(cfg: Settings, opt: JobOptions | None = None, wait: bool = True):
    """Entry function. Embedded unless the environment was created for a remote cluster."""
    opt = opt or options(cfg)
    env, stmts = build(cfg, opt)
    stmts.attach_as_datastream()
    if wait:
        return env.execute(opt.job_name)
    return env.execute_async(opt.job_name)


def main(argv: list[str] | None = None) -> None:
    """Entry point for `flink run --python flink_jobs/features.py` (what `flywheel flink submit` calls)."""
    import argparse

    from flywheel.settings import load_settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bounded", action="store_true")
    p.add_argument("--topic")
    p.add_argument("--dlq-topic")
    p.add_argument("--late-topic")
    p.add_argument("--group-id")
    p.add_argument("--offline-dir", type=Path)
    p.add_argument("--parallelism", type=int)
    p.add_argument("--job-name")
    args = p.parse_args(argv)
    cfg = load_settings()
    given = {k: v for k, v in vars(args).items() if v is not None and k != "bounded"}
    run(cfg, options(cfg, bounded=args.bounded, **given), wait=False)


if __name__ == "__main__":
    main()
