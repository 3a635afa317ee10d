"""`flywheel events`: put interaction events on Kafka (real replay, simulator) and count them."""

from __future__ import annotations

import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, fail, group, utc_option
from flywheel.settings import Settings, load_settings

if TYPE_CHECKING:
    from flywheel.events.simulator import SimConfig

app = group("Interaction events: real Open Bandit replay and the simulator.")


class Policy(StrEnum):
    random = "random"
    bts = "bts"


class Campaign(StrEnum):
    all = "all"
    men = "men"
    women = "women"


Rate = Annotated[float, typer.Option(min=0.0, max=1.0)]


@app.command("replay-obd")
def replay_obd(
    policy: Annotated[list[Policy] | None, typer.Option(help="default: obd.policies in flywheel.yaml")] = None,
    campaign: Annotated[list[Campaign] | None, typer.Option(help="default: obd.campaigns in flywheel.yaml")] = None,
    speedup: Annotated[float | None, typer.Option(min=0.0, help="event time / wall time; 0 = unthrottled")] = None,
    topic: Annotated[str | None, typer.Option(help="target topic (default: the events topic)")] = None,
) -> None:
    """Replay the real Open Bandit logs into Kafka in event-time order."""
    from tqdm import tqdm

    from flywheel.events import obd
    from flywheel.events.producer import EventProducer

    cfg = load_settings()
    policies = [str(p) for p in policy] if policy else cfg.obd.policies
    campaigns = [str(c) for c in campaign] if campaign else cfg.obd.campaigns
    events, counts = obd.build(obd.fetch(cfg.obd, cfg.build_dir), [(p, c) for p in policies for c in campaigns])
    rate = cfg.obd.speedup if speedup is None else speedup
    t0 = time.monotonic()
    with EventProducer(cfg.kafka, topic) as producer:
        for ev in tqdm(obd.paced(events, rate), total=len(events), unit="ev", desc="replay-obd"):
            producer.send(ev)
    t = Table("policy", "campaign", "csv rows", "clicks", "events (impressions + clicks)")
    for c in counts:
        t.add_row(c.policy, c.campaign, str(c.rows), str(c.clicks), str(c.events))
    console.print(t)
    console.print(
        f"{producer.sent} events acknowledged by Kafka on topic {producer.topic} in {time.monotonic() - t0:.1f}s"
    )


@app.command("simulate")
def simulate_cmd(
    events: Annotated[int, typer.Option(min=1, help="exact number of records to emit")] = 100_000,
    days: Annotated[float, typer.Option(min=0.001, help="event-time span")] = 7.0,
    seed: Annotated[int | None, typer.Option()] = None,
    start: Annotated[datetime | None, utc_option("event-time start (default: simulator.start)")] = None,
    out: Annotated[str, typer.Option(help="'kafka' or a .jsonl file path")] = "kafka",
    topic: Annotated[str | None, typer.Option()] = None,
    out_of_order_rate: Rate = 0.0,
    late_rate: Rate = 0.0,
    duplicate_rate: Rate = 0.0,
    malformed_rate: Rate = 0.0,
    drift_at: Annotated[datetime | None, utc_option("preference drift from this time")] = None,
    drift_until: Annotated[datetime | None, utc_option("and back to normal at this time")] = None,
    corrupt_week_start: Annotated[datetime | None, utc_option("a corrupted week from this time")] = None,
    closed_loop: Annotated[bool, typer.Option(help="users ask the ranking service for their lists")] = False,
    service: Annotated[str | None, typer.Option(help="closed loop: the service URL (default: serving)")] = None,
    requests: Annotated[int, typer.Option(min=1, help="closed loop: requests over --days")] = 10_000,
    concurrency: Annotated[int, typer.Option(min=1, help="closed loop: requests in flight")] = 4,
) -> None:
    """Generate seeded synthetic traffic with faults, into Kafka or a JSONL file; or, with --closed-loop, let
    the simulator's users react to the lists the ranking service serves."""
    from flywheel.events.producer import write_records
    from flywheel.events.simulator import Faults, SimConfig, simulate

    if drift_at and drift_until and drift_until <= drift_at:
        raise typer.BadParameter("--drift-until must be after --drift-at", param_hint="--drift-until")
    faults = (out_of_order_rate, late_rate, duplicate_rate, malformed_rate, corrupt_week_start)
    if closed_loop and (out != "kafka" or any(faults)):
        raise typer.BadParameter("the closed loop writes to Kafka, without record faults", param_hint="--closed-loop")
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
    if closed_loop:
        _closed_loop(cfg, sim, service, requests, concurrency, topic)
        return
    t0 = time.monotonic()
    with console.status("simulating…"):
        result = simulate(sim)
    gen_s = time.monotonic() - t0
    if out == "kafka":
        write_records(cfg.kafka, result.keys, result.values, topic or cfg.kafka.topics.events)
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


def _closed_loop(
    cfg: Settings, sim: SimConfig, service: str | None, requests: int, concurrency: int, topic: str | None
) -> None:
    import json

    from tqdm import tqdm

    from flywheel.clients.serving import RankingClient
    from flywheel.events import closed_loop
    from flywheel.events.producer import EventProducer
    from flywheel.serving.catalog import catalog_dir

    try:
        token = cfg.serving.require_token()
    except ValueError as exc:
        fail(str(exc))
    client = RankingClient(service or f"http://{cfg.serving.host}:{cfg.serving.port}", token)
    client.health()  # a service that is not there: one line naming the fix, before any work
    loop = closed_loop.LoopConfig(requests=requests, candidates=100, concurrency=concurrency, k=sim.positions)
    catalog = catalog_dir(cfg.var_dir) / "closed-loop.parquet"
    with EventProducer(cfg.kafka, topic) as producer, tqdm(total=requests, unit="req", desc="closed loop") as bar:
        stats = closed_loop.run(sim, loop, client, producer, catalog, progress=bar.update,
                                wait_for_catalog=cfg.serving.catalog_refresh_s + 30)  # fmt: skip
    truth = cfg.var_dir / "online" / "truth.jsonl"
    truth.parent.mkdir(parents=True, exist_ok=True)
    with open(truth, "a") as f:
        for row in stats.rows:
            f.write(json.dumps(row) + "\n")
    t = Table("day", "policy", "lists", "clicks", "expected CTR", "random lists' expected CTR")
    for r in stats.rows:
        expected, random = r["expected_clicks"] / r["slots"], r["random_expected_clicks"] / r["slots"]
        t.add_row(str(r["day"]), r["policy"], str(r["requests"]), str(r["clicks"]), f"{expected:.4f}", f"{random:.4f}")
    console.print(t)
    console.print(f"{stats.failed} request(s) failed; the world's truth appended to {truth}")


@app.command("count")
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
