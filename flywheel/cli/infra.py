"""`flywheel infra`: the local stack."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._common import ServicesOpt, console, group, service_names
from flywheel.stack.services import Status

app = group("The local stack: Kafka (KRaft), Redis, Flink cluster, Airflow.")


@app.command("up")
def infra_up(services: ServicesOpt = None) -> None:
    """Start the stack (idempotent) and wait until every service is healthy."""
    from flywheel.stack import control

    cfg = control.up(service_names(services), report=lambda n, s: console.print(f"  {n:8s} {s}"))
    print_status(control.status(service_names(services), cfg))
    if not services or "airflow" in services:
        console.print(
            f"Airflow login: user [bold]{cfg.airflow.username}[/], password in $FLYWHEEL_AIRFLOW__PASSWORD "
            f"or {cfg.secrets_file} (FLYWHEEL_AIRFLOW__PASSWORD=...)"
        )


@app.command("down")
def infra_down(
    services: ServicesOpt = None,
    purge: Annotated[bool, typer.Option(help="Also delete var/ (topics, state, logs).")] = False,
) -> None:
    """Stop exactly the processes `infra up` started; data stays on disk unless --purge."""
    from flywheel.stack import control

    stopped = control.down(service_names(services), purge=purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}" + ("; var/ purged" if purge else ""))


@app.command("status")
def infra_status(services: ServicesOpt = None) -> None:
    """Each service, its URL and health. Exit 1 if any is unhealthy."""
    from flywheel.stack import control

    rows = control.status(service_names(services))
    print_status(rows)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def print_status(rows: list[Status]) -> None:
    t = Table("service", "url", "health", "where", "pid", "detail")
    for r in rows:
        health = "[green]healthy[/]" if r.healthy else "[red]down[/]"
        t.add_row(r.name, r.url, health, "local" if r.managed else "remote", str(r.pid or "-"), r.detail)
    console.print(t)
