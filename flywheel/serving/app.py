"""The HTTP face of the ranking service (FastAPI): POST /rank, GET /healthz, GET /metrics.

Every route but /healthz needs `Authorization: Bearer <serving token>` (FLYWHEEL_SERVING__TOKEN).
A request the service cannot serve as sent gets a 4xx whose body names the field and the fix; a missing
feature is never an error (the model sees the `__missing` indicators it was trained with).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from flywheel.serving.service import BadRequest, NotReady, RankingService, Request, Timings
from flywheel.settings import Settings, load_settings

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    candidates: list[Annotated[str, Field(min_length=1, max_length=128)]]
    k: int = 10
    context: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=24)
    at: int | None = Field(None, ge=946_684_800_000, le=4_102_444_800_000)  # a simulated clock (epoch ms)


class Metrics:
    def __init__(self, service: RankingService):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("flywheel_serve_requests", "Rank requests by outcome", ["outcome"], registry=r)
        self.latency = Histogram("flywheel_serve_latency_seconds", "Time to answer a rank request",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.features = Histogram("flywheel_serve_feature_read_seconds", "Online feature read per request",
                                  buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        model = Gauge("flywheel_serve_model_info", "The champion serving (value 1)", ["version"], registry=r)
        self._model = model
        self._shown: str | None = None
        exposure = service.exposure
        for name, doc, fn in (
            ("flywheel_serve_log_queue_depth", "Impressions waiting for Kafka", lambda: exposure.depth),
            ("flywheel_serve_events_queued", "Impressions handed to the log", lambda: exposure.queued),
            ("flywheel_serve_events_logged", "Impressions Kafka acknowledged", lambda: exposure.logged),
            ("flywheel_serve_events_dead_lettered", "Impressions kept in the dead-letter file",
             lambda: exposure.dead_lettered),
            ("flywheel_serve_model_swaps", "Model sets loaded since start", lambda: service.models.swaps),
        ):  # fmt: skip
            Gauge(name, doc, registry=r).set_function(fn)

    def model(self, version: str | None) -> None:
        if version != self._shown:
            if self._shown is not None:
                self._model.remove(self._shown)
            if version is not None:
                self._model.labels(version).set(1)
            self._shown = version


def create_app(service: RankingService, token: str) -> FastAPI:
    """The app; its lifespan starts the service's background work and, at shutdown, flushes its log."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="Flywheel ranking service", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = Metrics(service)

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "send Authorization: Bearer <token> (FLYWHEEL_SERVING__TOKEN)")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "ok": service.version is not None,
            "version": service.version,
            "catalog_items": len(service.catalog.categories),
            "catalog_read_at": service.catalog.refreshed_at,
            "log_queue_depth": service.exposure.depth,
        }

    @app.get("/metrics", dependencies=[Depends(authorized)])
    def prometheus() -> PlainTextResponse:
        metrics.model(service.version)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/rank", dependencies=[Depends(authorized)])
    def rank(body: RankBody) -> dict[str, Any]:
        t0 = time.perf_counter()
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
        return out

    return app


def from_settings() -> FastAPI:
    """One worker's app, from the settings (uvicorn calls it in each worker process)."""
    cfg = load_settings()
    return create_app(RankingService(cfg), cfg.serving.require_token())


def serve(cfg: Settings, host: str, port: int, workers: int) -> None:
    """Run until interrupted: `workers` processes (the GIL holds one to about a core), each with its own
    models, reader and exposure log, behind one port."""
    import uvicorn

    if workers == 1:
        app = from_settings()
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    else:
        uvicorn.run("flywheel.serving.app:from_settings", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False)  # fmt: skip
