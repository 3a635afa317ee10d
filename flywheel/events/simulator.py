"""A seeded recommender-traffic simulator: the volume, drift and faults the real sample does not have.

World: users and items with latent preferences and categories; items keep arriving; a stochastic
logging policy (Plackett-Luce over a noisy score, sampled with the Gumbel top-k trick) fills K slots per
request and logs, as `propensity`, the exact marginal probability that it put this item at this slot
(`flywheel.policy`; what per-slot IPS needs) and, as `context.sequential_propensity`, the probability
given the items above it (what the draw used; for cascade and slate estimators); clicks follow a
position-based model (examination 1/position^eta times relevance); some clicks become purchases. Traffic has daily and
weekly seasonality.

Faults, each at a requested rate and counted: out-of-order arrival (within the allowed
out-of-orderness), late arrival (beyond the allowed lateness), duplicates (same event_id), malformed
records (each kind of contract break), a drift from a given time, optionally until another (of tastes,
or a layout change that flattens position bias), and a corrupted week (schema-valid but wrong: null
categories, constant propensity 1.0, positions out of the slot range).

Everything is a function of the seed: the same config gives byte-identical records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict

from flywheel import policy

MS_PER_DAY = 86_400_000
CLICK_SCALE = 0.12  # P(click) = examination(position) * relevance * CLICK_SCALE


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out_of_order_rate: float = 0.0
    out_of_order_max_s: float = 20.0  # must stay within the feature job's bounded out-of-orderness
    late_rate: float = 0.0
    late_min_s: float = 900.0  # beyond the job's allowed lateness
    late_max_s: float = 3600.0
    duplicate_rate: float = 0.0
    malformed_rate: float = 0.0
    drift_at: datetime | None = None
    drift_until: datetime | None = None  # a transient drift: back to normal here
    # tastes: users like what other users liked; layout: a UI change makes lower positions almost as
    # visible as the top (examination position**-layout_eta instead of **-examination_eta)
    drift_kind: Literal["tastes", "layout"] = "tastes"
    layout_eta: float = 0.1
    corrupt_week_start: datetime | None = None
    corrupt_fraction: float = 0.3


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 7
    users: int = 20_000
    items: int = 2_000
    categories: int = 24
    positions: int = 10
    start: datetime = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
    days: float = 7.0
    events: int = 100_000  # exact number of records emitted (valid + duplicates + malformed)
    new_items_per_day: float = 20.0
    latent_dim: int = 8
    item_quality_sd: float = 0.5  # how much items differ in appeal beyond tastes (what item-level features can learn)
    examination_eta: float = 0.8
    policy_temperature: float = 1.0  # the logging policy is PL(softmax(score / T)): larger T explores more
    purchase_given_click: float = 0.1
    id_prefix: str = ""  # before every user and item id: worlds that share an online store keep apart
    faults: Faults = Faults()


@dataclass
class SimStats:
    records: int = 0
    valid: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    out_of_order: int = 0
    late: int = 0
    duplicates: int = 0
    malformed: int = 0
    corrupted: int = 0
    drifted: int = 0
    malformed_kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SimOutput:
    keys: list[bytes]
    values: list[bytes]
    arrival_ms: np.ndarray
    stats: SimStats


MALFORMED_KINDS = (
    "not_json",
    "not_an_object",
    "missing_event_id",
    "bad_event_type",
    "position_not_int",
    "propensity_zero",
    "propensity_above_one",
    "event_time_string",
)


class World:
    """Users, items and categories with latent tastes; the logging policy's beliefs; who clicks what."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator):
        d, c = cfg.latent_dim, cfg.categories
        self.cat_latent = rng.normal(size=(c, d)) / np.sqrt(d)
        self.user_latent = rng.normal(size=(cfg.users, d)) / np.sqrt(d)
        self.user_activity = rng.lognormal(0.0, 1.0, cfg.users)
        self.user_activity /= self.user_activity.sum()
        n_new = int(round(cfg.new_items_per_day * cfg.days))
        self.n_items = cfg.items + n_new
        self.item_cat = rng.integers(0, c, self.n_items)
        self.item_latent = self.cat_latent[self.item_cat] + 0.5 * rng.normal(size=(self.n_items, d)) / np.sqrt(d)
        self.item_quality = rng.normal(0.0, cfg.item_quality_sd, self.n_items)
        start_ms = int(cfg.start.timestamp() * 1000)
        birth = np.full(self.n_items, start_ms, dtype=np.int64)
        birth[cfg.items :] = np.sort(rng.integers(start_ms, start_ms + int(cfg.days * MS_PER_DAY), n_new))
        self.item_birth = birth  # non-decreasing: available items are a prefix
        # The logging policy's belief: the user's category taste plus a noisy quality estimate.
        self.user_cat_pref = self.user_latent @ self.cat_latent.T * 3.0
        self.policy_quality = self.item_quality + rng.normal(0.0, 0.3, self.n_items)
        # After a drift, tastes are remapped: users like what other users liked before.
        self.drift_perm = rng.permutation(cfg.users)

    def click_probability(
        self, cfg: SimConfig, users: np.ndarray, shown: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For requests by `users` at times `t` (ms) that showed `shown` (rows, slots, slot 1 first): the
        probability of a click in each slot (examination by position times relevance), the relevance
        (purchases follow it), and whether each request falls in a drift."""
        f = cfg.faults
        k = shown.shape[1]
        drift_ms = int(f.drift_at.timestamp() * 1000) if f.drift_at else None
        until_ms = int(f.drift_until.timestamp() * 1000) if f.drift_until else np.iinfo(np.int64).max
        drifted = (t >= drift_ms) & (t < until_ms) if drift_ms is not None else np.zeros(len(t), bool)
        eff_user = np.where(drifted & (f.drift_kind == "tastes"), self.drift_perm[users], users)
        rel = _sigmoid(
            np.einsum("rd,rkd->rk", self.user_latent[eff_user] * 4.0, self.item_latent[shown])
            + self.item_quality[shown]
            - 1.0
        )
        exam = (1.0 / np.arange(1, k + 1) ** cfg.examination_eta)[None, :]
        if f.drift_kind == "layout":
            flat = (1.0 / np.arange(1, k + 1) ** f.layout_eta)[None, :]
            exam = np.where(drifted[:, None], flat, exam)
        return exam * rel * CLICK_SCALE, rel, drifted


def request_times(cfg: SimConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Request timestamps (ms) with a daily cycle (peak in the evening) and busier weekends."""
    start_ms = int(cfg.start.timestamp() * 1000)
    minutes = int(np.ceil(cfg.days * 1440))
    t = np.arange(minutes)
    hour = (t % 1440) / 60.0
    weekday = (cfg.start.weekday() + t // 1440) % 7
    weight = (1.0 + 0.6 * np.sin(2 * np.pi * (hour - 14.0) / 24.0)) * np.where(weekday >= 5, 1.25, 1.0)
    counts = rng.multinomial(n, weight / weight.sum())
    minute_of = np.repeat(t, counts)
    return np.sort(start_ms + minute_of * 60_000 + rng.integers(0, 60_000, n))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate(cfg: SimConfig) -> SimOutput:
    """Generate exactly cfg.events records, in arrival order."""
    rng = np.random.default_rng(cfg.seed)
    world = World(cfg, rng)
    f = cfg.faults
    k = cfg.positions
    # Expected records per request: K impressions, ~4% clicks, few purchases, plus faults.
    per_request = k * 1.06 * (1 + f.duplicate_rate + f.malformed_rate)
    n_requests = int(np.ceil(cfg.events / per_request * 1.05)) + 10
    req_time = request_times(cfg, n_requests, rng)
    req_user = rng.choice(cfg.users, size=n_requests, p=world.user_activity)

    cols: dict[str, list[np.ndarray]] = {
        n: [] for n in ("req", "user", "item", "pos", "prop", "seq", "click", "purchase", "drift")
    }
    chunk = 2000
    for lo in range(0, n_requests, chunk):
        hi = min(lo + chunk, n_requests)
        t, u = req_time[lo:hi], req_user[lo:hi]
        n_avail = np.searchsorted(world.item_birth, t, side="right")
        score = (world.user_cat_pref[u][:, world.item_cat] + world.policy_quality[None, :]) / cfg.policy_temperature
        score = np.where(np.arange(world.n_items)[None, :] < n_avail[:, None], score, -np.inf)
        top = policy.sample(score, k, rng)  # slot 1..K
        prop = policy.marginals_of_shown(score, top)  # P(this item at this slot): what per-slot IPS needs
        seq = policy.sequential(score, top)  # P(this item here | the items above it): for cascade estimators
        p_click, rel, drifted = world.click_probability(cfg, u, top, t)
        click = rng.random(top.shape) < p_click
        purchase = click & (rng.random(top.shape) < cfg.purchase_given_click * rel)
        cols["req"].append(np.repeat(np.arange(lo, hi), k))
        cols["user"].append(np.repeat(u, k))
        cols["item"].append(top.ravel())
        cols["pos"].append(np.tile(np.arange(1, k + 1), hi - lo))
        cols["prop"].append(np.clip(prop.ravel(), 1e-12, 1.0))
        cols["seq"].append(np.clip(seq.ravel(), 1e-12, 1.0))
        cols["click"].append(click.ravel())
        cols["purchase"].append(purchase.ravel())
        cols["drift"].append(np.repeat(drifted, k))
    c = {n: np.concatenate(v) for n, v in cols.items()}

    # Explode into events: impressions, clicks (after a short dwell), purchases (later still).
    imp_t = req_time[c["req"]] + c["pos"] * 3
    click_t = imp_t + rng.exponential(8_000, len(imp_t)).astype(np.int64) + 1
    buy_t = click_t + rng.exponential(120_000, len(imp_t)).astype(np.int64) + 1
    idx = np.concatenate([np.arange(len(imp_t)), np.flatnonzero(c["click"]), np.flatnonzero(c["purchase"])])
    etype = np.concatenate(
        [np.zeros(len(imp_t), np.int8), np.ones(c["click"].sum(), np.int8), np.full(c["purchase"].sum(), 2, np.int8)]
    )
    etime = np.concatenate([imp_t, click_t[c["click"]], buy_t[c["purchase"]]])
    n_valid_target = int(round(cfg.events / (1 + f.duplicate_rate + f.malformed_rate)))
    keep = np.argsort(etime, kind="stable")[:n_valid_target]
    idx, etype, etime = idx[keep], etype[keep], etime[keep]
    n = len(idx)

    # Arrival: a small ingest delay, plus the injected disorder.
    delay = rng.exponential(200, n).astype(np.int64)
    ooo = rng.random(n) < f.out_of_order_rate
    delay[ooo] += rng.integers(1_000, int(f.out_of_order_max_s * 1000), ooo.sum())
    late = (rng.random(n) < f.late_rate) & ~ooo
    delay[late] += rng.integers(int(f.late_min_s * 1000), int(f.late_max_s * 1000), late.sum())
    arrival = etime + delay

    corrupt = np.zeros(n, bool)
    if f.corrupt_week_start is not None:
        cs = int(f.corrupt_week_start.timestamp() * 1000)
        in_week = (etime >= cs) & (etime < cs + 7 * MS_PER_DAY)
        corrupt = in_week & (rng.random(n) < f.corrupt_fraction)

    stats = SimStats(
        valid=n,
        out_of_order=int(ooo.sum()),
        late=int(late.sum()),
        corrupted=int(corrupt.sum()),
        drifted=int(c["drift"][idx].sum()),
    )
    types = ("impression", "click", "purchase")
    start_s = int(cfg.start.timestamp())
    # Gather per-event columns once and loop over plain Python values (numpy scalars are slow).
    req_l, pos_l = c["req"][idx].tolist(), c["pos"][idx].tolist()
    user_l, item_l = c["user"][idx].tolist(), c["item"][idx].tolist()
    prop_l, seq_l = c["prop"][idx].tolist(), c["seq"][idx].tolist()
    cat_l = world.item_cat[c["item"][idx]].tolist()
    hour_l = ((etime // 3_600_000) % 24).tolist()
    etype_l, etime_l, arrival_l, corrupt_l = etype.tolist(), etime.tolist(), arrival.tolist(), corrupt.tolist()
    values: list[bytes] = []
    keys: list[bytes] = []
    for j in range(n):
        user = f"{cfg.id_prefix}u{user_l[j]}"
        request = f"sim{cfg.seed}-{start_s}-{req_l[j]}"
        etype_name = types[etype_l[j]]
        ev = {
            "schema_version": 1,
            "event_id": f"{request}-{pos_l[j]}-{etype_name[0]}",
            "user_id": user,
            "item_id": f"{cfg.id_prefix}i{item_l[j]}",
            "item_category": f"cat{cat_l[j]}",
            "event_type": etype_name,
            "position": pos_l[j],
            "propensity": prop_l[j],
            "request_id": request,
            "source": "simulator",
            "context": {"hour": hour_l[j], "sequential_propensity": seq_l[j]},
            "event_time": etime_l[j],
            "ingest_time": arrival_l[j],
        }
        # Producers of three contract versions, interleaved like a fleet upgrading app by app: by request, a
        # fifth write v3 (with a field this pipeline's contract does not have yet: carried as an extra), about
        # a quarter v2 (with a session), the rest v1. No random draws: a seed's other streams stay as they were.
        if req_l[j] % 5 == 2:
            ev |= {"schema_version": 3, "session_id": f"{user}-s{etime_l[j] // 86_400_000}", "app_build": 7010}
        elif req_l[j] % 3 == 1:
            ev |= {"schema_version": 2, "session_id": f"{user}-s{etime_l[j] // 86_400_000}"}
        if corrupt_l[j]:
            ev["item_category"] = None
            ev["propensity"] = 1.0
            ev["position"] = ev["position"] + 50
        values.append(orjson.dumps(ev))
        keys.append(user.encode())
    arrivals = arrival_l

    # Duplicates: the same record again, a little later (a producer retry or an app double-send).
    n_dup = int(round(n * f.duplicate_rate))
    for j in rng.choice(n, size=n_dup, replace=False) if n_dup else []:
        values.append(values[j])
        keys.append(keys[j])
        arrivals.append(int(arrival[j]) + int(rng.integers(1, 60_000)))
    stats.duplicates = n_dup

    # Malformed records, cycling through every kind of contract break.
    n_bad = cfg.events - len(values)
    for m, j in enumerate(rng.integers(0, n, n_bad) if n_bad > 0 else []):
        kind = MALFORMED_KINDS[m % len(MALFORMED_KINDS)]
        values.append(_malform(kind, orjson.loads(values[j])))
        keys.append(keys[j])
        arrivals.append(int(arrival[j]))
        stats.malformed_kinds[kind] = stats.malformed_kinds.get(kind, 0) + 1
    stats.malformed = max(n_bad, 0)

    order = np.argsort(np.asarray(arrivals, dtype=np.int64), kind="stable")
    stats.records = len(values)
    kinds = etype
    stats.impressions, stats.clicks, stats.purchases = (int((kinds == t).sum()) for t in range(3))
    return SimOutput(
        [keys[o] for o in order], [values[o] for o in order], np.asarray(arrivals, dtype=np.int64)[order], stats
    )


def _malform(kind: str, ev: dict[str, Any]) -> bytes:
    ev = dict(ev, event_id=ev["event_id"] + "-bad")
    if kind == "not_json":
        return orjson.dumps(ev)[:-7]
    if kind == "not_an_object":
        return orjson.dumps([ev["event_id"], ev["user_id"]])
    if kind == "missing_event_id":
        ev.pop("event_id")
    elif kind == "bad_event_type":
        ev["event_type"] = "hover"
    elif kind == "position_not_int":
        ev["position"] = "three"
    elif kind == "propensity_zero":
        ev["propensity"] = 0
    elif kind == "propensity_above_one":
        ev["propensity"] = 1.5
    elif kind == "event_time_string":
        ev["event_time"] = datetime.fromtimestamp(ev["event_time"] / 1000).isoformat()
    return orjson.dumps(ev)
