"""Waiting for something to become true, with a deadline and a message that says what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flywheel.errors import FlywheelError

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (),
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
    error: type[Exception] = FlywheelError,
) -> T:
    """Poll `check` until it returns something truthy, and return that. An exception in `retry_on` means
    "not yet"; any other propagates. Fails early (with the log's tail) when `alive` says the process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if result:
                return result
        except retry_on:
            pass
        if alive is not None and not alive():
            raise error(f"{what}: the process exited during start-up.{_tail(log_file)}")
        if time.monotonic() >= deadline:
            raise error(f"{what}: not done after {timeout_s:.0f}s.{_tail(log_file)}")
        time.sleep(interval_s)


def _tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None or not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_file}:\n" + "\n".join(text)
