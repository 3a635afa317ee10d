"""`flywheel features`: the Feast repo and the feature job run embedded."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, fail, group
from flywheel.settings import load_settings

app = group("The PyFlink feature job and the Feast feature store.")


@app.command("apply")
def features_apply() -> None:
    """`feast apply` on feature_repo/ with the environment it needs."""
    from flywheel.clients import feast_store

    console.print(feast_store.apply(load_settings()))


@app.command("run")
def features_run(
    bounded: Annotated[bool, typer.Option(help="stop at the topic's current end (replays, backfills)")] = False,
    topic: Annotated[str | None, typer.Option(help="events topic (default: flywheel.yaml)")] = None,
    parallelism: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Run the feature job embedded (a local mini-cluster in this process)."""
    from flink_jobs import features
    from flywheel.clients import feast_store

    cfg = load_settings()
    feast_store.ensure_applied(cfg)
    overrides = {k: v for k, v in {"topic": topic, "parallelism": parallelism}.items() if v is not None}
    opt = features.options(cfg, bounded=bounded, **overrides)
    t0 = time.monotonic()
    features.run(cfg, opt)
    console.print(f"feature job finished in {time.monotonic() - t0:.0f}s; Parquet under {opt.offline_dir}")


@app.command("reconcile")
def features_reconcile(topic: Annotated[str | None, typer.Option()] = None) -> None:
    """Check: events in = aggregated + duplicates + dead-lettered + late (+ pending while running)."""
    from flink_jobs import features
    from flink_jobs.reconcile import reconcile

    cfg = load_settings()
    opt = features.options(cfg, **({"topic": topic} if topic else {}))
    r = reconcile(cfg, opt)
    t = Table("events in", "aggregated", "duplicates", "dead-lettered", "late", "pending")
    t.add_row(*(str(v) for v in (r.events_in, r.aggregated, r.duplicates, r.dead_lettered, r.late, r.pending)))
    console.print(t)
    if r.pending < 0:
        fail("more events accounted for than entered the topic: outputs from another run are mixed in")
