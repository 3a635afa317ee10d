"""What every command module shares: the console, the one-line error, and argument types checked at the edge."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from flywheel.errors import FlywheelError

console = Console(width=max(Console().width, 120))


FIRST_PARTY = ("flywheel", "flink_jobs", "feature_repo", "training", "validation", "benchmarks")


def configure_logging(verbose: bool = False) -> None:
    """Library code logs; the CLI shows Flywheel's INFO lines (DEBUG with --verbose) and other libraries'
    warnings, through the same console as its own output."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    # Other libraries' INFO lines stay out even when one of them lowers the root logger's level.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.partition(".")[0] in FIRST_PARTY)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    for name in FIRST_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    # PyFlink's Beam warns on every run that Google Cloud Storage support is not installed: it is not used.
    logging.getLogger("apache_beam.io.filesystems").setLevel(logging.ERROR)


def fail(msg: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(1)


class FlywheelGroup(TyperGroup):
    """The root command: a domain error (FlywheelError) becomes one red line and exit 1, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        try:
            return super().invoke(ctx)
        except FlywheelError as exc:
            fail(str(exc))


def group(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True)


def parse_utc(text: str | None) -> datetime | None:
    """An ISO date or time; naive means UTC. Typer callback: a bad value is a usage error naming the option."""
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date or time (e.g. 2019-11-24 or 2019-11-24T06:00:00Z)"
        ) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def utc_option(help: str) -> Any:
    """A typer.Option for an optional UTC time: `Annotated[datetime | None, utc_option("...")]`."""
    return typer.Option(parser=parse_utc, metavar="ISO-TIME", help=help)


ServicesOpt = Annotated[
    str | None, typer.Option("--services", "-s", help="Comma-separated subset: kafka,redis,flink,airflow.")
]


def service_names(services: str | None) -> list[str] | None:
    return [s.strip() for s in services.split(",") if s.strip()] if services else None
