"""The root command: one sub-command group per pipeline stage, and the few top-level commands."""

from __future__ import annotations

import functools
import logging
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli import data, events, features, flink, infra, online, registry, train, trainset
from flywheel.cli._common import FlywheelGroup, configure_logging, console, fail
from flywheel.settings import load_settings

app = typer.Typer(
    cls=FlywheelGroup, help="Flywheel: real-time features and retraining for recommenders.", no_args_is_help=True
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logs of Flywheel's modules")] = False,
) -> None:
    """Flywheel: real-time features and retraining for recommenders."""
    configure_logging(verbose)


app.add_typer(infra.app, name="infra")
app.add_typer(data.app, name="data")
app.add_typer(events.app, name="events")
app.add_typer(features.app, name="features")
app.add_typer(flink.app, name="flink")
app.add_typer(trainset.app, name="trainset")
app.add_typer(train.app, name="train")
app.add_typer(registry.app, name="registry")
app.add_typer(online.app, name="online")


@app.command("score")
def score_cmd(
    user: Annotated[str, typer.Option()],
    items: Annotated[str, typer.Option(help="comma-separated item ids")],
) -> None:
    """Rank items for a user with the champion, from online features (Feast SDK, Redis)."""
    from training.scoring import rank

    candidates = [x.strip() for x in items.split(",") if x.strip()]
    if not candidates:
        raise typer.BadParameter("name at least one item id", param_hint="--items")
    t = Table("rank", "item", "P(click)")
    for i, (item, p) in enumerate(rank(load_settings(), user, candidates), 1):
        t.add_row(str(i), item, f"{p:.4f}")
    console.print(t)


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="default: serving.host")] = None,
    port: Annotated[int | None, typer.Option(help="default: serving.port")] = None,
    workers: Annotated[int | None, typer.Option(help="processes; default: serving.workers")] = None,
) -> None:
    """The ranking service: POST /rank (the champion explores, every list is logged to Kafka), /metrics, /healthz."""
    from flywheel.clients import feast_store
    from flywheel.serving.app import serve
    from flywheel.serving.service import check_online_store

    cfg = load_settings()
    try:
        cfg.serving.require_token()
    except ValueError as exc:
        fail(str(exc))
    check_online_store(cfg, feast_store.store(cfg))
    host, port = host or cfg.serving.host, port or cfg.serving.port
    console.print(f"serving on http://{host}:{port} (POST /rank, GET /metrics with the token; GET /healthz)")
    verbose = logging.getLogger("flywheel").isEnabledFor(logging.DEBUG)  # as the root command set it
    serve(cfg, host, port, workers or cfg.serving.workers, functools.partial(configure_logging, verbose))


class Benchmark(StrEnum):
    trainset = "trainset"
    features = "features"
    drift = "drift"
    serving = "serving"
    loop = "loop"
    soak = "soak"


@app.command("bench")
def bench_cmd(which: Annotated[Benchmark, typer.Argument()] = Benchmark.trainset) -> None:
    """Run a benchmark (benchmarks/) and merge its figures into var/bench/results.json."""
    from benchmarks import drift as bench_drift
    from benchmarks import features as bench_features
    from benchmarks import loop as bench_loop
    from benchmarks import results
    from benchmarks import serving as bench_serving
    from benchmarks import soak as bench_soak
    from benchmarks import trainset as bench_trainset

    cfg = load_settings()
    runners = {Benchmark.trainset: bench_trainset.run, Benchmark.features: bench_features.run,
               Benchmark.drift: bench_drift.run, Benchmark.serving: bench_serving.run,
               Benchmark.loop: bench_loop.run, Benchmark.soak: bench_soak.run}  # fmt: skip
    figures = runners[which](cfg, log=console.print)
    results.merge(cfg, figures)
    t = Table("key", "value")
    for k, v in figures.items():
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"merged into {results.path(cfg)}; chart {cfg.var_dir / 'bench' / f'{which}.png'}")


@app.command("env")
def env_cmd() -> None:
    """Print `export` lines for feature_store.yaml (use: eval "$(.venv/bin/flywheel env)")."""
    from flywheel.clients.feast_store import feast_env

    for k, v in feast_env(load_settings()).items():
        print(f"export {k}='{v}'")


@app.command()
def demo() -> None:
    """The whole loop on real data: stack up, Open Bandit logs through Kafka and the feature job, the weekly
    retraining DAG on Airflow, a ranked list from online features, and where every output is."""
    from flywheel.cli.demo import run

    run(console)


__all__ = ["app", "fail"]
