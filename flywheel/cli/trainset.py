"""`flywheel trainset`: point-in-time-correct training sets."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, fail, group, utc_option
from flywheel.settings import load_settings

app = group("Point-in-time-correct training sets (labels + features).")


@app.command("build")
def trainset_build(
    start: Annotated[datetime | None, utc_option("first impression time (default: log start)")] = None,
    end: Annotated[datetime | None, utc_option("end, exclusive (default: end of the event log)")] = None,
    feature_service: Annotated[str | None, typer.Option(help="default: trainset.feature_service")] = None,
    name: Annotated[str | None, typer.Option(help="output folder under var/trainsets")] = None,
) -> None:
    """Labels from the event log joined with the service's features as of strictly before each label."""
    from flywheel.clients import feast_store
    from training import labels, trainset

    if start and end and end <= start:
        raise typer.BadParameter(
            f"{end:%Y-%m-%d %H:%M} is not after --start {start:%Y-%m-%d %H:%M}", param_hint="--end"
        )
    cfg = load_settings()
    files = labels.event_log_files(cfg.offline_dir)
    if not files:
        fail(f"no event log under {cfg.offline_dir / 'events'}: run the feature job first (`flywheel features run`)")
    first, last = labels.log_span(files)
    begin, stop = start or first, end or last + timedelta(milliseconds=1)
    manifest, out = trainset.build(cfg, feast_store.store(cfg), begin, stop, feature_service, name)
    t = Table("rows", *manifest.label_counts, "labels final", "seconds", "sha256")
    t.add_row(
        str(manifest.rows),
        *(f"{n} ({manifest.label_rates[c]:.2%})" for c, n in manifest.label_counts.items()),
        str(manifest.labels_final),
        f"{manifest.build_seconds:.2f}",
        manifest.content_sha256[:12],
    )
    console.print(t)
    worst = sorted(manifest.missing_rates.items(), key=lambda kv: -kv[1])[:3]
    console.print(f"most missing: {', '.join(f'{k} {v:.1%}' for k, v in worst)}")
    console.print(f"written to {out} (manifest.json)")
