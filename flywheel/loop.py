"""The flywheel turning on a simulated world: serve, log, featurize, retrain, promote, serve again.

    week 0      the simulator's own logging policy (the logs a team starts from) -> Kafka -> the feature job
                -> a full retrain -> the first champion of this world
    weeks 1..N  `flywheel serve` ranks for the world's users (events.closed_loop); it logs its impressions,
                the world its clicks, to Kafka; the same feature job turns them into features (Parquet and
                Redis, which the service reads); at each week's end the weekly retrain runs on the served
                traffic, and a promotion is picked up by the running service before the next week
    then        the online report and `var/online/loop.png`: daily CTR per policy version against random lists

`retrain(start, end, mode)` is a retraining DAG (the monthly full one for week 0, then the weekly
incremental one): triggered on Airflow by the demo, or its tasks in this process (`tasks.retrain_here`)
by the benchmark and the test; either way the decision lands in the registry's audit log.

The world's clock runs about 10^4 times faster than the wall clock (a week in about a minute), so a
wall-clock second of jitter between the service's impression log and the world's clicks is hours of event
time: the loop's feature job allows the simulated time of `straggler_requests` requests as out-of-orderness
(hours; the live job allows 30 s), and what still arrives behind the watermark is counted (late) like any
late event. The features the service reads lag its clock by as much, and a week's retrain sees the week
up to its watermark: all but those last hours, which the next week's events release.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from flywheel.errors import FlywheelError
from flywheel.events.closed_loop import LoopStats
from flywheel.events.simulator import SimConfig
from flywheel.settings import Settings, load_settings, read_env_file

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)
Retrain = Callable[[datetime, datetime, str], None]  # (start, end, mode): "full" for week 0, then "incremental"


class LoopPlan(BaseModel):
    """The world and how long it runs. Small enough that a week is served in about a minute."""

    model_config = ConfigDict(extra="forbid")

    weeks: int = Field(default=2, ge=1)  # served weeks after the bootstrap week
    # Served and bootstrap weeks carry the same traffic (the bootstrap's events are these requests' lists and
    # their outcomes): a week with a third of the traffic has emptier hourly windows, which the drift checks
    # rightly block.
    requests_per_week: int = Field(default=5_000, ge=100)
    users: int = Field(default=300, ge=10)
    items: int = Field(default=100, ge=20)
    categories: int = Field(default=6, ge=2)
    item_quality_sd: float = Field(default=1.0, ge=0.0)  # items differ clearly in appeal: there is something to learn
    candidates: int = Field(default=50, ge=2)  # items per request, drawn from the catalog
    concurrency: int = Field(default=4, ge=1)
    seed: int = 11
    id_prefix: str = ""  # keeps this world's users and items apart from others in the same online store
    # The feature job waits this many requests' worth of the fast clock for stragglers: the service logs its
    # impressions from a queue, the world its clicks at once, and requests run concurrently.
    straggler_requests: int = Field(default=100, ge=1)

    @property
    def out_of_orderness_s(self) -> int:
        """`straggler_requests` of simulated time, in whole hours (whole days beyond 99 h: Flink SQL intervals)."""
        seconds = self.straggler_requests * WEEK.total_seconds() / self.requests_per_week
        unit = 3600 if seconds < 99 * 3600 else 86_400
        return math.ceil(seconds / unit) * unit


@dataclass
class Week:
    index: int
    start: datetime
    served_by: dict[str, int] = field(default_factory=dict)  # policy version -> lists
    failed: int = 0
    ctr: float = float("nan")  # clicks / impressions
    expected_ctr: float = float("nan")  # the world's truth for the lists served
    random_ctr: float = float("nan")  # and for uniformly random lists of the same candidates
    decision: dict[str, Any] | None = None  # of the retrain at the week's end
    switched_after_s: float | None = None  # at most this long after a promotion, the service served the new model

    @property
    def lift(self) -> float:
        return self.expected_ctr / self.random_ctr


@dataclass
class LoopResult:
    weeks: list[Week]
    truth: list[dict[str, Any]]  # per day and policy version (events.closed_loop.LoopStats.rows)
    topics: dict[str, str]
    reconciled: dict[str, int]
    report: dict[str, Any]  # training.online.report of the served weeks


@contextmanager
def own_state(cfg: Settings, work: Path) -> Iterator[Settings]:
    """Settings with a var_dir of their own (registry, offline store, training sets, checkpoints: `work`,
    emptied first) and the stack's secrets, also in the environment, for what reads it (the service, the
    retraining tasks in this process); restored on exit. For a loop beside the user's own state."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    secrets = {k: v for k, v in read_env_file(cfg.secrets_file).items() if k not in os.environ}
    overrides = {**secrets, "FLYWHEEL_VAR_DIR": str(work)}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def world(cfg: Settings, plan: LoopPlan, week: int, start: datetime) -> SimConfig:
    """Week `week` of the world: the same users, items and tastes every week (a fixed catalog), later times."""
    k = cfg.simulator.positions
    return SimConfig(seed=plan.seed, users=plan.users, items=plan.items, categories=plan.categories, positions=k,
                     start=start + week * WEEK, days=7.0, events=int(plan.requests_per_week * k * 1.06),
                     new_items_per_day=0.0, item_quality_sd=plan.item_quality_sd, id_prefix=plan.id_prefix)  # fmt: skip


def run(
    cfg: Settings,
    plan: LoopPlan,
    retrain: Retrain,
    start: datetime,
    say: Callable[[str], None] = log.info,
) -> LoopResult:
    """Run the loop against the stack in `cfg` (Kafka, Redis; the feature job runs embedded here). The
    registry and the offline store are cfg's: the caller gives a world whose weeks nothing else uses."""
    from flink_jobs import features
    from flink_jobs.reconcile import reconcile
    from flywheel.clients import feast_store
    from flywheel.clients.kafka import ensure_topics
    from flywheel.events.producer import write_records
    from flywheel.events.simulator import simulate

    run_id = uuid.uuid4().hex[:6]
    name = f"flywheel.loop-{run_id}"
    topics = {"events": name, "dead_letter": f"{name}.dlq", "late": f"{name}.late"}
    ensure_topics(cfg.kafka, list(topics.values()))
    feast_store.ensure_applied(cfg)
    job_cfg = cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"watermark_delay_s": plan.out_of_orderness_s})}
    )
    opt = features.options(job_cfg, topic=topics["events"], dlq_topic=topics["dead_letter"],
                           late_topic=topics["late"], group_id=name)  # fmt: skip
    say(f"feature job (embedded) on {name}: out-of-orderness {plan.out_of_orderness_s / 3600:g} h of the fast clock")
    job = features.run(job_cfg, opt, wait=False)
    try:
        week0 = world(cfg, plan, 0, start)
        sim = simulate(week0)
        write_records(cfg.kafka, sim.keys, sim.values, topics["events"])
        say(f"week 0 ({week0.start:%Y-%m-%d}): {sim.stats.impressions:,} impressions, {sim.stats.clicks:,} clicks "
            f"logged by the simulator's own policy")  # fmt: skip
        last_ms = max(orjson.loads(v)["event_time"] for v in sim.values)
        _wait_for_event_log(cfg, plan, last_ms, week0.start + WEEK)
        bootstrap = _retrain(cfg, retrain, week0.start, "full", say)  # a new world: nothing to warm-start
        weeks = [Week(0, week0.start, decision=bootstrap)]
        truth: list[dict[str, Any]] = []
        if bootstrap is None or bootstrap["decision"] != "promoted":
            raise FlywheelError(f"week 0 promoted no model, nothing to serve: {bootstrap}")
        _serve_weeks(cfg, plan, retrain, start, topics["events"], weeks, truth, say)
    finally:
        job.cancel().result()
    r = reconcile(cfg, opt, since=start.date())
    counts = {"in": r.events_in, "aggregated": r.aggregated, "duplicates": r.duplicates,
              "dead_lettered": r.dead_lettered, "late": r.late, "pending": r.pending}  # fmt: skip
    report = _report(cfg, plan, topics["events"], truth)
    return LoopResult(weeks, truth, topics, counts, report)


def _report(cfg: Settings, plan: LoopPlan, topic: str, truth: list[dict[str, Any]]) -> dict[str, Any]:
    """`flywheel online report` on the loop's topic (complete: the event log lacks the last week's last
    hours until a watermark passes them): var/online/report.json and loop.png."""
    import json

    from flywheel.events.consumer import read_topic
    from training import online

    events = online.events_table(v for _, v in read_topic(cfg.kafka, topic))
    offline = online.off_policy_estimates(cfg.training.registry_dir, cfg.training.gate.ope_estimator)
    rep = online.report(events, plan.items, truth, offline)
    out = cfg.var_dir / "online"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    online.chart(rep, out / "loop.png")
    return rep


def _serve_weeks(
    cfg: Settings,
    plan: LoopPlan,
    retrain: Retrain,
    start: datetime,
    topic: str,
    weeks: list[Week],
    truth: list[dict[str, Any]],
    say: Callable[[str], None],
) -> None:
    from flywheel.clients.serving import RankingClient
    from flywheel.events import closed_loop
    from flywheel.events.producer import EventProducer
    from flywheel.serving.catalog import catalog_dir
    from flywheel.serving.process import await_version, running
    from training import pipeline

    token = cfg.serving.require_token()
    champion = pipeline.registry(cfg).aliases()["champion"]
    catalog = catalog_dir(cfg.var_dir) / f"loop-{plan.id_prefix or 'world'}.parquet"
    closed_loop.write_world_catalog(world(cfg, plan, 1, start), catalog)
    log_path = cfg.var_dir / "log" / "loop-serve.log"
    env = {"FLYWHEEL_KAFKA__TOPICS__EVENTS": topic, "FLYWHEEL_SERVING__TOKEN": token}
    say(f"starting `flywheel serve` ({cfg.serving.workers} workers) with champion {champion} ...")
    with running(log_path, lambda h: h.get("version") == champion, env=env) as url:
        client = RankingClient(url, token)
        say(f"serving on {url}")
        for w in range(1, plan.weeks + 1):
            sim = world(cfg, plan, w, start)
            loop = closed_loop.LoopConfig(requests=plan.requests_per_week, candidates=plan.candidates,
                                          k=cfg.simulator.positions, concurrency=plan.concurrency)  # fmt: skip
            t0 = time.monotonic()
            with EventProducer(cfg.kafka, topic) as producer:
                stats = closed_loop.run(sim, loop, client, producer, catalog, wait_for_catalog=60)
            week = _summary(w, sim.start, stats)
            truth.extend({**r, "day": r["day"] + 7 * (w - 1)} for r in stats.rows)  # days since week 1
            if stats.failed:
                say(f"week {w}: {stats.failed} request(s) failed (see {log_path})")
            say(f"week {w} ({sim.start:%Y-%m-%d}): {sum(week.served_by.values()):,} lists served by "
                f"{', '.join(f'{v} ({n})' for v, n in week.served_by.items())} in {time.monotonic() - t0:.0f}s; "
                f"CTR {week.ctr:.4f}; the world's expected CTR {week.expected_ctr:.4f} vs {week.random_ctr:.4f} for "
                f"random lists ({week.lift:.2f}x)")  # fmt: skip
            _wait_for_event_log(cfg, plan, stats.last_at, sim.start + WEEK)
            week.decision = _retrain(cfg, retrain, sim.start, "incremental", say)
            weeks.append(week)
            new = pipeline.registry(cfg).aliases()["champion"]
            if new != champion:
                await_version(url, new, cfg.serving.workers)
                # An upper bound: the retrain may have returned well after the promotion it recorded.
                promoted_at = datetime.fromisoformat(week.decision["at"]) if week.decision else datetime.now(UTC)
                week.switched_after_s = (datetime.now(UTC) - promoted_at).total_seconds()
                say(f"the service served {new} instead of {champion} at most {week.switched_after_s:.1f}s after "
                    "the promotion (hot reload)")  # fmt: skip
                champion = new


def _summary(index: int, start: datetime, stats: LoopStats) -> Week:
    rows = stats.rows
    slots = sum(r["slots"] for r in rows)
    week = Week(index, start, failed=stats.failed)
    for r in rows:
        week.served_by[r["policy"]] = week.served_by.get(r["policy"], 0) + r["requests"]
    if slots:
        week.ctr = sum(r["clicks"] for r in rows) / slots
        week.expected_ctr = sum(r["expected_clicks"] for r in rows) / slots
        week.random_ctr = sum(r["random_expected_clicks"] for r in rows) / slots
    return week


def _retrain(
    cfg: Settings, retrain: Retrain, start: datetime, mode: str, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """Retrain on the week from `start`; its training decision (the audit log's new entry)."""
    from training import pipeline

    reg = pipeline.registry(cfg)
    seen = len(reg.audit())
    t0 = time.monotonic()
    retrain(start, start + WEEK, mode)
    new = reg.audit()[seen:]
    decision = next((e for e in new if e["decision"] in ("promoted", "rejected_by_metrics", "blocked_by_data")), None)
    if decision is None:
        say(f"  {mode} retrain on {start:%Y-%m-%d}: no decision ({time.monotonic() - t0:.0f}s)")
        return None
    say(f"  {mode} retrain on {start:%Y-%m-%d}: {decision['decision']} {decision['version'] or ''} "
        f"({time.monotonic() - t0:.0f}s)")  # fmt: skip
    for reason in decision["reasons"]:
        say(f"    - {reason}")
    return decision


def _wait_for_event_log(cfg: Settings, plan: LoopPlan, last_ms: int, end: datetime, timeout_s: float = 300) -> None:
    """Until the feature job has committed the week's events up to the watermark its last event (at
    `last_ms`) allows, within an hour: all but the week's last out-of-orderness hours, which only the next
    week's events release."""
    from training.labels import connect, event_log_files

    target = datetime.fromtimestamp(last_ms / 1000, UTC) - timedelta(seconds=plan.out_of_orderness_s + 3600)
    t0 = time.monotonic()
    while True:
        files = event_log_files(cfg.offline_dir)
        latest = None
        if files:
            latest = (
                connect()
                .execute(
                    "SELECT max(CAST(event_timestamp AS TIMESTAMPTZ)) FROM read_parquet($f, union_by_name = true) "
                    "WHERE CAST(event_timestamp AS TIMESTAMPTZ) < $end",
                    {"f": files, "end": end},
                )
                .fetchall()[0][0]
            )
        if latest is not None and latest >= target:
            return
        if time.monotonic() - t0 > timeout_s:
            raise FlywheelError(
                f"the feature job committed events only up to {latest} after {timeout_s:.0f}s, not {target}: "
                f"see its log in {cfg.var_dir / 'log'}"
            )
        time.sleep(2)
