"""The ranking service's benchmark (`flywheel bench serving`): latency at a fixed request rate and the
highest rate whose p99 stays under 50 ms, each request 100 candidates and k = 10 with ranker_v1's full
feature service; plus, in the same run, the feature read alone through Flywheel's reader and through
Feast's `get_online_features` (the baseline). Figures into var/bench/results.json, chart
var/bench/serving.png.

Setup: features for USERS users, ITEMS items and their (user, category) pairs written by Feast's own
writer into the running Redis, the items in a catalog file, an untrained ranker of ranker_v1's shape in a
throwaway registry; the service runs as `flywheel serve` in its own process, logging to a throwaway topic.
The load is open loop (requests leave on a fixed schedule, latency counts from the scheduled time, so a slow
answer delays nobody's clock). The fixed-rate step runs first, then the same step with a ranker whose
weights are doubled (scores spread like a trained ranker's, which cost the propensities more: the service
hot-reloads it, and then the flat one again), then the ramp.

The host's speed moves from day to day and within an hour, so the Feast SDK's read of the same requests,
measured in the same run and the same kind of Python work, is the yardstick beside the figures.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import numpy as np

from flywheel.settings import Settings

USERS, ITEMS, CATEGORIES, CANDIDATES, K = 5_000, 2_000, 24, 100, 10
FIXED_RATE = 200  # requests/s of the latency figures
P99_LIMIT_MS = 50.0
DURATION_S = 20.0
TRAINED_SPREAD = 2.0  # weights x2: logit s.d. about 1.4 within a request, as a trained ranker's
CONNECTIONS = 16  # the load generator's keep-alive connections (the workers accept them in turn)
SERVICE = "ranker_v1"


def write_features(
    store,
    users: list[str],
    items: list[str],
    categories: list[str],
    seed: int,
    at: datetime | None = None,
    categories_per_user: int = 6,
) -> None:
    """Random values of every feature of every view for these entities (stamped `at`, default now), through
    Feast's Python writer."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    now = at or datetime.now(UTC)
    pairs = [(u, c) for u in users for c in rng.choice(categories, categories_per_user, replace=False)]
    for view in store.list_feature_views():
        keys = [e.name for e in view.entity_columns]
        if keys == ["user_id"]:
            df = pd.DataFrame({"user_id": users})
        elif keys == ["item_id"]:
            df = pd.DataFrame({"item_id": items})
        else:
            df = pd.DataFrame({"user_id": [u for u, _ in pairs], "item_category": [c for _, c in pairs]})
        for f in view.features:
            kind, n = str(f.dtype), len(df)
            if kind == "Int64":
                df[f.name] = rng.integers(0, 500, n)
            elif kind == "Float64":
                df[f.name] = rng.random(n)
            else:
                df[f.name] = [now - timedelta(seconds=int(s)) for s in rng.integers(10, 90_000, n)]
        df["event_timestamp"] = now
        store.write_to_online_store(view.name, df)


def register_untrained(registry_dir: Path, store, seed: int, promote: bool = True, scale: float = 1.0) -> str:
    """An untrained ranker of the feature service's shape (weights times `scale`: larger spreads its scores),
    registered and, with `promote`, made champion."""
    import torch

    from training.model import ModelConfig, Ranker
    from training.registry import ModelVersion, Registry
    from training.trainset import plan

    p = plan(store, SERVICE)
    torch.manual_seed(seed)
    mcfg = ModelConfig(dense=(*p.features, *p.missing_columns))
    reg = Registry(registry_dir)
    model = Ranker(mcfg)
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(scale)
    mv = ModelVersion(version="", mode="full", parent_version=None, data_window={}, trainset_sha256="untrained",
                      feature_service=SERVICE, feature_service_version=p.version, model_config=mcfg.as_dict(),
                      run_key=f"untrained:{seed}" + (f":x{scale:g}" if scale != 1 else ""))  # fmt: skip
    version = reg.register(model.state_dict(), mv).version
    if promote:
        reg.promote(version, ["benchmark"])
    return version


def _drained(url: str, token: str, timeout_s: float = 120.0) -> None:
    """Wait until the previous step's impressions are in Kafka: their logging would compete for the CPU."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
        depth = next(float(x.split()[1]) for x in text.splitlines() if x.startswith("flywheel_serve_log_queue_depth"))
        if depth == 0:
            return
        time.sleep(0.5)


def load(url: str, token: str, bodies: list[dict], rate: float, duration_s: float) -> dict[str, Any]:
    """Open-loop load at `rate` requests/s; latency percentiles (ms) from each request's scheduled time.

    One asyncio loop writes HTTP/1.1 on CONNECTIONS keep-alive connections, taken in turn (more when all are
    busy), so the load spreads over the service's workers as a client's connection pool spreads it. The
    generator shares the service's two cores: it must cost little per request and add no latency of its own
    (a thread per request under the GIL did both)."""
    # The generator's own collector must not pause its loop mid-step: requests due meanwhile would go out late
    # and their wait would count against the service (this process holds Feast, pyarrow and a few thousand
    # pending requests; a full collection took about 200 ms).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return asyncio.run(_load(urlsplit(url), token, bodies, rate, duration_s))
    finally:
        gc.enable()
        gc.unfreeze()


async def _load(url: SplitResult, token: str, bodies: list[dict], rate: float, duration_s: float) -> dict[str, Any]:
    import orjson

    n = int(rate * duration_s)
    head = (f"POST /rank HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()  # fmt: skip
    payloads = [head + b"%d\r\n\r\n" % len(body) + body for body in map(orjson.dumps, bodies)]
    idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
    for _ in range(CONNECTIONS):
        idle.append(await asyncio.open_connection(url.hostname, url.port))
    opened = [writer for _, writer in idle]
    workers: dict[int, int] = {}  # worker pid -> connections it accepted
    for reader, writer in idle:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        pid = orjson.loads((await _response(reader))[1])["worker"]
        workers[pid] = workers.get(pid, 0) + 1
    latencies = np.full(n, np.nan)
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        await asyncio.sleep(due - loop.time())
        async with asyncio.timeout(30):
            if idle:
                reader, writer = idle.popleft()
            else:
                reader, writer = await asyncio.open_connection(url.hostname, url.port)
                opened.append(writer)
            writer.write(payloads[i % len(payloads)])
            status, _ = await _response(reader)
        latencies[i] = (loop.time() - due) * 1000
        if status != 200:
            errors += 1
        idle.append((reader, writer))

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors += sum(isinstance(r, BaseException) for r in results)
    elapsed = loop.time() - start
    for writer in opened:
        writer.close()
    return {
        "rate": rate,
        "achieved": n / elapsed,
        "p50": float(np.nanpercentile(latencies, 50)),
        "p99": float(np.nanpercentile(latencies, 99)),
        "errors": errors,
        "connections": len(opened),
        "connections_per_worker": sorted(workers.values()),
    }


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _feature_reads(cfg: Settings, store, bodies: list[dict], categories: dict[str, str | None]) -> dict[str, float]:
    """The feature read alone, the same requests, one at a time: Flywheel's reader and Feast's SDK."""
    from flywheel.serving.features import OnlineFeatures
    from training import scoring
    from training.trainset import plan

    reader = OnlineFeatures(store, plan(store, SERVICE))
    cached = OnlineFeatures(store, plan(store, SERVICE), cache=True)
    cached.start()
    at = datetime.now(UTC)
    out = {}
    for name, read in (
        ("reader", lambda b: reader.read(b["user_id"], b["candidates"], [categories[i] for i in b["candidates"]], at)),
        ("cached", lambda b: cached.read(b["user_id"], b["candidates"], [categories[i] for i in b["candidates"]], at)),
        ("feast", lambda b: scoring.online_rows(cfg, store, b["user_id"], b["candidates"], SERVICE, at, categories)),
    ):
        times = []
        for b in bodies[:300]:
            t0 = time.perf_counter()
            read(b)
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = float(np.median(times[20:]))
    cached.close()
    return out


def run(cfg: Settings, log: Callable[[str], None] = print) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import requests

    from flywheel.clients import feast_store
    from flywheel.clients.kafka import ensure_topics
    from flywheel.serving.catalog import catalog_dir
    from flywheel.serving.process import await_version, running
    from training.registry import Registry

    feast_store.apply(cfg)
    store = feast_store.store(cfg)
    users = [f"bench-u{i}" for i in range(USERS)]
    items = [f"bench-i{i}" for i in range(ITEMS)]
    cats = [f"bench-c{i}" for i in range(CATEGORIES)]
    category: dict[str, str | None] = {item: cats[i % CATEGORIES] for i, item in enumerate(items)}
    log(f"  writing features for {USERS:,} users and {ITEMS:,} items through Feast ...")
    write_features(store, users, items, cats, seed=5)
    catalog = catalog_dir(cfg.var_dir) / "bench-serving.parquet"
    catalog.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": items, "item_category": [category[i] for i in items]}), catalog)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    topic = f"flywheel.bench.served-{uuid.uuid4().hex[:6]}"
    ensure_topics(cfg.kafka, [topic])
    version = register_untrained(work / "registry", store, seed=1)
    rng = np.random.default_rng(9)
    bodies = [{"user_id": users[int(rng.integers(USERS))], "candidates": rng.choice(items, CANDIDATES, replace=False)
               .tolist(), "k": K} for _ in range(2000)]  # fmt: skip
    token = uuid.uuid4().hex
    env = {"FLYWHEEL_TRAINING__REGISTRY_DIR": str(work / "registry"), "FLYWHEEL_SERVING__TOKEN": token,
           "FLYWHEEL_KAFKA__TOPICS__EVENTS": topic}  # fmt: skip
    try:
        with running(work / "serve.log", lambda h: h.get("version") == version, env=env) as url:
            log("  warm-up ...")
            load(url, token, bodies, 50, 5)
            # The fixed rate first: after the ramp's last, overloaded step the service is still recovering.
            _drained(url, token)
            fixed = load(url, token, bodies, FIXED_RATE, DURATION_S)
            log(
                f"  {FIXED_RATE} req/s: p50 {fixed['p50']:.1f} ms, p99 {fixed['p99']:.1f} ms, "
                f"errors {fixed['errors']}, connections per worker {fixed['connections_per_worker']}"
            )
            # A trained ranker's scores are spread, not flat: the propensities' costlier case.
            spread = register_untrained(work / "registry", store, seed=1, scale=TRAINED_SPREAD)
            await_version(url, spread, cfg.serving.workers)
            load(url, token, bodies, 50, 5)
            _drained(url, token)
            trained = load(url, token, bodies, FIXED_RATE, DURATION_S)
            log(f"  {FIXED_RATE} req/s, trained-like scores: p50 {trained['p50']:.1f} ms, p99 {trained['p99']:.1f} ms")
            Registry(work / "registry").promote(version, ["benchmark: the flat ranker again for the ramp"])
            await_version(url, version, cfg.serving.workers)
            steps = [fixed]
            best = 0.0
            for rate in (*range(25, 200, 25), *range(200, 1001, 50)):
                _drained(url, token)
                r = load(url, token, bodies, rate, DURATION_S / 2)
                steps.append(r)
                log(
                    f"  {rate:.0f} req/s: achieved {r['achieved']:.0f}, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                    f"connections per worker {r['connections_per_worker']}"
                )
                if r["p99"] > P99_LIMIT_MS or r["errors"] or r["achieved"] < 0.95 * rate:
                    break
                best = rate
            metrics = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    finally:
        catalog.unlink(missing_ok=True)
    reads = _feature_reads(cfg, store, bodies, category)
    log(
        f"  feature read alone, median: Flywheel's reader {reads['reader']:.2f} ms (items cached: {reads['cached']:.2f}"
        f" ms), Feast SDK {reads['feast']:.2f} ms"
    )
    per_worker = fixed["connections_per_worker"]
    figures = {
        "serve_p50_ms": round(fixed["p50"], 2),
        "serve_p99_ms_100_candidates": round(fixed["p99"], 2),
        "serve_p50_ms_trained_spread": round(trained["p50"], 2),
        "serve_p99_ms_trained_spread": round(trained["p99"], 2),
        "serve_fixed_rate_rps": FIXED_RATE,
        "serve_max_rps": best,
        "serve_feature_read_ms_median": round(reads["reader"], 2),
        "serve_feature_read_cached_ms_median": round(reads["cached"], 2),
        "serve_feast_sdk_read_ms_median": round(reads["feast"], 2),
        "serve_feature_read_speedup_vs_feast_sdk": round(reads["feast"] / reads["reader"], 2),
        "serve_errors": int(sum(s["errors"] for s in (*steps, trained))),
        "serve_workers": cfg.serving.workers,
        # The kernel hashes connections to workers: the busiest worker's share of the fixed-rate run's load.
        "serve_busiest_worker_share": round(max(per_worker) / sum(per_worker), 3),
    }
    _chart(steps, trained, cfg.var_dir / "bench" / "serving.png")
    logged = [line for line in metrics.splitlines() if line.startswith("flywheel_serve_events_")]
    log("  " + "; ".join(logged))
    shutil.rmtree(work, ignore_errors=True)
    return figures


def _chart(steps: list[dict], trained: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(steps, key=lambda s: s["rate"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s["rate"] for s in steps], [s["p50"] for s in steps], "o-", label="p50")
    ax.plot([s["rate"] for s in steps], [s["p99"] for s in steps], "o-", label="p99")
    ax.plot([trained["rate"]], [trained["p99"]], "x", color="C3", markersize=9, label="p99, trained-like scores")
    ax.axhline(P99_LIMIT_MS, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("offered load (requests/s, 100 candidates, k = 10)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("flywheel serve: latency against load")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
