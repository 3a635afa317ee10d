"""`flywheel data`: datasets fetched at setup."""

from __future__ import annotations

from flywheel.cli._common import console, group
from flywheel.settings import load_settings

app = group("Datasets fetched at setup.")


@app.command("fetch")
def data_fetch() -> None:
    """Download the Open Bandit Dataset sample (from the obp sdist on PyPI) once."""
    from flywheel.events import obd

    cfg = load_settings()
    console.print(f"Open Bandit sample ready in {obd.fetch(cfg.obd, cfg.build_dir)}")
