"""The closed-loop world: the simulator's users ask the ranking service for lists and react to what it shows.

The world is the simulator's (`simulator.World`: latent tastes, position bias, drift, new items,
seasonal traffic); what differs is who ranks. Each request (a user, at a simulated time, with
`candidates` items drawn from those available) goes to `POST /rank` with `at` = its simulated time; the
service logs the impressions itself; the world decides clicks and purchases by its own model and sends
them to Kafka with the service's `request_id`, slot and propensity. The clock runs as fast as the
service answers.

Because the world knows every click probability, each request also records its truth: the expected
clicks of the list served and of a uniformly random list of the same candidates (what `loop_ctr_lift_vs_random`
and `var/online/loop.png` compare), with no extra traffic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from flywheel.clients.serving import RankingClient, ServiceError
from flywheel.events.producer import EventProducer
from flywheel.events.simulator import MS_PER_DAY, SimConfig, World, request_times

log = logging.getLogger(__name__)

SOURCE = "closed-loop"


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: int = Field(10_000, ge=1)  # over sim.days of simulated time, with the simulator's seasonality
    candidates: int = Field(100, ge=1)  # items per request, drawn uniformly from those available
    k: int = Field(10, ge=1)
    concurrency: int = Field(4, ge=1)  # requests in flight
    # A scripted regression: clicks on lists a policy version served are scaled by its factor (a release that
    # breaks something no model input shows); what the online rollback rule must catch.
    degraded: dict[str, float] = Field(default_factory=dict)


@dataclass
class LoopStats:
    """Per (day, policy version): requests, clicks, and the world's expected clicks for the lists served
    and for uniformly random lists of the same candidates."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    last_at: int = 0  # the latest request time (epoch ms): where the next events' watermark can get to


def _start_ms(cfg: SimConfig) -> int:
    return int(cfg.start.timestamp() * 1000)


def item_id(cfg: SimConfig, j: int) -> str:
    return f"{cfg.id_prefix}i{j}"


def user_id(cfg: SimConfig, u: int) -> str:
    return f"{cfg.id_prefix}u{u}"


def write_catalog(world: World, cfg: SimConfig, path: Path) -> float:
    """The world's items and categories, for the service's catalog (it ranks only items it knows); rewritten
    only when they changed, so a service that read them already need not read them again. Returns the
    file's modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [item_id(cfg, j) for j in range(world.n_items)]
    table = pa.table({"item_id": ids, "item_category": [f"cat{c}" for c in world.item_cat.tolist()]})
    if not (path.exists() and pq.read_table(path).equals(table)):
        tmp = path.with_name(path.name + ".tmp")  # not *.parquet: the service never reads a half-written file
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return path.stat().st_mtime


def write_world_catalog(cfg: SimConfig, path: Path) -> float:
    """`write_catalog` for the world of `cfg` (before the service starts: it reads its catalog at start)."""
    return write_catalog(World(cfg, np.random.default_rng(cfg.seed)), cfg, path)


def requests_of(cfg: SimConfig, loop: LoopConfig, world: World) -> Iterator[dict]:
    """The requests in time order: user, time and candidates. Drawn from the seed and the start, so the same
    world run week after week (a later `start`) sees other users, times and candidates each week."""
    rng = np.random.default_rng([cfg.seed, _start_ms(cfg)])
    times = request_times(cfg, loop.requests, rng)
    users = rng.choice(cfg.users, size=loop.requests, p=world.user_activity)
    for i, (t, u) in enumerate(zip(times.tolist(), users.tolist(), strict=True)):
        available = int(np.searchsorted(world.item_birth, t, side="right"))
        picks = rng.choice(available, size=min(loop.candidates, available), replace=False)
        yield {"index": i, "user": int(u), "at": int(t), "candidates": picks}


def run(
    cfg: SimConfig,
    loop: LoopConfig,
    client: RankingClient,
    producer: EventProducer,
    catalog: Path,
    progress: Callable[[int], None] = lambda n: None,
    wait_for_catalog: float = 90.0,
) -> LoopStats:
    """Run the requests against the service; outcomes go to `producer`; returns the truth per day and version."""
    world = World(cfg, np.random.default_rng(cfg.seed))
    written = write_catalog(world, cfg, catalog)
    index = {item_id(cfg, j): j for j in range(world.n_items)}
    deadline = time.monotonic() + wait_for_catalog
    while client.health().get("catalog_read_at", 0.0) <= written:  # the service re-reads its catalog periodically
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the service does not know the world's {world.n_items} items after {wait_for_catalog:.0f}s: does it "
                f"read {catalog.parent} (the same var_dir)?"
            )
        time.sleep(1.0)
    start_ms = _start_ms(cfg)
    stats = LoopStats()
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    lock = threading.Lock()

    def one(req: dict) -> None:
        r = np.random.default_rng([cfg.seed, start_ms, req["index"]])  # the same outcome whatever the threads
        cand = req["candidates"]
        body = {"user_id": user_id(cfg, req["user"]), "candidates": [item_id(cfg, j) for j in cand.tolist()],
                "k": loop.k, "at": req["at"]}  # fmt: skip
        try:
            out = client.rank(body)
        except Exception as exc:  # counted and logged; the world goes on
            log.warning("request %d failed: %s", req["index"], exc)
            with lock:
                stats.failed += 1
            return
        shown = np.array([index[x["item_id"]] for x in out["items"]])[None, :]
        t = np.array([req["at"]])
        users = np.array([req["user"]])
        p_click, rel, _ = world.click_probability(cfg, users, shown, t)
        p_click = p_click * loop.degraded.get(out["policy"]["version"], 1.0)
        # A random list of the same candidates: each slot holds each candidate with probability 1/m.
        all_cand = cand[None, :]
        slots = shown.shape[1]
        every = np.repeat(all_cand, slots, axis=0).T  # row j: candidate j in every slot
        p_any, _, _ = world.click_probability(cfg, np.repeat(users, len(cand)), every, np.repeat(t, len(cand)))
        random_clicks = float(p_any[:, :slots].mean(axis=0).sum())
        click = r.random(shown.shape[1]) < p_click[0]
        buy = click & (r.random(shown.shape[1]) < cfg.purchase_given_click * rel[0])
        events = []
        for slot, item in enumerate(out["items"]):
            outcomes = (("click", click[slot], "c", 8_000), ("purchase", buy[slot], "p", 120_000))
            for kind, happened, suffix, delay in outcomes:
                if happened:
                    at = req["at"] + item["position"] * 3 + int(r.exponential(delay)) + 1
                    events.append({
                        "schema_version": 1,
                        "event_id": f"{out['request_id']}-{item['position']}-{suffix}",
                        "user_id": body["user_id"],
                        "item_id": item["item_id"],
                        "item_category": f"cat{int(world.item_cat[index[item['item_id']]])}",
                        "event_type": kind,
                        "position": item["position"],
                        "propensity": item["propensity"],
                        "request_id": out["request_id"],
                        "source": SOURCE,
                        "context": {"policy": out["policy"]["version"]},
                        "event_time": at,
                        "ingest_time": at,
                    })  # fmt: skip
        day = (req["at"] - start_ms) // MS_PER_DAY
        key = (int(day), out["policy"]["version"])
        with lock:
            for e in events:
                producer.send(e)
            cell = cells.setdefault(key, {"day": int(day), "policy": key[1], "kind": out["policy"]["kind"],
                                          "requests": 0, "clicks": 0, "expected_clicks": 0.0,
                                          "random_expected_clicks": 0.0, "slots": 0})  # fmt: skip
            cell["requests"] += 1
            stats.last_at = max(stats.last_at, req["at"])
            cell["slots"] += shown.shape[1]
            cell["clicks"] += int(click.sum())
            cell["expected_clicks"] += float(p_click.sum())
            cell["random_expected_clicks"] += random_clicks

    done = 0
    with ThreadPoolExecutor(loop.concurrency) as pool:
        for _ in pool.map(one, requests_of(cfg, loop, world)):
            done += 1
            if done % 200 == 0:
                progress(200)
    progress(done % 200)
    producer.flush()
    stats.rows = sorted(cells.values(), key=lambda c: (c["day"], c["policy"]))
    return stats
