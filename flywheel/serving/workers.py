"""Several service processes behind one port, each accepting on a listening socket of its own.

uvicorn's own `--workers` shares one listening socket: the first worker to wake accepts a whole burst of
connections, so a client's connection pool can end up on one worker while the other idles (measured: 16
keep-alive connections of the serving benchmark, 16 on one worker). Here every worker gets a socket bound
with SO_REUSEPORT, and the kernel spreads new connections over them by a hash of each connection.

The parent binds every socket (a busy port fails before any worker starts), starts the workers, restarts
one that dies after it has served, and stops them all on SIGINT or SIGTERM. A worker that dies before it
ever answered stops the service with an error: it would fail the same way again.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

from flywheel.errors import FlywheelError

log = logging.getLogger(__name__)

APP = "flywheel.serving.app:from_settings"
STOP_S = 30.0  # a stopping worker flushes its exposure log to Kafka first


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FlywheelError(f"cannot listen on {host}:{port} ({exc}): stop what uses it, or pass --port") from None
    return sock


def bound_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` sockets bound to the port with SO_REUSEPORT, not listening yet: a worker's server listens once it
    can accept (until then connections go to the workers that are up, or the port refuses them).

    The port is first bound without SO_REUSEPORT: SO_REUSEPORT alone would share a port that another
    service of the same user listens on (an earlier `flywheel serve`), splitting its traffic silently."""
    _bind(host, port, reuse_port=False).close()
    return [_bind(host, port, reuse_port=True) for _ in range(n)]


def _worker(sock: socket.socket, started: EventType, setup_logging: Callable[[], None] | None) -> None:
    """One worker process: the app from the settings, on its own socket."""
    import uvicorn

    if setup_logging is not None:  # a spawned interpreter starts without the parent's handlers
        setup_logging()

    config = uvicorn.Config(APP, factory=True, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def mark_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            started.set()

    threading.Thread(target=mark_started, daemon=True).start()
    server.run(sockets=[sock])


def run(host: str, port: int, workers: int, setup_logging: Callable[[], None] | None = None) -> None:
    """Serve with `workers` processes until SIGINT or SIGTERM; each calls `setup_logging` first (picklable: a
    module-level function or a partial of one)."""
    sockets = bound_sockets(host, port, workers)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or Feast state forked
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def start(i: int) -> tuple[BaseProcess, EventType]:
        started = ctx.Event()
        proc = ctx.Process(target=_worker, args=(sockets[i], started, setup_logging), name=f"flywheel-serve-{i}")
        proc.start()
        return proc, started

    procs = [start(i) for i in range(workers)]
    failed: str | None = None
    try:
        while not stop.wait(0.5):
            for i, (proc, started) in enumerate(procs):
                if proc.is_alive():
                    continue
                if not started.is_set():
                    failed = f"worker {i} exited with {proc.exitcode} before it served; its stderr says why"
                    stop.set()
                    break
                log.error("worker %d (pid %s) exited with %s; starting another", i, proc.pid, proc.exitcode)
                sockets[i].close()  # its queue of unaccepted connections goes with it, not to the next worker
                sockets[i] = _bind(host, port, reuse_port=True)  # the other workers hold the port
                procs[i] = start(i)
    finally:
        for proc, _ in procs:
            proc.terminate()  # SIGTERM: uvicorn shuts down gracefully, the app's lifespan flushes its log
        deadline = time.monotonic() + STOP_S
        for proc, _ in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sock in sockets:
            sock.close()
    if failed:
        raise FlywheelError(failed)
