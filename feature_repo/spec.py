"""Every feature Flywheel computes: name, type, window and aggregation, defined once.

The Feast objects in this folder are generated from these groups, the Flink feature job turns each
group into one windowed SQL aggregation, and training and validation read names and types from here.

A group is one feature view: its entity keys, a window (HOP when slide < size, TUMBLE otherwise), and
typed aggregations (Sum, Count, Ratio, Last) over the cleaned event stream, whose columns are
user_id, item_id, item_category, event_type, list_position (`position` is reserved in Flink SQL), propensity,
event_time, and the 0/1 helpers
is_impression, is_click, is_purchase and exam (the examination probability of the position,
1 / position ** examination_eta, a position-based click model).

A window's value is stamped with the window end, so a value and its timestamp are deterministic:
replays after recovery rewrite identical rows (a no-op in Redis, which skips writes that are not newer).

What is emitted: a sliding window changes only when a slice of events enters or leaves it, so the job
writes a key's value only when it changed, plus one explicit "empty" row (counts 0, ratios null) at the
first window end after the key's last event has left the window. A stored value therefore stays
true until the next stored row, and a feature view's TTL only guards against a stalled pipeline.
Without this, a 7-day window sliding hourly rewrites every active key 168 times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

EXAMINATION_ETA = 0.8  # examination(position) = position ** -eta; the simulator's ground truth uses 0.8


DType = Literal["int64", "float64", "timestamp"]


def _sum(column: str) -> str:
    return f"SUM({column})"


@dataclass(frozen=True)
class Sum:
    """The sum of an event column over the window (a 0/1 helper column makes it a count)."""

    column: str

    def expr(self, total: Callable[[str], str] = _sum) -> str:
        """The aggregate as SQL, with `total(column)` for the window's sum of a column: SUM(column) over the
        events of a tumbling window, or a sliding window's running sum of that column."""
        return total(self.column)

    @property
    def summed(self) -> tuple[str, ...]:
        return (self.column,)


def Count(event_type: str) -> Sum:  # noqa: N802 - reads as an aggregation, like Sum and Ratio
    """How many events of a type (impression, click, purchase): the sum of its 0/1 helper column."""
    return Sum(f"is_{event_type}")


@dataclass(frozen=True)
class Ratio:
    """num / den as a DOUBLE, null when the denominator is 0 (a CTR with no impressions is unknown, not 0)."""

    num: Sum
    den: Sum

    def expr(self, total: Callable[[str], str] = _sum) -> str:
        return f"CAST({self.num.expr(total)} AS DOUBLE) / NULLIF({self.den.expr(total)}, 0)"

    @property
    def summed(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.num.summed + self.den.summed))


@dataclass(frozen=True)
class Last:
    """The latest value of a column in the window (e.g. the last click's time). Not a sum, so only
    tumbling windows can compute it."""

    column: str

    def expr(self, total: Callable[[str], str] = _sum) -> str:
        if total is not _sum:
            raise ValueError(f"Last({self.column!r}) is not a sum: use a tumbling window for it")
        return f"MAX({self.column})"

    @property
    def summed(self) -> tuple[str, ...]:
        raise ValueError(f"Last({self.column!r}) is not a sum: use a tumbling window for it")


Aggregation = Sum | Ratio | Last


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: DType
    agg: Aggregation  # over the cleaned events of one window and key

    @property
    def sql(self) -> str:
        """The aggregate expression over the events of one window and key, in Flink SQL."""
        return self.agg.expr()


@dataclass(frozen=True)
class Window:
    size: timedelta
    slide: timedelta

    @property
    def hopping(self) -> bool:
        return self.slide < self.size


@dataclass(frozen=True)
class FeatureGroup:
    name: str  # the feature view
    entities: tuple[str, ...]  # join keys
    window: Window
    features: tuple[Feature, ...]
    description: str
    where: str | None = None  # optional filter on the cleaned events

    @property
    def emits_changes(self) -> bool:
        """Sliding count windows emit changes and an explicit empty row (see the module docstring)."""
        return self.window.hopping

    @property
    def ttl(self) -> timedelta:
        """A stored value is true until the next row for its key; at most one window (plus slack) passes
        between rows of an active key, so anything older means the pipeline stalled: treat as missing.

        Beyond a day it is rounded up to whole days: Feast's DuckDB offline store (ibis) cannot turn a
        timedelta of days plus seconds into an interval ("mixed units") and fails the whole retrieval."""
        ttl = self.window.size + 2 * self.window.slide
        return timedelta(days=ttl.days + (1 if ttl.seconds or ttl.microseconds else 0)) if ttl.days else ttl

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def summed_columns(self) -> list[str]:
        """The event columns a sliding group's features sum: its values are rebuilt from per-slide partial
        sums, so every aggregation must be made of sums (ratios of sums are fine)."""
        cols: list[str] = []
        for f in self.features:
            try:
                cols += [c for c in f.agg.summed if c not in cols]
            except ValueError as e:
                raise ValueError(f"{self.name}.{f.name}: {e}") from None
        return cols


def _counts(prefix: str, suffix: str, debiased: bool) -> tuple[Feature, ...]:
    """Names carry the entity (user_clicks_1h, item_clicks_1h): unique across views, so a feature service
    needs no prefixes."""
    feats = [
        Feature(f"{prefix}_impressions_{suffix}", "int64", Count("impression")),
        Feature(f"{prefix}_clicks_{suffix}", "int64", Count("click")),
        Feature(f"{prefix}_purchases_{suffix}", "int64", Count("purchase")),
        Feature(f"{prefix}_ctr_{suffix}", "float64", Ratio(Count("click"), Count("impression"))),
    ]
    if debiased:
        # Clicks over the expected number of examined impressions: a user shown items low in the list
        # is not penalised for not clicking what they probably never saw.
        feats.append(Feature(f"{prefix}_debiased_ctr_{suffix}", "float64", Ratio(Count("click"), Sum("exam"))))
    return tuple(feats)


WINDOWS: dict[str, Window] = {
    "1h": Window(timedelta(hours=1), timedelta(minutes=5)),
    "24h": Window(timedelta(hours=24), timedelta(hours=1)),
    "7d": Window(timedelta(days=7), timedelta(hours=1)),
}


def _stats(entity: str, debiased: bool, what: str) -> tuple[FeatureGroup, ...]:
    """An entity's counts and CTRs over each of WINDOWS, one view per window."""
    return tuple(
        FeatureGroup(
            f"{entity}_stats_{w}", (f"{entity}_id",), WINDOWS[w], _counts(entity, w, debiased), f"{what} over {w}."
        )
        for w in WINDOWS
    )


GROUPS: tuple[FeatureGroup, ...] = (
    *_stats("user", True, "A user's impressions, clicks, purchases and CTR (raw and position-debiased)"),
    *_stats("item", False, "An item's impressions, clicks, purchases and CTR"),
    FeatureGroup(
        "user_category_stats_7d",
        ("user_id", "item_category"),
        WINDOWS["7d"],
        (
            Feature("cat_impressions_7d", "int64", Count("impression")),
            Feature("cat_clicks_7d", "int64", Count("click")),
            Feature("cat_ctr_7d", "float64", Ratio(Count("click"), Count("impression"))),
        ),
        "A user's affinity to an item category: impressions, clicks and CTR in that category over 7 days.",
        where="item_category IS NOT NULL",
    ),
    FeatureGroup(
        "user_last_click",
        ("user_id",),
        Window(timedelta(minutes=5), timedelta(minutes=5)),
        (Feature("last_click_time", "timestamp", Last("event_time")),),
        "When the user last clicked (per 5-minute tumble; seconds-since is computed at request time).",
        where="is_click = 1",
    ),
)

# last_click_time must survive 7 days of inactivity, not two slides.
TTL_OVERRIDES: dict[str, timedelta] = {"user_last_click": timedelta(days=7)}


def group(name: str) -> FeatureGroup:
    for g in GROUPS:
        if g.name == name:
            return g
    raise KeyError(f"no feature group {name!r}; known: {[g.name for g in GROUPS]}")


def ttl(g: FeatureGroup) -> timedelta:
    return TTL_OVERRIDES.get(g.name, g.ttl)
