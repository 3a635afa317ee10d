"""`flywheel train`: the retraining stages one by one (the DAGs run the same functions)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flywheel.cli._common import console, fail, group
from flywheel.settings import load_settings

app = group("Retraining stages: validate, fit, decide (gate + promote), rollback check.")


def _trainset(*names: str, help: str) -> Any:
    return typer.Option(*names, exists=True, file_okay=False, help=help)


TrainsetDir = Annotated[Path, _trainset("--trainset", help="a folder written by `flywheel trainset build`")]


class Mode(StrEnum):
    full = "full"
    incremental = "incremental"


@app.command("validate")
def train_validate(
    trainset_dir: TrainsetDir,
    reference: Annotated[Path | None, _trainset(help="reference training set for drift")] = None,
) -> None:
    """Great Expectations quality (and drift) checks; exit 1 on a critical failure."""
    from training import pipeline

    result = pipeline.validate_stage(load_settings(), trainset_dir, reference)
    if not result["passed"]:
        fail("critical data checks failed: " + "; ".join(result["reasons"]))


@app.command("fit")
def train_fit(
    trainset_dir: TrainsetDir,
    mode: Annotated[Mode, typer.Option()] = Mode.full,
    run_key: Annotated[str | None, typer.Option(help="idempotency key, e.g. weekly:2026-01-12")] = None,
) -> None:
    """Train, evaluate against the champion on the same holdout, register the candidate."""
    from training import pipeline

    console.print(f"candidate: {pipeline.train_stage(load_settings(), trainset_dir, str(mode), run_key)}")


@app.command("decide")
def train_decide(version: str) -> None:
    """Gate a registered candidate and promote it, or record why the champion stays."""
    from training import pipeline

    d = pipeline.decide_stage(load_settings(), version)
    console.print(f"{d.version}: {d.outcome}")
    for r in d.reasons:
        console.print(f"  - {r}")


@app.command("rollback-check")
def train_rollback_check(
    fresh: Annotated[Path, _trainset("--fresh", help="training set of events after the promotion")],
) -> None:
    """Compare champion and previous on fresh labeled data; roll back if the champion is worse."""
    from training import pipeline

    d = pipeline.rollback_stage(load_settings(), fresh)
    console.print(f"{d.outcome}: {'; '.join(d.reasons)}")


@app.command("report")
def train_report(version: Annotated[str | None, typer.Argument(help="default: the champion")] = None) -> None:
    """Write a version's report (metrics, off-policy value vs baselines, curves) as Markdown + PNG."""
    from training import pipeline, report
    from validation.suites import data_docs_path

    cfg = load_settings()
    reg = pipeline.registry(cfg)
    version = version or reg.aliases()["champion"]
    if not version:
        fail("no champion yet; name a version (`flywheel registry list`)")
    path = report.write(reg, version, str(data_docs_path(cfg)))
    console.print(path.read_text())
    console.print(f"report: {path}")
