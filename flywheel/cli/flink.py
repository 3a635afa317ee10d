"""`flywheel flink`: the feature job on a Flink cluster through `flink run` and the REST API."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, group
from flywheel.settings import load_settings

app = group("The feature job on a Flink cluster (flink run, savepoints).")
JobArgs = Annotated[list[str] | None, typer.Argument(help="passed to flink_jobs/features.py, e.g. -- --bounded")]


@app.command("submit")
def flink_submit(job_args: JobArgs = None) -> None:
    """Submit the feature job to the cluster (detached)."""
    from flywheel.clients import feast_store
    from flywheel.clients.flink import submit

    cfg = load_settings()
    feast_store.ensure_applied(cfg)
    console.print(f"submitted: job {submit(cfg, job_args or [])}  (UI: {cfg.flink.rest_url})")


@app.command("list")
def flink_list() -> None:
    """Jobs on the cluster."""
    from flywheel.clients.flink import list_jobs

    t = Table("job id", "name", "state", "started")
    for j in list_jobs(load_settings()):
        t.add_row(j["jid"], j["name"], j["state"], time.strftime("%F %T", time.gmtime(j["start-time"] / 1000)))
    console.print(t)


@app.command("stop")
def flink_stop(job_id: str, savepoint: Annotated[bool, typer.Option(help="take a savepoint first")] = True) -> None:
    """Stop a job, with a savepoint to resume from."""
    from flywheel.clients.flink import cancel, stop_with_savepoint

    cfg = load_settings()
    if savepoint:
        console.print(f"stopped; savepoint: {stop_with_savepoint(cfg, job_id)}")
    else:
        cancel(cfg, job_id)
        console.print("cancelled")


@app.command("resume")
def flink_resume(
    from_: Annotated[str, typer.Option("--from", help="savepoint or retained checkpoint path")],
    job_args: JobArgs = None,
) -> None:
    """Start the feature job again from a savepoint (same topology, state and Kafka offsets)."""
    from flywheel.clients.flink import submit

    console.print(f"resumed: job {submit(load_settings(), job_args or [], savepoint=from_)}")
