"""`flywheel serve` in a child process, for the commands that need a running service for a while (the demo's
closed loop, the benchmarks): started with settings overridden through the environment, ready when
`/healthz` says so, stopped at the end, its stderr in a log file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from flywheel.errors import FlywheelError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(
    log_path: Path,
    ready: Callable[[dict[str, Any]], bool],
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 240.0,
) -> Iterator[str]:
    """Yields the service's URL once `ready(/healthz answer)`; terminates it on exit. `env` overrides
    settings (FLYWHEEL_SERVING__TOKEN, FLYWHEEL_TRAINING__REGISTRY_DIR, ...)."""
    port = port or free_port()
    flywheel = str(Path(sys.executable).parent / "flywheel")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as errors:
        proc = subprocess.Popen([flywheel, "serve", "--port", str(port)], env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=errors)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s  # each worker imports torch and Feast: tens of seconds when busy
            while True:
                try:
                    if ready(requests.get(f"{url}/healthz", timeout=5).json()):
                        break
                except requests.ConnectionError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise FlywheelError(f"`flywheel serve` did not become ready in {timeout_s:.0f}s; see {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def await_version(url: str, version: str | None, workers: int, timeout_s: float = 60.0) -> float:
    """Wait until every worker serves `version` (each reloads by itself when the registry's alias moves);
    returns the seconds waited. Each poll opens a new connection: a kept-alive one would see one worker only."""
    t0 = time.monotonic()
    seen: dict[int, str | None] = {}
    while not (len(seen) >= workers and all(v == version for v in seen.values())):
        if time.monotonic() - t0 > timeout_s:
            raise FlywheelError(f"the service does not serve {version} after {timeout_s:.0f} s (workers: {seen})")
        time.sleep(0.2)
        health = requests.get(f"{url}/healthz", timeout=10).json()
        seen[health["worker"]] = health["version"]
    return time.monotonic() - t0
