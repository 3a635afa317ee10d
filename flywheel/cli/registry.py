"""`flywheel registry`: model versions, the champion/previous aliases and the audit log."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, group
from flywheel.settings import load_settings

app = group("The model registry: versions, champion/previous aliases, audit log.")
Reason = Annotated[str, typer.Option(help="recorded in the audit log")]


def _registry():
    from training import pipeline

    return pipeline.registry(load_settings())


@app.command("list")
def registry_list() -> None:
    """Every version with its alias, mode, window and holdout metrics."""
    reg = _registry()
    aliases = {v: k for k, v in reg.aliases().items() if v}
    t = Table("version", "alias", "mode", "parent", "window", "AUC", "ECE", "created")
    for mv in reg.versions():
        m, w = mv.metrics, mv.data_window
        t.add_row(mv.version, aliases.get(mv.version, ""), mv.mode, mv.parent_version or "",
                  f"{w.get('start', '')[:10]}..{w.get('end', '')[:10]}",
                  f"{m.get('auc', float('nan')):.4f}", f"{m.get('ece', float('nan')):.4f}",
                  mv.created_at[:19])  # fmt: skip
    console.print(t)


@app.command("show")
def registry_show(version: str) -> None:
    """One version's metadata as JSON (metrics without the curves)."""
    import json
    from dataclasses import asdict

    mv = _registry().get(version)
    data = asdict(mv)
    data["metrics"] = {k: v for k, v in mv.metrics.items() if k != "curves"}
    console.print_json(json.dumps(data, default=str))


@app.command("promote")
def registry_promote(version: str, reason: Reason) -> None:
    """Make a version champion by hand (bypasses the gate; the reason is audited)."""
    reg = _registry()
    console.print("promoted" if reg.promote(version, [f"manual: {reason}"]) else f"{version} is already champion")


@app.command("rollback")
def registry_rollback(reason: Reason) -> None:
    """Make the previous champion the champion again (audited)."""
    console.print(f"champion is now {_registry().rollback([f'manual: {reason}'])}")


@app.command("audit")
def registry_audit() -> None:
    """Every decision (promotion, rejection, rollback) with its reasons."""
    for e in _registry().audit():
        console.print(f"{e['at'][:19]} {e['decision']:<20} {e['version'] or '-':<6} {'; '.join(e['reasons'])}")
