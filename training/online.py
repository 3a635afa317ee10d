"""Online evaluation from what the service logged: per policy version and day, the click-through rate with a
95% interval, the exposure Gini and catalog coverage of the served lists; for interleaved lists, which
model's slots were clicked more, with a sign test; and the online rollback rule.

Input: one row per event, from the feature job's event log (`events_from_log`: deduplicated, on time,
with the `policy` and `team` the service put in the context) or from raw records (`events_table`):
the service's impressions and the outcomes (clicks, purchases) with the impression's `request_id`.
A click counts for the impression with the same request and item. Clicks in one list are correlated,
so intervals are cluster-robust by request (a ratio estimator's variance over requests), never binomial
over impressions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import FlywheelError

if TYPE_CHECKING:
    from flywheel.settings import Settings

log = logging.getLogger(__name__)

Z95 = 1.959963984540054


def events_table(records: Iterable[bytes]) -> pa.Table:
    """Contract-v1 JSON records -> the columns the report reads, one row per event_id (replays collapse)."""
    rows: dict[str, dict[str, Any]] = {}
    for raw in records:
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(e, dict) or "event_id" not in e or "request_id" not in e:
            continue
        ctx = e.get("context") or {}
        rows.setdefault(e["event_id"], {
            "request_id": e["request_id"], "user_id": e.get("user_id"), "item_id": e.get("item_id"),
            "event_type": e.get("event_type"), "position": e.get("position"), "event_time": e.get("event_time"),
            "source": e.get("source"), "policy": ctx.get("policy"), "policy_kind": ctx.get("policy_kind"),
            "team": ctx.get("team"),
        })  # fmt: skip
    schema = pa.schema([("request_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
                        ("event_type", pa.string()), ("position", pa.int64()), ("event_time", pa.int64()),
                        ("source", pa.string()), ("policy", pa.string()), ("policy_kind", pa.string()),
                        ("team", pa.string())])  # fmt: skip
    return pa.Table.from_pylist(list(rows.values()), schema=schema)


def events_from_log(files: list[str]) -> pa.Table:
    """The event log's rows in `events_table`'s columns (`policy_kind` follows from the version: "a+b" is an
    interleaved list)."""
    from training.labels import connect

    if not files:
        raise FlywheelError("no event log yet: run the feature job first (`flywheel features run`), or pass --topic")
    return (
        connect()
        .execute(
            "SELECT request_id, user_id, item_id, event_type, position, "
            "CAST(epoch_ms(CAST(event_timestamp AS TIMESTAMP)) AS BIGINT) AS event_time, source, policy, "
            "CASE WHEN policy LIKE '%+%' THEN 'interleaved' WHEN policy IS NOT NULL THEN 'served' END AS policy_kind, "
            "team FROM read_parquet($f, union_by_name = true)",
            {"f": files},
        )
        .to_arrow_table()
    )


def served(events: pa.Table) -> pa.Table:
    """The service's impressions, each with `clicked` (a click on the same request and item)."""
    imp = events.filter(pc.and_(pc.equal(events["event_type"], "impression"), pc.is_valid(events["policy"])))
    clicks = events.filter(pc.equal(events["event_type"], "click"))
    keys = set(zip(clicks["request_id"].to_pylist(), clicks["item_id"].to_pylist(), strict=True))
    clicked = [(r, i) in keys for r, i in zip(imp["request_id"].to_pylist(), imp["item_id"].to_pylist(), strict=True)]
    return imp.append_column("clicked", pa.array(clicked))


@dataclass(frozen=True)
class Rate:
    """Clicks per impression over requests, with its cluster-robust standard error."""

    requests: int
    impressions: int
    clicks: int
    value: float
    se: float

    @property
    def low(self) -> float:
        return self.value - Z95 * self.se

    @property
    def high(self) -> float:
        return self.value + Z95 * self.se


def ctr(request_ids: np.ndarray, clicked: np.ndarray) -> Rate:
    """CTR = clicks / impressions; its variance is that of a ratio of per-request totals."""
    if len(request_ids) == 0:
        return Rate(0, 0, 0, float("nan"), float("nan"))
    _, group = np.unique(request_ids, return_inverse=True)
    n_r = np.bincount(group).astype(float)
    c_r = np.bincount(group, weights=clicked.astype(float))
    r, n, c = len(n_r), n_r.sum(), c_r.sum()
    value = c / n
    se = math.sqrt(r / (r - 1) * ((c_r - value * n_r) ** 2).sum()) / n if r > 1 else float("nan")
    return Rate(r, int(n), int(c), value, se)


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a string column (grouping by them is much faster than by Python strings)."""
    return pc.dictionary_encode(column.combine_chunks()).indices.to_numpy(zero_copy_only=False)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of exposure over items (0: every item shown equally; near 1: a few items take all)."""
    x = np.sort(np.asarray(counts, dtype=float))
    if len(x) == 0 or x.sum() == 0:
        return float("nan")
    i = np.arange(1, len(x) + 1)
    return float((2 * i - len(x) - 1).dot(x) / (len(x) * x.sum()))


def daily(imps: pa.Table, catalog_size: int, start_ms: int | None = None) -> list[dict[str, Any]]:
    """Per (day, policy version): CTR with its 95% interval, exposure Gini over the catalog, coverage."""
    t = imps["event_time"].to_numpy()
    start = start_ms if start_ms is not None else (int(t.min()) // 86_400_000 * 86_400_000 if len(t) else 0)
    day = (t - start) // 86_400_000
    policy = np.asarray(imps["policy"].to_pylist(), dtype=object)
    rid = _codes(imps["request_id"])
    item = _codes(imps["item_id"])
    clicked = imps["clicked"].to_numpy(zero_copy_only=False)
    out = []
    for d in np.unique(day):
        for p in sorted(set(policy[day == d])):
            m = (day == d) & (policy == p)
            rate = ctr(rid[m], clicked[m])
            _, counts = np.unique(item[m], return_counts=True)
            exposure = np.concatenate([counts, np.zeros(max(catalog_size - len(counts), 0))])
            out.append({"day": int(d), "policy": p, "requests": rate.requests, "impressions": rate.impressions,
                        "clicks": rate.clicks, "ctr": rate.value, "ctr_low": rate.low, "ctr_high": rate.high,
                        "exposure_gini": gini(exposure), "coverage": len(counts) / max(catalog_size, 1)})  # fmt: skip
    return out


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses at p = 1/2 (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, j) for j in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def interleaving(imps: pa.Table) -> dict[str, Any]:
    """Team-draft credit: a list is won by the model whose slots got more clicks (lists with the random
    team, or without clicks, are left out). The preference is the share of decided lists the first model
    (the champion: the first version in the list's `policy`) won."""
    inter = imps.filter(pc.equal(imps["policy_kind"], "interleaved"))
    credit: dict[str, dict[str, int]] = {}
    pair: dict[str, str] = {}
    columns = (inter[c].to_pylist() for c in ("request_id", "policy", "team", "clicked"))
    for rid, policy, team, clicked in zip(*columns, strict=True):
        pair[rid] = policy
        credit.setdefault(rid, {})
        credit[rid][team] = credit[rid].get(team, 0) + int(clicked)
    out: dict[str, Any] = {}
    for rid, teams in credit.items():
        if "random" in teams:
            continue
        first, second = pair[rid].split("+")
        row = out.setdefault(pair[rid], {"champion": first, "previous": second, "wins": 0, "losses": 0, "ties": 0})
        a, b = teams.get(first, 0), teams.get(second, 0)
        row["wins" if a > b else "losses" if b > a else "ties"] += 1
    for row in out.values():
        decided = row["wins"] + row["losses"]
        row["preference"] = row["wins"] / decided if decided else float("nan")
        row["p_value"] = sign_test(row["wins"], row["losses"])
    return out


@dataclass(frozen=True)
class OnlineVerdict:
    roll_back: bool
    reason: str


def online_rule(imps: pa.Table, champion: str, previous: str, min_requests: int, alpha: float = 0.05) -> OnlineVerdict:
    """Roll back when the champion is significantly worse online than the previous model over the window
    given: by CTR when both served their own lists (a split), or by the interleaving sign test."""
    rid = _codes(imps["request_id"])
    clicked = imps["clicked"].to_numpy(zero_copy_only=False)
    c, p = (ctr(rid[m], clicked[m]) for m in (pc.equal(imps["policy"], v).to_numpy(zero_copy_only=False)
                                             for v in (champion, previous)))  # fmt: skip
    if c.requests >= min_requests and p.requests >= min_requests:
        diff, se = c.value - p.value, math.hypot(c.se, p.se)
        z = diff / se if se > 0 else 0.0
        detail = (
            f"online CTR {champion} {c.value:.4f} [{c.low:.4f}, {c.high:.4f}] ({c.requests} lists) vs "
            f"{previous} {p.value:.4f} [{p.low:.4f}, {p.high:.4f}] ({p.requests} lists), z = {z:.2f}"
        )
        return OnlineVerdict(z < -_z(alpha), detail)
    duel = interleaving(imps).get(f"{champion}+{previous}")
    if duel and duel["wins"] + duel["losses"] >= min_requests // 10:
        detail = (f"interleaved: {champion} won {duel['wins']}, {previous} won {duel['losses']} "
                  f"(ties {duel['ties']}), sign test p = {duel['p_value']:.4f}")  # fmt: skip
        return OnlineVerdict(duel["losses"] > duel["wins"] and duel["p_value"] < alpha, detail)
    return OnlineVerdict(
        False,
        f"not enough online traffic to compare {champion} with {previous} (need {min_requests} lists each, "
        f"or {min_requests // 10} decided interleaved lists)",
    )


def check(cfg: Settings, end: datetime, events: pa.Table | None = None) -> dict[str, Any]:
    """The online rollback rule on the served lists of the window before `end` (event time), from the event
    log unless `events` are given; rolls back through the registry when it fires."""
    from training.labels import event_log_files
    from training.registry import Registry

    reg = Registry(cfg.training.registry_dir)
    aliases = reg.aliases()
    champion, previous = aliases["champion"], aliases["previous"]
    if not champion or not previous:
        return {"outcome": "no_change", "reasons": ["no previous model to compare with"]}
    r = cfg.training.online_rollback
    files = event_log_files(cfg.offline_dir)
    if events is None and not files:
        return {"outcome": "no_change", "reasons": ["no event log yet"]}
    imps = served(events if events is not None else events_from_log(files))
    end_ms = int(end.timestamp() * 1000)
    t = imps["event_time"].to_numpy(zero_copy_only=False)
    imps = imps.filter(pa.array((t > end_ms - r.window_days * 86_400_000) & (t <= end_ms)))
    verdict = online_rule(imps, champion, previous, r.min_lists, r.alpha)
    if verdict.roll_back:
        restored = reg.rollback([f"online: {verdict.reason}"])
        return {"outcome": "rolled_back", "version": restored, "reasons": [verdict.reason]}
    return {"outcome": "kept", "reasons": [verdict.reason]}


def _z(alpha: float) -> float:
    """The two-sided normal quantile of alpha (1.96 at 0.05)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / 2)


def report(
    events: pa.Table,
    catalog_size: int,
    truth: list[dict[str, Any]] | None = None,
    offline: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything `flywheel online report` shows: daily rows, interleaving duels, each version's online CTR
    beside the off-policy estimate its gate recorded before it served (`offline`: version -> estimate),
    and the closed-loop world's truth (expected CTR of the lists served and of random lists) when given."""
    imps = served(events)
    start = int(imps["event_time"].to_numpy().min()) // 86_400_000 * 86_400_000 if imps.num_rows else 0
    rid, clicked = _codes(imps["request_id"]), imps["clicked"].to_numpy(zero_copy_only=False)
    versions = {}
    for v in sorted(set(imps["policy"].to_pylist())):
        m = pc.equal(imps["policy"], v).to_numpy(zero_copy_only=False)
        rate = ctr(rid[m], clicked[m])
        versions[v] = {"online_ctr": rate.value, "online_low": rate.low, "online_high": rate.high,
                       "lists": rate.requests, "off_policy": (offline or {}).get(v)}  # fmt: skip
    out: dict[str, Any] = {
        "impressions": imps.num_rows,
        "daily": daily(imps, catalog_size, start),
        "interleaving": interleaving(imps),
        "versions": versions,
    }
    if truth:
        served_clicks = sum(r["expected_clicks"] for r in truth)
        random_clicks = sum(r["random_expected_clicks"] for r in truth)
        out["truth"] = truth
        out["ctr_lift_vs_random"] = served_clicks / random_clicks if random_clicks else float("nan")
    return out


def off_policy_estimates(registry_dir: Path, estimator: str) -> dict[str, dict[str, Any]]:
    """Each registered version's off-policy estimate of its own serving policy, recorded by its gate."""
    from training.registry import Registry

    out = {}
    for mv in Registry(registry_dir).versions():
        est = mv.metrics.get("ope", {}).get("policies", {}).get("model", {}).get(estimator)
        if est:
            out[mv.version] = {"estimator": estimator, **est}
    return out


def chart(rep: dict[str, Any], path: Path) -> None:
    """Left: daily CTR per policy version (95% intervals) and, with the world's truth, the random-list
    baseline. Right: each version's online CTR beside its off-policy estimate from before it served."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, side) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for policy in sorted({r["policy"] for r in rep["daily"]}):
        rows = [r for r in rep["daily"] if r["policy"] == policy]
        days = [r["day"] for r in rows]
        err = [[r["ctr"] - r["ctr_low"] for r in rows], [r["ctr_high"] - r["ctr"] for r in rows]]
        ax.errorbar(days, [r["ctr"] for r in rows], yerr=err, marker="o", capsize=3, label=policy)
    if rep.get("truth"):
        by_day: dict[int, list[float]] = {}
        for r in rep["truth"]:
            acc = by_day.setdefault(r["day"], [0.0, 0.0])
            acc[0] += r["random_expected_clicks"]
            acc[1] += r["slots"]
        days = sorted(by_day)
        ax.plot(days, [by_day[d][0] / by_day[d][1] for d in days], "k--", label="random lists (world's truth)")
    ax.set_xlabel("day")
    ax.set_ylabel("clicks per impression")
    ax.set_title("the loop: online CTR per policy version")
    ax.legend(fontsize=8)
    versions = rep.get("versions", {})
    for i, (_, row) in enumerate(sorted(versions.items())):
        online_err = [[row["online_ctr"] - row["online_low"]], [row["online_high"] - row["online_ctr"]]]
        side.errorbar([i - 0.1], [row["online_ctr"]], yerr=online_err, fmt="o", color="C0", capsize=3,
                      label="online" if i == 0 else None)  # fmt: skip
        if off := row.get("off_policy"):
            off_err = [[off["value"] - off["ci_low"]], [off["ci_high"] - off["value"]]]
            side.errorbar([i + 0.1], [off["value"]], yerr=off_err, fmt="s", color="C1", capsize=3,
                          label=f"off-policy ({off['estimator']}, before serving)" if i == 0 else None)  # fmt: skip
    side.set_xticks(range(len(versions)), sorted(versions))
    side.set_title("off-policy estimate vs online")
    if versions:
        side.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
