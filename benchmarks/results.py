"""Benchmark results: one flat JSON object, var/bench/results.json, that each benchmark merges its keys into.

Performance lives here, not in timed tests: a benchmark reports what it measured and never fails
because a machine is slow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flywheel.settings import Settings

T = TypeVar("T")


def path(cfg: Settings) -> Path:
    return cfg.var_dir / "bench" / "results.json"


def merge(cfg: Settings, figures: dict) -> dict:
    """Merge this benchmark's keys into the shared results file (other benchmarks' keys stay)."""
    out = path(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(out.read_text()) if out.exists() else {}
    current.update(figures)
    out.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return current


def timed(label: str, fn: Callable[[], T], log: Callable[[str], None]) -> tuple[float, T]:
    log(f"  {label} ...")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    log(f"  {label}: {seconds:.2f}s")
    return seconds, out
