"""`flywheel bench trainset`: one training set built by our point-in-time join and by Feast's two offline
stores, timed (figures into var/bench/results.json, chart var/bench/trainset.png)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.results import timed
from flywheel.settings import Settings

SHAPE = {"labels": 500_000, "feature_rows": 2_000_000, "days": 7, "users": 10_000, "items": 2_000, "categories": 24}


def run(cfg: Settings, log=print, seed: int = 42) -> dict:
    """The same training set (ranker_v1, 500k labels, 2M feature rows over its 8 views, seeded) built by
    our DuckDB builder, Feast's DuckDB offline store and Feast's default file offline store.

    One plain Parquet file per view with zoned timestamps, the shape Feast's file store can read (it
    fails on the feature job's dt=/hr= layout and on zone-less INT96 timestamps)."""
    from flywheel.clients.feast_store import isolated_store
    from training import synthetic
    from training import trainset as ts

    work = cfg.var_dir / "bench" / "trainset"
    shutil.rmtree(work, ignore_errors=True)
    offline = work / "offline"
    duck = isolated_store(work / "feast-duckdb", offline, "duckdb", single_file=True)
    file = isolated_store(work / "feast-file", offline, "file", single_file=True)
    plan = ts.plan(duck, "ranker_v1")
    card = {"user_id": SHAPE["users"], "item_id": SHAPE["items"], "item_category": SHAPE["categories"]}
    start = datetime(2026, 1, 5, tzinfo=UTC)
    log(f"generating {SHAPE['feature_rows']:,} feature rows ({len(plan.views)} views), {SHAPE['labels']:,} labels")
    synthetic.write_features(plan, offline, SHAPE["feature_rows"], start, SHAPE["days"], card, seed, single_file=True)
    labels = synthetic.labels(SHAPE["labels"], start, SHAPE["days"], card, seed + 1)
    entity = labels.to_pandas()
    entity["request_time"] = entity["event_timestamp"]
    n = labels.num_rows

    ours_s, ours = timed("flywheel builder", lambda: ts.point_in_time_join(plan, labels), log)
    service = duck.get_feature_service("ranker_v1")
    duck_s, duck_out = timed(
        "feast duckdb store", lambda: duck.get_historical_features(entity, features=service).to_arrow(), log
    )
    file_s, file_out = timed(
        "feast file store", lambda: file.get_historical_features(entity, features=service).to_arrow(), log
    )
    figures = {
        "trainset_rows_per_s": round(n / ours_s),
        "trainset_rows_kept_ratio": ours.num_rows / n,
        "feast_duckdb_store_rows_per_s": round(n / duck_s),
        "feast_duckdb_store_rows_kept_ratio": duck_out.num_rows / n,
        "feast_file_store_rows_per_s": round(n / file_s),
        "feast_file_store_rows_kept_ratio": file_out.num_rows / n,
        "trainset_speedup_vs_feast_duckdb": round(duck_s / ours_s, 1),
        "trainset_speedup_vs_feast_file": round(file_s / ours_s, 1),
        "trainset_bench_shape": ", ".join(f"{k}={v}" for k, v in SHAPE.items()),
    }
    _bar_chart(
        cfg.var_dir / "bench" / "trainset.png",
        {"flywheel (DuckDB ASOF)": ours_s, "Feast DuckDB store": duck_s, "Feast file store": file_s},
        {
            "flywheel (DuckDB ASOF)": ours.num_rows / n,
            "Feast DuckDB store": duck_out.num_rows / n,
            "Feast file store": file_out.num_rows / n,
        },  # fmt: skip
    )
    shutil.rmtree(work, ignore_errors=True)
    return figures


def _bar_chart(path: Path, seconds: dict[str, float], kept: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(seconds)
    bars = ax.barh(names, [seconds[k] for k in names], color=["#2a9d8f", "#e9c46a", "#e76f51"])
    for bar, name in zip(bars, names, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {seconds[name]:.1f}s, kept {kept[name]:.1%}",
                va="center")  # fmt: skip
    ax.set_xlabel("seconds for 500k labels x 2M feature rows (ranker_v1)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(seconds.values()) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
