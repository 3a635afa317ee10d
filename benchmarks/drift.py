"""Power and false-alarm rate of the drift checks (validation/drift.py) on simulated week pairs with a
known answer: training-set-shaped weeks (ranker_v1's 32 features with count, rate and sparse 1 h
distributions, 24 item categories, 10 slots), either from the same distribution (stationary: any alarm is
false) or with one planted change: a 0.25 sigma mean shift of one feature, +10 percentage points on one
item category, +5 points of nulls in one feature. Figures into var/bench/results.json, chart
var/bench/drift.png."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.spec import GROUPS
from flywheel.settings import Settings
from validation import drift

FEATURES = [f.name for g in GROUPS for f in g.features if f.dtype != "timestamp"] + [
    "seconds_since_last_click",
    "popularity_trend",
]
CATEGORIES = 24
CHANGES = {
    "stationary": {},
    "mean_shift_025sd": {"shift_sd": 0.25},
    "category_10pp": {"category_pp": 0.10},
    "null_5pp": {"null_pp": 0.05},
}
SHIFTED, NULLED = "user_ctr_7d", "item_ctr_24h"  # the features the planted changes touch


def week(rows: int, rng: np.random.Generator, shift_sd: float = 0.0, category_pp: float = 0.0,
         null_pp: float = 0.0) -> pd.DataFrame:  # fmt: skip
    """One week of training-set-shaped rows, i.i.d., with at most one planted change."""
    cols: dict[str, object] = {
        "event_timestamp": pd.Timestamp("2026-01-05", tz="UTC")
        + pd.to_timedelta(np.sort(rng.integers(0, 7 * 86_400_000, rows)), unit="ms")
    }
    for name in FEATURES:
        if "impressions" in name or "clicks" in name or "purchases" in name:
            mean = 40.0 if "impressions" in name else 2.0 if "clicks" in name else 0.2
            x = rng.poisson(mean * (0.2 if "1h" in name else 1.0), rows).astype(float)
        elif "ctr" in name:
            x = rng.beta(2, 40, rows)
        elif name == "seconds_since_last_click":
            x = rng.exponential(3600, rows)
        else:
            x = rng.lognormal(0, 0.3, rows)
        if name == SHIFTED:
            x = x + shift_sd * 2 / 42 * np.sqrt(40 / 43)  # the sd of Beta(2, 40)
        null = (0.7 if "1h" in name else 0.05) + (null_pp if name == NULLED else 0.0)
        cols[name] = np.where(rng.random(rows) < null, np.nan, x)
    p = np.full(CATEGORIES, 1 / CATEGORIES)
    p[0] += category_pp
    p[1:] -= category_pp / (CATEGORIES - 1)
    cols["item_category"] = rng.choice([f"c{i}" for i in range(CATEGORIES)], rows, p=p)
    cols["position"] = rng.integers(1, 11, rows)
    return pd.DataFrame(cols)


def alarm_rate(cfg: Settings, change: str, pairs: int, rows: int, seed: int) -> tuple[float, list[str]]:
    """Share of week pairs on which any drift check fires, and the checks that fired."""
    rng = np.random.default_rng(seed)
    fired, what = 0, []
    for i in range(pairs):
        reference, current = week(rows, rng), week(rows, rng, **CHANGES[change])
        bounds, _ = drift.calibrate(reference, FEATURES, ["item_category", "position"], rows, cfg.validation.drift,
                                    seed=seed + i)  # fmt: skip
        hits = drift.fires(current, bounds)
        fired += bool(hits)
        what += [f"{b.kind}:{b.column}" for b in hits]
    return fired / pairs, what


def run(cfg: Settings, log=print, pairs: int = 40, rows: int = 20_000, large_pairs: int = 20,
        large_rows: int = 200_000) -> dict:  # fmt: skip
    figures: dict[str, float] = {}
    for size, n_pairs, n_rows in (("", pairs, rows), ("_200k", large_pairs, large_rows)):
        for i, change in enumerate(CHANGES):
            n_pairs_here = n_pairs * 5 // 2 if change == "stationary" else n_pairs  # a rate near 0 needs more
            rate, what = alarm_rate(cfg, change, n_pairs_here, n_rows, seed=1000 * i + n_rows)
            key = ("drift_false_alarm_rate" if change == "stationary" else f"drift_detection_rate_{change}") + size
            figures[key] = rate
            top = pd.Series(what).value_counts().head(3).to_dict() if what else {}
            log(f"  {key}: {rate:.3f} over {n_pairs_here} pairs of {n_rows:,} rows; checks that fired most: {top}")
    figures["drift_false_alarm_rate_configured"] = cfg.validation.drift.false_alarm_rate
    _chart(figures, cfg.var_dir / "bench" / "drift.png")
    return figures


def _chart(figures: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["false alarm", "mean 0.25σ", "category +10pp", "nulls +5pp"]
    keys = ["drift_false_alarm_rate", *(f"drift_detection_rate_{c}" for c in list(CHANGES)[1:])]
    fig, ax = plt.subplots(figsize=(7, 3))
    for j, (size, label) in enumerate((("", "20k rows"), ("_200k", "200k rows"))):
        ax.bar([i + 0.4 * j for i in range(4)], [figures[k + size] for k in keys], 0.4, label=label)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(0.05, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xticks([i + 0.2 for i in range(4)], labels)
    ax.set_ylabel("share of week pairs flagged")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
