"""`flywheel`: one command, one sub-command per pipeline stage."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flywheel.infra.processes import InfraError
from flywheel.settings import load_settings

app = typer.Typer(help="Flywheel: real-time features and retraining for recommenders.", no_args_is_help=True)
infra_app = typer.Typer(help="The local stack: Kafka (KRaft), Redis, Flink cluster, Airflow.", no_args_is_help=True)
events_app = typer.Typer(help="Interaction events: real Open Bandit replay and the simulator.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets fetched at setup.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(events_app, name="events")
app.add_typer(data_app, name="data")
features_app = typer.Typer(help="The PyFlink feature job and the Feast feature store.", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(width=max(Console().width, 120))

ServicesOpt = Annotated[
    str | None, typer.Option("--services", "-s", help="Comma-separated subset: kafka,redis,flink,airflow.")
]


def _names(services: str | None) -> list[str] | None:
    return [s.strip() for s in services.split(",") if s.strip()] if services else None


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(1)


@infra_app.command("up")
def infra_up(services: ServicesOpt = None) -> None:
    """Start the stack (idempotent) and wait until every service is healthy."""
    from flywheel.infra import stack

    try:
        cfg = stack.up(_names(services), report=lambda n, s: console.print(f"  {n:8s} {s}"))
    except (InfraError, ValueError) as exc:
        _fail(str(exc))
    _print_status(stack.status(_names(services), cfg))
    if not services or "airflow" in services:
        console.print(
            f"Airflow login: user [bold]{cfg.airflow.username}[/], password in $FLYWHEEL_AIRFLOW__PASSWORD "
            f"or {cfg.secrets_file} (FLYWHEEL_AIRFLOW__PASSWORD=...)"
        )


@infra_app.command("down")
def infra_down(
    services: ServicesOpt = None,
    purge: Annotated[bool, typer.Option(help="Also delete var/ (topics, state, logs).")] = False,
) -> None:
    """Stop exactly the processes `infra up` started; data stays on disk unless --purge."""
    from flywheel.infra import stack

    stopped = stack.down(_names(services), purge=purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}" + ("; var/ purged" if purge else ""))


@infra_app.command("status")
def infra_status(services: ServicesOpt = None) -> None:
    """Each service, its URL and health. Exit 1 if any is unhealthy."""
    from flywheel.infra import stack

    rows = stack.status(_names(services))
    _print_status(rows)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def _print_status(rows) -> None:
    t = Table("service", "url", "health", "where", "pid", "detail")
    for r in rows:
        t.add_row(
            r.name,
            r.url,
            "[green]healthy[/]" if r.healthy else "[red]down[/]",
            "local" if r.managed else "remote",
            str(r.pid or "-"),
            r.detail,
        )
    console.print(t)


@data_app.command("fetch")
def data_fetch() -> None:
    """Download the Open Bandit Dataset sample (from the obp sdist on PyPI) once."""
    from flywheel.events import obd

    cfg = load_settings()
    path = obd.fetch(cfg.obd, cfg.build_dir)
    console.print(f"Open Bandit sample ready in {path}")


@events_app.command("replay-obd")
def replay_obd(
    policy: Annotated[list[str] | None, typer.Option(help="random and/or bts (default: flywheel.yaml)")] = None,
    campaign: Annotated[list[str] | None, typer.Option(help="all, men, women (default: flywheel.yaml)")] = None,
    speedup: Annotated[float | None, typer.Option(help="event time / wall time; 0 = as fast as possible")] = None,
    topic: Annotated[str | None, typer.Option(help="target topic (default: the events topic)")] = None,
) -> None:
    """Replay the real Open Bandit logs into Kafka in event-time order."""
    from tqdm import tqdm

    from flywheel.events import obd
    from flywheel.events.producer import EventProducer

    cfg = load_settings()
    policies = policy or cfg.obd.policies
    campaigns = campaign or cfg.obd.campaigns
    events, counts = obd.build(obd.fetch(cfg.obd, cfg.build_dir), [(p, c) for p in policies for c in campaigns])
    rate = cfg.obd.speedup if speedup is None else speedup
    t0 = time.monotonic()
    with EventProducer(cfg.kafka, topic) as producer:
        for ev in tqdm(obd.paced(events, rate), total=len(events), unit="ev", desc="replay-obd"):
            producer.send(ev)
    _print_counts(counts, producer.sent, producer.topic, time.monotonic() - t0)


def _print_counts(counts, sent: int, topic: str, seconds: float) -> None:
    t = Table("policy", "campaign", "csv rows", "clicks", "events (impressions + clicks)")
    for c in counts:
        t.add_row(c.policy, c.campaign, str(c.rows), str(c.clicks), str(c.events))
    console.print(t)
    console.print(f"{sent} events acknowledged by Kafka on topic {topic} in {seconds:.1f}s")


@events_app.command("simulate")
def simulate_cmd(
    events: Annotated[int, typer.Option(help="exact number of records to emit")] = 100_000,
    days: Annotated[float, typer.Option(help="event-time span")] = 7.0,
    seed: Annotated[int | None, typer.Option()] = None,
    start: Annotated[datetime | None, typer.Option(help="event-time start (UTC)")] = None,
    out: Annotated[str, typer.Option(help="'kafka' or a .jsonl file path")] = "kafka",
    topic: Annotated[str | None, typer.Option()] = None,
    out_of_order_rate: float = 0.0,
    late_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    malformed_rate: float = 0.0,
    drift_at: Annotated[datetime | None, typer.Option(help="preference drift from this time")] = None,
    drift_until: Annotated[datetime | None, typer.Option(help="and back to normal at this time")] = None,
    corrupt_week_start: Annotated[datetime | None, typer.Option(help="a corrupted week from this time")] = None,
) -> None:
    """Generate seeded synthetic traffic with faults, into Kafka or a JSONL file."""
    from flywheel.events.simulator import Faults, SimConfig, simulate

    cfg = load_settings()
    s = cfg.simulator
    sim = SimConfig(
        seed=s.seed if seed is None else seed,
        users=s.users,
        items=s.items,
        categories=s.categories,
        positions=s.positions,
        start=start or datetime.fromisoformat(s.start.replace("Z", "+00:00")),
        days=days,
        events=events,
        faults=Faults(
            out_of_order_rate=out_of_order_rate,
            late_rate=late_rate,
            duplicate_rate=duplicate_rate,
            malformed_rate=malformed_rate,
            drift_at=drift_at,
            drift_until=drift_until,
            corrupt_week_start=corrupt_week_start,
        ),
    )
    t0 = time.monotonic()
    with console.status("simulating…"):
        result = simulate(sim)
    gen_s = time.monotonic() - t0
    if out == "kafka":
        write_records(cfg, result.keys, result.values, topic or cfg.kafka.topics.events)
    else:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\n".join(result.values) + b"\n")
    total_s = time.monotonic() - t0
    console.print(result.stats.as_dict())
    console.print(
        f"{len(result.values)} records to {out} ({gen_s:.1f}s generating, {total_s:.1f}s in all, "
        f"{len(result.values) / total_s:,.0f} records/s)"
    )


def write_records(cfg, keys: list[bytes], values: list[bytes], topic: str) -> int:
    """Raw records (malformed ones included) through the one producer, with a progress bar."""
    from tqdm import tqdm

    from flywheel.events.producer import EventProducer
    from flywheel.kafka import ensure_topics

    ensure_topics(cfg.kafka, [topic])
    with EventProducer(cfg.kafka, topic, validate_events=False) as producer:
        for k, v in tqdm(zip(keys, values, strict=True), total=len(values), unit="rec", desc=f"→ {topic}"):
            producer.send_raw(v, k)
    return producer.sent


@events_app.command("count")
def count_cmd(topic: Annotated[str | None, typer.Option()] = None) -> None:
    """Count the records on a topic by event type (reads it from the beginning)."""
    from collections import Counter

    import orjson

    from flywheel.events.consumer import read_topic

    cfg = load_settings()
    name = topic or cfg.kafka.topics.events
    by_type: Counter[str] = Counter()
    for _, value in read_topic(cfg.kafka, name):
        try:
            by_type[orjson.loads(value).get("event_type", "?")] += 1
        except (orjson.JSONDecodeError, AttributeError):
            by_type["<malformed>"] += 1
    console.print(f"{name}: {sum(by_type.values())} records {dict(by_type)}")


@features_app.command("apply")
def features_apply() -> None:
    """`feast apply` on feature_repo/ with the environment it needs."""
    from flywheel import feast_store

    console.print(feast_store.apply(load_settings()))


@features_app.command("run")
def features_run(
    bounded: Annotated[bool, typer.Option(help="stop at the topic's current end (replays, backfills)")] = False,
    topic: Annotated[str | None, typer.Option(help="events topic (default: flywheel.yaml)")] = None,
    parallelism: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run the feature job embedded (a local mini-cluster in this process)."""
    from flink_jobs import features
    from flywheel import feast_store

    cfg = load_settings()
    feast_store.apply(cfg)
    overrides = {k: v for k, v in {"topic": topic, "parallelism": parallelism}.items() if v is not None}
    opt = features.options(cfg, bounded=bounded, **overrides)
    t0 = time.monotonic()
    features.run(cfg, opt)
    console.print(f"feature job finished in {time.monotonic() - t0:.0f}s; Parquet under {opt.offline_dir}")


@features_app.command("reconcile")
def features_reconcile(topic: Annotated[str | None, typer.Option()] = None) -> None:
    """Check: events in = aggregated + duplicates + dead-lettered + late (+ pending while running)."""
    from flink_jobs import features
    from flink_jobs.reconcile import reconcile

    cfg = load_settings()
    opt = features.options(cfg, **({"topic": topic} if topic else {}))
    r = reconcile(cfg, opt.topic, opt.dlq_topic, opt.late_topic, opt.offline_dir)
    t = Table("events in", "aggregated", "duplicates", "dead-lettered", "late", "pending")
    t.add_row(*(str(v) for v in (r.events_in, r.aggregated, r.duplicates, r.dead_lettered, r.late, r.pending)))
    console.print(t)
    if r.pending < 0:
        _fail("more events accounted for than entered the topic: outputs from another run are mixed in")


trainset_app = typer.Typer(help="Point-in-time-correct training sets (labels + features).", no_args_is_help=True)
app.add_typer(trainset_app, name="trainset")


def _utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@trainset_app.command("build")
def trainset_build(
    start: Annotated[str | None, typer.Option(help="first impression time, ISO (default: log start)")] = None,
    end: Annotated[str | None, typer.Option(help="end, exclusive, ISO (default: end of the event log)")] = None,
    feature_service: Annotated[str | None, typer.Option(help="default: trainset.feature_service")] = None,
    name: Annotated[str | None, typer.Option(help="output folder under var/trainsets")] = None,
) -> None:
    """Labels from the event log joined with the service's features as of strictly before each label."""
    from datetime import timedelta

    from flywheel import feast_store
    from training import labels, trainset

    cfg = load_settings()
    files = labels.event_log_files(cfg.offline_dir)
    if not files:
        _fail(f"no event log under {cfg.offline_dir / 'events'}: run the feature job first (`flywheel features run`)")
    con = labels.connect()
    first, last = con.execute(
        "SELECT min(CAST(event_timestamp AS TIMESTAMPTZ)), max(CAST(event_timestamp AS TIMESTAMPTZ)) "
        f"FROM read_parquet({files!r})"
    ).fetchall()[0]
    begin, stop = _utc(start) or first, _utc(end) or last + timedelta(milliseconds=1)
    manifest, out = trainset.build(cfg, feast_store.store(cfg), begin, stop, feature_service, name)
    t = Table("rows", *manifest.label_counts, "labels final", "seconds", "sha256")
    t.add_row(
        str(manifest.rows),
        *(f"{n} ({manifest.label_rates[c]:.2%})" for c, n in manifest.label_counts.items()),
        str(manifest.labels_final),
        f"{manifest.build_seconds:.2f}",
        manifest.content_sha256[:12],
    )
    console.print(t)
    worst = sorted(manifest.missing_rates.items(), key=lambda kv: -kv[1])[:3]
    console.print(f"most missing: {', '.join(f'{k} {v:.1%}' for k, v in worst)}")
    console.print(f"written to {out} (manifest.json)")


train_app = typer.Typer(help="Retraining stages: validate, fit, decide (gate + promote), rollback check.",
                        no_args_is_help=True)  # fmt: skip
registry_app = typer.Typer(help="The model registry: versions, champion/previous aliases, audit log.",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(train_app, name="train")
app.add_typer(registry_app, name="registry")
TrainsetDir = Annotated[Path, typer.Option("--trainset", help="a folder written by `flywheel trainset build`")]


@train_app.command("validate")
def train_validate(
    trainset_dir: TrainsetDir,
    reference: Annotated[Path | None, typer.Option(help="reference training set for drift")] = None,
) -> None:
    """Great Expectations quality (and drift) checks; exit 1 on a critical failure."""
    from training import pipeline

    result = pipeline.validate_stage(load_settings(), trainset_dir, reference)
    if not result["passed"]:
        _fail("critical data checks failed: " + "; ".join(result["reasons"]))


@train_app.command("fit")
def train_fit(
    trainset_dir: TrainsetDir,
    mode: Annotated[str, typer.Option(help="full | incremental")] = "full",
    run_key: Annotated[str | None, typer.Option(help="idempotency key, e.g. weekly:2026-01-12")] = None,
) -> None:
    """Train, evaluate against the champion on the same holdout, register the candidate."""
    from training import pipeline

    if mode not in ("full", "incremental"):
        _fail("--mode must be full or incremental")
    console.print(f"candidate: {pipeline.train_stage(load_settings(), trainset_dir, mode, run_key)}")


@train_app.command("decide")
def train_decide(version: str) -> None:
    """Gate a registered candidate and promote it, or record why the champion stays."""
    from training import pipeline

    d = pipeline.decide_stage(load_settings(), version)
    console.print(f"{d.version}: {d.outcome}")
    for r in d.reasons:
        console.print(f"  - {r}")


@train_app.command("rollback-check")
def train_rollback_check(
    fresh: Annotated[Path, typer.Option(help="training set of events after the promotion")],
) -> None:
    """Compare champion and previous on fresh labeled data; roll back if the champion is worse."""
    from training import pipeline

    d = pipeline.rollback_stage(load_settings(), fresh)
    console.print(f"{d.outcome}: {'; '.join(d.reasons)}")


@train_app.command("report")
def train_report(version: Annotated[str | None, typer.Argument(help="default: the champion")] = None) -> None:
    """Write a version's report (metrics, off-policy value vs baselines, curves) as Markdown + PNG."""
    from training import pipeline, report
    from validation.suites import data_docs_path

    cfg = load_settings()
    reg = pipeline.registry(cfg)
    version = version or reg.aliases()["champion"]
    if not version:
        _fail("no champion yet; name a version (`flywheel registry list`)")
    path = report.write(reg, version, str(data_docs_path(cfg)))
    console.print(path.read_text())
    console.print(f"report: {path}")


@registry_app.command("list")
def registry_list() -> None:
    from training import pipeline

    reg = pipeline.registry(load_settings())
    aliases = {v: k for k, v in reg.aliases().items() if v}
    t = Table("version", "alias", "mode", "parent", "window", "AUC", "ECE", "created")
    for mv in reg.versions():
        m = mv.metrics
        t.add_row(mv.version, aliases.get(mv.version, ""), mv.mode, mv.parent_version or "",
                  f"{mv.data_window.get('start', '')[:10]}..{mv.data_window.get('end', '')[:10]}",
                  f"{m.get('auc', float('nan')):.4f}", f"{m.get('ece', float('nan')):.4f}",
                  mv.created_at[:19])  # fmt: skip
    console.print(t)


@registry_app.command("show")
def registry_show(version: str) -> None:
    import json
    from dataclasses import asdict

    from training import pipeline

    mv = pipeline.registry(load_settings()).get(version)
    data = asdict(mv)
    data["metrics"] = {k: v for k, v in mv.metrics.items() if k != "curves"}
    console.print_json(json.dumps(data, default=str))


@registry_app.command("promote")
def registry_promote(version: str, reason: Annotated[str, typer.Option(help="recorded in the audit log")]) -> None:
    """Make a version champion by hand (bypasses the gate; the reason is audited)."""
    from training import pipeline

    reg = pipeline.registry(load_settings())
    console.print("promoted" if reg.promote(version, [f"manual: {reason}"]) else f"{version} is already champion")


@registry_app.command("rollback")
def registry_rollback(reason: Annotated[str, typer.Option(help="recorded in the audit log")]) -> None:
    from training import pipeline

    console.print(f"champion is now {pipeline.registry(load_settings()).rollback([f'manual: {reason}'])}")


@registry_app.command("audit")
def registry_audit() -> None:
    from training import pipeline

    for e in pipeline.registry(load_settings()).audit():
        console.print(f"{e['at'][:19]} {e['decision']:<20} {e['version'] or '-':<6} {'; '.join(e['reasons'])}")


@app.command("score")
def score_cmd(
    user: Annotated[str, typer.Option()],
    items: Annotated[str, typer.Option(help="comma-separated item ids")],
) -> None:
    """Rank items for a user with the champion, from online features (Feast SDK, Redis)."""
    from training.scoring import rank

    t = Table("rank", "item", "P(click)")
    for i, (item, p) in enumerate(rank(load_settings(), user, [x for x in items.split(",") if x]), 1):
        t.add_row(str(i), item, f"{p:.4f}")
    console.print(t)


@app.command("bench")
def bench_cmd(
    which: Annotated[str, typer.Argument(help="trainset | features")] = "trainset",
) -> None:
    """Run a benchmark and merge its figures into var/bench/results.json."""
    from flywheel import bench, bench_features

    cfg = load_settings()
    runners = {"trainset": bench.trainset, "features": bench_features.run}
    if which not in runners:
        _fail(f"unknown benchmark {which!r}; known: {', '.join(runners)}")
    figures = runners[which](cfg, log=console.print)
    bench.merge_results(cfg, figures)
    t = Table("key", "value")
    for k, v in figures.items():
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"merged into {bench.results_path(cfg)}; chart {cfg.var_dir / 'bench' / (which + '.png')}")


flink_app = typer.Typer(help="The feature job on a Flink cluster (flink run, savepoints).", no_args_is_help=True)
app.add_typer(flink_app, name="flink")
JobArgs = Annotated[list[str] | None, typer.Argument(help="passed to flink_jobs/features.py, e.g. -- --bounded")]


@flink_app.command("submit")
def flink_submit(job_args: JobArgs = None) -> None:
    """Submit the feature job to the cluster (detached)."""
    from flywheel import feast_store
    from flywheel.flink_cluster import submit

    cfg = load_settings()
    feast_store.apply(cfg)
    console.print(f"submitted: job {submit(cfg, job_args or [])}  (UI: {cfg.flink.rest_url})")


@flink_app.command("list")
def flink_list() -> None:
    """Jobs on the cluster."""
    from flywheel.flink_cluster import list_jobs

    t = Table("job id", "name", "state", "started")
    for j in list_jobs(load_settings()):
        t.add_row(j["jid"], j["name"], j["state"], time.strftime("%F %T", time.gmtime(j["start-time"] / 1000)))
    console.print(t)


@flink_app.command("stop")
def flink_stop(job_id: str, savepoint: Annotated[bool, typer.Option(help="take a savepoint first")] = True) -> None:
    """Stop a job, with a savepoint to resume from."""
    import requests

    from flywheel.flink_cluster import stop_with_savepoint

    cfg = load_settings()
    if savepoint:
        console.print(f"stopped; savepoint: {stop_with_savepoint(cfg, job_id)}")
    else:
        requests.patch(f"{cfg.flink.rest_url}/jobs/{job_id}?mode=cancel", timeout=30).raise_for_status()
        console.print("cancelled")


@flink_app.command("resume")
def flink_resume(
    from_: Annotated[str, typer.Option("--from", help="savepoint or retained checkpoint path")],
    job_args: JobArgs = None,
) -> None:
    """Start the feature job again from a savepoint (same topology, state and Kafka offsets)."""
    from flywheel.flink_cluster import submit

    console.print(f"resumed: job {submit(load_settings(), job_args or [], savepoint=from_)}")


@app.command("env")
def env_cmd() -> None:
    """Print `export` lines for feature_store.yaml (use: eval "$(.venv/bin/flywheel env)")."""
    from flywheel.feast_store import feast_env

    for k, v in feast_env(load_settings()).items():
        print(f"export {k}='{v}'")


@app.command()
def demo() -> None:
    """The whole loop on this machine: stack up, real data through Kafka, counts."""
    from flywheel.demo import run

    try:
        run(console)
    except InfraError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    app()
