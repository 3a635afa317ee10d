"""The HTTP face of the ranking service (FastAPI): POST /rank, GET /healthz, GET /metrics.

Every route but /healthz needs `Authorization: Bearer <serving token>` (FLYWHEEL_SERVING__TOKEN).
A request the service cannot serve as sent gets a 4xx whose body names the field and the fix; a missing
feature is never an error (the model sees the `__missing` indicators it was trained with).
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request as StarletteRequest

from flywheel.serving.service import BadRequest, NotReady, RankingService, Request, Timings
from flywheel.settings import Settings, load_settings

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)
SAMPLE_INTERVAL_S = 0.5  # how stale the log-queue and model gauges may be
METRICS_DIR_ENV = "PROMETHEUS_FLYWHEEL_SERVE_DIR"  # not FLYWHEEL_*: settings reject unknown ones


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    candidates: list[Annotated[str, Field(min_length=1, max_length=128)]]
    k: int = 10
    context: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=24)
    at: int | None = Field(None, ge=946_684_800_000, le=4_102_444_800_000)  # a simulated clock (epoch ms)


class Metrics:
    """The service's Prometheus metrics. Under several uvicorn workers (`serve` sets METRICS_DIR_ENV) each
    worker writes its values to files there and a scrape, whichever worker answers it, sums them all, so
    /metrics reports the whole service, not one worker."""

    def __init__(self, service: RankingService):
        # Not PROMETHEUS_MULTIPROC_DIR itself: importing Feast sets that in every process (feast/metrics.py).
        self.multiprocess_dir = os.environ.get(METRICS_DIR_ENV)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("flywheel_serve_requests", "Rank requests by outcome", ["outcome"], registry=r)
        self.latency = Histogram("flywheel_serve_latency_seconds", "Time to answer a rank request",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.features = Histogram("flywheel_serve_feature_read_seconds", "Online feature read per request",
                                  buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self._model = Gauge("flywheel_serve_model_info", "1 for the champion serving, 0 for earlier ones",
                            ["version"], registry=r, multiprocess_mode="livemax")  # fmt: skip
        self._shown: str | None = None
        self._service = service
        exposure = service.exposure
        # Sampled by a thread rather than read at scrape time: callbacks cannot cross worker processes.
        self._sampled = [
            (Gauge(name, doc, registry=r, multiprocess_mode="livesum"), fn)
            for name, doc, fn in (
                ("flywheel_serve_log_queue_depth", "Impressions waiting for Kafka", lambda: exposure.depth),
                ("flywheel_serve_events_queued", "Impressions handed to the log", lambda: exposure.queued),
                ("flywheel_serve_events_logged", "Impressions Kafka acknowledged", lambda: exposure.logged),
                ("flywheel_serve_events_dead_lettered", "Impressions kept in the dead-letter file",
                 lambda: exposure.dead_lettered),
                ("flywheel_serve_model_swaps", "Model sets loaded since start", lambda: service.models.swaps),
                ("flywheel_serve_feature_cache_hits", "Entity hashes served from memory",
                 lambda: service.feature_cache_counts()[0]),
                ("flywheel_serve_feature_cache_misses", "Entity hashes of cached kinds read from Redis",
                 lambda: service.feature_cache_counts()[1]),
            )
        ]  # fmt: skip
        self._lock = threading.Lock()  # the sampling thread and a scrape both sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_every, args=(SAMPLE_INTERVAL_S,), daemon=True)

    def sample(self) -> None:
        with self._lock:
            for gauge, fn in self._sampled:
                gauge.set(fn())
            version = self._service.version
            if version != self._shown:
                if self._shown is not None:
                    self._model.labels(self._shown).set(0)
                if version is not None:
                    self._model.labels(version).set(1)
                self._shown = version

    def _sample_every(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sample()

    def start(self) -> None:
        if self.multiprocess_dir:  # alone, a worker samples at scrape time; summed, every worker must keep up
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.multiprocess_dir:  # this worker's live gauges leave the sums
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def exposition(self) -> bytes:
        self.sample()
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, self.multiprocess_dir)
        return generate_latest(merged)


def create_app(service: RankingService, token: str) -> FastAPI:
    """The app; its lifespan starts the service's background work and, at shutdown, flushes its log."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        metrics.start()
        # Everything loaded so far (Feast, torch, the models) lives as long as the worker: out of the collector's
        # sight, a full collection scans the request's garbage, not ~400k objects (measured 235 ms -> 15 ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            metrics.stop()
            service.close()

    app = FastAPI(title="Flywheel ranking service", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = Metrics(service)

    async def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "send Authorization: Bearer <token> (FLYWHEEL_SERVING__TOKEN)")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "ok": service.version is not None,
            "version": service.version,
            "worker": os.getpid(),
            "catalog_items": len(service.catalog.categories),
            "catalog_read_at": service.catalog.refreshed_at,
            "log_queue_depth": service.exposure.depth,
            "feature_cache": service.feature_cache_state(),
        }

    @app.get("/metrics", dependencies=[Depends(authorized)])
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # A plain route, with the body parsed and checked by pydantic's JSON parser in one pass (FastAPI's body
    # parameter decodes the JSON first and resolves dependencies per request). async: each worker ranks one
    # request at a time on its event loop; the work is CPU-bound under the GIL, so a thread pool only adds
    # hand-offs and contention (measured: saturated at 200 requests/s, not so here).
    @app.post("/rank")
    async def rank(request: StarletteRequest) -> Response:
        t0 = time.perf_counter()
        await authorized(request.headers.get("authorization"))
        try:
            body = RankBody.model_validate_json(await request.body())
        except ValidationError as exc:  # FastAPI's shape: {"detail": [{"type", "loc", "msg", "input"}, ...]}
            metrics.requests.labels("rejected").inc()
            detail = orjson.loads(exc.json(include_url=False))
            return Response(orjson.dumps({"detail": detail}), status_code=422, media_type="application/json")
        timings = Timings()
        try:
            out = service.rank(Request(body.user_id, body.candidates, body.k, dict(body.context), body.at), timings)
        except BadRequest as exc:
            metrics.requests.labels("rejected").inc()
            raise HTTPException(422, str(exc)) from None
        except NotReady as exc:
            metrics.requests.labels("not_ready").inc()
            raise HTTPException(503, str(exc)) from None
        except RedisError as exc:  # the online store went away: the caller may retry or fall back
            metrics.requests.labels("store_unavailable").inc()
            raise HTTPException(503, f"the online store does not answer: {exc}") from None
        metrics.requests.labels("ok").inc()
        metrics.features.observe(timings.features_s)
        metrics.latency.observe(time.perf_counter() - t0)
        return Response(orjson.dumps(out), media_type="application/json")  # plain JSON: no encoder pass

    return app


def from_settings() -> FastAPI:
    """One worker's app, from the settings (uvicorn calls it in each worker process)."""
    import torch

    cfg = load_settings()
    torch.set_num_threads(cfg.serving.torch_threads)
    return create_app(RankingService(cfg), cfg.serving.require_token())


def serve(cfg: Settings, host: str, port: int, workers: int, setup_logging: Callable[[], None] | None = None) -> None:
    """Run until interrupted: `workers` processes (the GIL holds one to about a core), each with its own
    models, reader and exposure log, behind one port (`serving.workers`); each worker calls `setup_logging`."""
    import uvicorn

    from flywheel.serving import workers as supervisor

    if workers == 1:
        app = from_settings()
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    else:
        # Each worker's metrics go to files in a directory of this start's own (another service may share
        # var_dir), summed at scrape time.
        (cfg.var_dir / "serving").mkdir(parents=True, exist_ok=True)
        metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=cfg.var_dir / "serving")
        # prometheus_client chooses file-backed values at import, from this variable: the workers are spawned.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_ENV] = metrics_dir
        try:
            supervisor.run(host, port, workers, setup_logging)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
