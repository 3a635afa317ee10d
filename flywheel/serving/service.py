"""The ranking service's work, without HTTP: check a request, read the candidates' online features, score
them with the model the request is assigned to, draw the list from the serving policy with its exact
propensities, and hand the list to the exposure log as contract-v1 impressions.

Assignment (`serving.experiment`): off, the champion ranks every list; split, a deterministic share of
users (by a hash of user_id) gets the previous champion; interleave, every list of at most
`policy.MAX_INTERLEAVED` slots is a team draft of the champion's and the previous champion's greedy
rankings, each slot attributed to one of them. Every list, whatever its policy, logs the probability
that the policy that drew it put that item at that slot, so IPS training and off-policy evaluation can use
all of them (docs/design/serving.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel import policy
from flywheel.errors import FlywheelError
from flywheel.serving.catalog import Catalog
from flywheel.serving.exposure import ExposureLog
from flywheel.serving.features import OnlineFeatures, Served
from flywheel.serving.models import Loaded, Models
from flywheel.settings import Settings
from training.registry import Registry

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

SOURCE = "service"


class BadRequest(FlywheelError):
    """The request cannot be served as sent (HTTP 422); the message says what to change."""


class NotReady(FlywheelError):
    """The service cannot rank yet (HTTP 503): no champion in the registry."""


@dataclass
class Request:
    user_id: str
    candidates: list[str]
    k: int
    context: dict[str, Any] = field(default_factory=dict)
    at: int | None = None  # epoch ms the list is shown at (a simulated clock); None: now


@dataclass
class Timings:
    features_s: float = 0.0
    score_s: float = 0.0


def in_previous_share(user: str, share: float) -> bool:
    """Deterministic split by user: the same user always gets the same arm."""
    return zlib.crc32(user.encode()) % 10_000 < share * 10_000


def check_online_store(cfg: Settings, store: FeatureStore) -> None:
    """Raise NotReady, naming the fix, unless Feast's Redis online store answers."""
    import redis

    from flywheel.compat import feast as feast_private

    try:
        feast_private.redis_client(store, cfg.serving.store_timeout_s).ping()
    except redis.RedisError as exc:
        r = cfg.redis
        raise NotReady(
            f"the online store (Redis at {r.host}:{r.port}) does not answer ({exc}): `flywheel infra up -s redis`, "
            "or set FLYWHEEL_REDIS__HOST / __PORT / __PASSWORD"
        ) from None


class RankingService:
    def __init__(
        self,
        cfg: Settings,
        store: FeatureStore | None = None,
        exposure: ExposureLog | None = None,
        seed: int | None = None,
    ):
        from flywheel.clients import feast_store

        self.cfg = cfg
        self.store = store or feast_store.store(cfg)
        self.models = Models(Registry(cfg.training.registry_dir))
        self.catalog = Catalog(cfg.offline_dir, cfg.var_dir)
        self.exposure = exposure or ExposureLog(
            cfg.kafka, cfg.var_dir / "serving" / "unlogged.jsonl", cfg.serving.log_queue
        )
        self._features: dict[str, OnlineFeatures] = {}
        self._features_lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the online store answers, read the catalog and the models, compile the propensity kernel, start
        the background refresh."""
        check_online_store(self.cfg, self.store)
        self.catalog.refresh()
        self.models.refresh()
        self._prepare()
        policy.warm_up()
        self._thread = threading.Thread(target=self._background, name="serving-refresh", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        """Resolve the feature services of the current models before a request needs them."""
        for m in (self.models.current.champion, self.models.current.previous):
            if m is not None:
                self._reader(m.feature_service)

    def _reader(self, service: str) -> OnlineFeatures:
        reader = self._features.get(service)
        if reader is None:
            from training.trainset import plan

            with self._features_lock:
                reader = self._features.get(service)
                if reader is None:
                    s = self.cfg.serving
                    reader = OnlineFeatures(self.store, plan(self.store, service), s.feature_cache, s.store_timeout_s)
                    reader.start()
                    self._features[service] = reader
        return reader

    def _background(self) -> None:
        s = self.cfg.serving
        next_catalog = time.monotonic() + s.catalog_refresh_s
        while not self._stop.wait(s.reload_interval_s):
            try:
                if self.models.refresh():
                    self._prepare()
                if time.monotonic() >= next_catalog:
                    self.catalog.refresh()
                    next_catalog = time.monotonic() + s.catalog_refresh_s
            except Exception:  # a bad refresh keeps the last good state serving; the log says why
                log.exception("refresh failed; still serving %s", self.version)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for reader in self._features.values():
            reader.close()
        self.exposure.close()

    def feature_cache_counts(self) -> tuple[int, int]:
        """Entity hashes served from memory, and read from Redis, by the cached kinds (since start)."""
        caches = [r.cache for r in list(self._features.values()) if r.cache is not None]
        return sum(c.hits for c in caches), sum(c.misses for c in caches)

    def feature_cache_state(self) -> str:
        """The feature caches' state: tracking (each follows Redis's reports), off, or why not."""
        states = {r.cache.state for r in list(self._features.values()) if r.cache is not None}
        return "off" if not states else states.pop() if len(states) == 1 else "; ".join(sorted(states))

    @property
    def version(self) -> str | None:
        c = self.models.current.champion
        return c.version if c else None

    # -- a request ----------------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        s = self.cfg.serving
        if not req.candidates:
            raise BadRequest("candidates: empty; send the item ids to rank")
        if len(req.candidates) > s.max_candidates:
            raise BadRequest(f"candidates: {len(req.candidates)} > serving.max_candidates ({s.max_candidates})")
        if len(set(req.candidates)) != len(req.candidates):
            raise BadRequest("candidates: an item id appears twice")
        if not 1 <= req.k <= s.max_k:
            raise BadRequest(f"k: {req.k} is outside 1..serving.max_k ({s.max_k})")
        unknown = self.catalog.unknown_items(req.candidates)
        if unknown:
            raise BadRequest(
                f"candidates: {len(unknown)} unknown item(s), first {unknown[:5]}; add them to var/catalog/*.parquet "
                "(item_id, item_category) or let them reach the event log"
            )
        if s.unknown_users == "reject" and req.user_id not in self.catalog.users:
            raise BadRequest(f"user_id: {req.user_id!r} has no events (serving.unknown_users is reject)")

    def rank(self, req: Request, timings: Timings | None = None) -> dict[str, Any]:
        self.check(req)
        current = self.models.current  # one set for the whole request, whatever a reload does meanwhile
        if current.champion is None:
            raise NotReady(
                "no champion model yet: trigger the retrain_monthly_full DAG, or run `flywheel train fit --mode full` "
                "and `flywheel train decide <version>`"
            )
        timings = timings or Timings()
        at_ms = req.at if req.at is not None else int(time.time() * 1000)
        at = datetime.fromtimestamp(at_ms / 1000, UTC)
        items = req.candidates
        cats = self.catalog.category(items)
        mode = self.cfg.serving.experiment
        previous = current.previous
        p = self.cfg.policy
        m = len(items)
        if mode.mode == "interleave" and previous is not None and min(req.k, m) <= policy.MAX_INTERLEAVED:
            logits = self._logits([current.champion, previous], req.user_id, items, cats, at, timings)
            a, b = (np.argsort(-x, kind="stable") for x in logits)
            with self._rng_lock:
                shown, teams, marginal, conditional = policy.team_draft(a, b, req.k, p.epsilon, self._rng)
            names = {0: current.champion.version, 1: previous.version, -1: "random"}
            team_of = [names[int(t)] for t in teams]
            scores = [float(logits[0 if t != 1 else 1][i]) for i, t in zip(shown, teams, strict=True)]
            kind, version = "interleaved", f"{current.champion.version}+{previous.version}"
        else:
            ranker = current.champion
            kind = "champion"
            if mode.mode == "split" and previous is not None and in_previous_share(req.user_id, mode.previous_share):
                ranker, kind = previous, "previous"
            (z,) = self._logits([ranker], req.user_id, items, cats, at, timings)
            with self._rng_lock:
                shown, marginal, conditional = policy.draw(z, req.k, p.temperature, p.epsilon, self._rng)
            team_of = None
            scores = [float(z[i]) for i in shown]
            version = ranker.version
        request_id = uuid.uuid4().hex
        out_items, events = [], []
        for slot, (i, prop, seq, score) in enumerate(zip(shown, marginal, conditional, scores, strict=True), 1):
            prob = float(np.clip(prop, 1e-12, 1.0))
            out_items.append({"item_id": items[i], "position": slot, "score": float(1 / (1 + np.exp(-score))),
                              "propensity": prob})  # fmt: skip
            context = {**req.context, "policy": version, "policy_kind": kind,
                       "sequential_propensity": float(np.clip(seq, 1e-12, 1.0))}  # fmt: skip
            if team_of is not None:
                context["team"] = team_of[slot - 1]
            events.append(
                {
                    "schema_version": 1,
                    "event_id": f"{request_id}-{slot}-i",
                    "user_id": req.user_id,
                    "item_id": items[i],
                    "item_category": cats[i],
                    "event_type": "impression",
                    "position": slot,
                    "propensity": prob,
                    "request_id": request_id,
                    "source": SOURCE,
                    "context": context,
                    "event_time": at_ms,
                    "ingest_time": at_ms,
                }
            )
        self.exposure.log(events)
        return {"request_id": request_id, "policy": {"version": version, "kind": kind}, "items": out_items}

    def _logits(
        self, models: list[Loaded], user: str, items: list[str], cats: list[str | None], at: datetime, timings: Timings
    ) -> list[np.ndarray]:
        served: dict[str, Served] = {}
        out = []
        for model in models:
            if model.feature_service not in served:
                t0 = time.perf_counter()
                served[model.feature_service] = self._reader(model.feature_service).columns(user, items, cats, at)
                timings.features_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            out.append(model.score(served[model.feature_service]))
            timings.score_s += time.perf_counter() - t0
        return out
