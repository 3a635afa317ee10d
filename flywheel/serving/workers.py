"""Several service processes behind one port, with the connections spread evenly over them.

Neither of the usual ways spreads a client's connection pool evenly. uvicorn's own `--workers` shares one
listening socket, and the first worker to wake accepts a whole burst (measured: all 16 keep-alive connections
of the serving benchmark on one worker). A socket per worker with SO_REUSEPORT lets the kernel pick by a hash
of each connection: 16 connections split 8/8 only one time in five, and 4/12 or worse one time in thirteen,
where the busier worker carries three times the load.

So the parent listens and accepts, and hands each connection (its descriptor, over a Unix socket) to the
started worker that holds the fewest open connections; the workers serve them with uvicorn
(`flywheel.compat.uvicorn`) and report how many they have closed. The parent also restarts a worker that dies
after it has served, and stops them all on SIGINT or SIGTERM. A worker that dies before it ever answered stops
the service with an error: it would fail the same way again.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event as EventType

from flywheel.errors import FlywheelError

log = logging.getLogger(__name__)

APP = "flywheel.serving.app:from_settings"
STOP_S = 30.0  # a stopping worker flushes its exposure log to Kafka first
REPORT_S = 0.05  # how often a worker reports its open connections
BACKLOG = 2048


def bound_socket(host: str, port: int) -> socket.socket:
    """The service's socket, bound, not listening yet: until a worker can serve, connections are refused rather
    than left waiting. Without SO_REUSEPORT: a port that another service listens on (an earlier
    `flywheel serve`) is refused instead of silently shared."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FlywheelError(f"cannot listen on {host}:{port} ({exc}): stop what uses it, or pass --port") from None
    return sock


def _worker(
    app: str,
    channel: socket.socket,
    closed: SynchronizedArray,
    index: int,
    started: EventType,
    setup_logging: Callable[[], None] | None,
) -> None:
    """One worker process: the app, serving the connections the parent hands it."""
    import uvicorn

    from flywheel.compat.uvicorn import HandedConnections

    if setup_logging is not None:  # a spawned interpreter starts without the parent's handlers
        setup_logging()

    def report(received: int, open_now: int) -> None:
        closed[index] = received - open_now

    config = uvicorn.Config(app, factory=True, log_level="warning", access_log=False)
    server = HandedConnections(config, channel, report, REPORT_S)

    def mark_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            started.set()

    threading.Thread(target=mark_started, daemon=True).start()
    server.run()


@dataclass
class _Slot:
    """One worker and what the parent knows of it."""

    proc: BaseProcess
    started: EventType
    channel: socket.socket  # the parent's end of the worker's Unix socket
    sent: int = 0  # connections handed to this process
    usable: bool = True  # False once a hand-over to it failed (it is dying)


class Supervisor:
    """The workers of one `flywheel serve`, and the thread that accepts connections and hands them out."""

    def __init__(self, sock: socket.socket, workers: int, app: str, setup_logging: Callable[[], None] | None):
        self.sock = sock
        self.app = app
        self.setup_logging = setup_logging
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or Feast state forked
        self.closed = self.ctx.Array("q", workers, lock=False)  # per worker: connections it has closed
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.slots = [self._start(i) for i in range(workers)]
        self.acceptor = threading.Thread(target=self._accept, name="serve-accept", daemon=True)

    def _start(self, i: int) -> _Slot:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = self.ctx.Event()
        self.closed[i] = 0
        proc = self.ctx.Process(target=_worker, args=(self.app, theirs, self.closed, i, started, self.setup_logging),
                                name=f"flywheel-serve-{i}")  # fmt: skip
        proc.start()
        theirs.close()
        return _Slot(proc, started, ours)

    def open_connections(self) -> list[int]:
        """Per worker, the connections it holds: handed to it and not closed yet."""
        return [s.sent - self.closed[i] for i, s in enumerate(self.slots)]

    def _hand_over(self, conn: socket.socket) -> bool:
        with self.lock:
            ready = [i for i, s in enumerate(self.slots) if s.usable and s.started.is_set()]
            held = self.open_connections()
            # The fewest open connections; on a tie the fewest handed over, so one-off connections alternate.
            for i in sorted(ready, key=lambda i: (held[i], self.slots[i].sent)):
                slot = self.slots[i]
                try:
                    socket.send_fds(slot.channel, [b"c"], [conn.fileno()])
                except OSError:
                    slot.usable = False  # its process is exiting: the supervisor's loop restarts it
                    continue
                slot.sent += 1
                return True
        return False

    def _accept(self) -> None:
        while not self.stop.is_set() and not any(s.started.is_set() for s in self.slots):
            time.sleep(0.05)
        self.sock.listen(BACKLOG)
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            if not any(s.started.is_set() and s.usable for s in self.slots):
                time.sleep(0.05)  # connections wait in the backlog until a worker can serve them
                continue
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stop.is_set():
                    return
                raise
            with conn:  # the worker holds its own descriptor now; ours is closed either way
                if not self._hand_over(conn):
                    log.warning("no worker could take a connection: closed it")

    def run(self) -> None:
        """Until SIGINT or SIGTERM (or a worker that fails before it served: FlywheelError)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        self.acceptor.start()
        failed: str | None = None
        try:
            while not self.stop.wait(0.5):
                for i, slot in enumerate(self.slots):
                    if slot.proc.is_alive():
                        continue
                    if not slot.started.is_set():
                        failed = f"worker {i} exited with {slot.proc.exitcode} before it served; its stderr says why"
                        self.stop.set()
                        break
                    log.error("worker %d (pid %s) exited with %s; starting another", i, slot.proc.pid,
                              slot.proc.exitcode)  # fmt: skip
                    with self.lock:
                        slot.channel.close()
                        self.slots[i] = self._start(i)
        finally:
            self.stop.set()
            self.acceptor.join()
            for slot in self.slots:
                slot.proc.terminate()  # SIGTERM: uvicorn shuts down gracefully, the app's lifespan flushes its log
            deadline = time.monotonic() + STOP_S
            for slot in self.slots:
                slot.proc.join(max(0.1, deadline - time.monotonic()))
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join()
                slot.channel.close()
        if failed:
            raise FlywheelError(failed)


def run(host: str, port: int, workers: int, setup_logging: Callable[[], None] | None = None, app: str = APP) -> None:
    """Serve `app` (an import string of a factory) with `workers` processes until SIGINT or SIGTERM; each calls
    `setup_logging` first (picklable: a module-level function or a partial of one)."""
    sock = bound_socket(host, port)
    try:
        Supervisor(sock, workers, app, setup_logging).run()
    finally:
        sock.close()
