"""`flywheel serve --workers N`: the parent accepts and hands each connection to the worker holding the fewest,
restarts a worker that dies after it served, stops on a worker that cannot start, and refuses a busy port.
The workers here serve a tiny app that answers with its process id."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from flywheel.errors import FlywheelError
from flywheel.serving.process import free_port
from flywheel.serving.workers import bound_socket

ROOT = Path(__file__).resolve().parents[2]


def pid_app():
    """An ASGI app whose every answer is its worker's pid (an app factory, as the service's is)."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


def broken_app():
    raise RuntimeError("this app cannot start")


def _serve(port: int, app: str, log: Path) -> subprocess.Popen:
    code = f"from flywheel.serving.workers import run; run('127.0.0.1', {port}, 2, app={app!r})"
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=out)


def _pid(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/")
    return int(conn.getresponse().read())


def _connect(port: int, proc: subprocess.Popen) -> tuple[http.client.HTTPConnection, int]:
    deadline = time.monotonic() + 120  # two spawned workers start in seconds, longer on a busy machine
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            return conn, _pid(conn)
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            assert proc.poll() is None and time.monotonic() < deadline, "the service never answered"
            time.sleep(0.2)


def _both_started(port: int, proc: subprocess.Popen) -> None:
    """Until both workers answer (the parent hands connections only to started workers)."""
    deadline = time.monotonic() + 120
    pids: set[int] = set()
    while len(pids) < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        conn, pid = _connect(port, proc)
        pids.add(pid)
        conn.close()
        time.sleep(0.2)


def test_connections_are_spread_evenly_and_a_dead_worker_is_replaced(tmp_path):
    port = free_port()
    proc = _serve(port, "tests.unit.test_workers:pid_app", tmp_path / "serve.log")
    try:
        _both_started(port, proc)
        time.sleep(1.0)  # the probes' closes are reported
        pool = [_connect(port, proc) for _ in range(16)]
        assert sorted(Counter(pid for _, pid in pool).values()) == [8, 8]
        assert all(_pid(conn) == pid for conn, pid in pool)  # keep-alive: each stays on its worker

        # Least connections: the worker whose connections closed gets the next ones.
        first = pool[0][1]
        for conn, pid in pool:
            if pid == first:
                conn.close()
        time.sleep(1.0)  # workers report closes every 50 ms
        fresh = [_connect(port, proc) for _ in range(4)]
        assert [pid for _, pid in fresh] == [first] * 4

        os.kill(first, signal.SIGKILL)
        other = next(pid for _, pid in pool if pid != first)
        deadline = time.monotonic() + 120
        pids: set[int] = set()
        while not pids - {first, other}:  # the replacement answers
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            conn, pid = _connect(port, proc)
            assert pid != first
            pids.add(pid)
            conn.close()
            time.sleep(0.2)
        for conn, _ in pool:
            conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    assert f"(pid {first}) exited with -9; starting another" in (tmp_path / "serve.log").read_text()


def test_a_worker_that_cannot_start_stops_the_service_with_an_error(tmp_path):
    proc = _serve(free_port(), "tests.unit.test_workers:broken_app", tmp_path / "serve.log")
    assert proc.wait(120) != 0
    text = (tmp_path / "serve.log").read_text()
    assert "before it served" in text and "this app cannot start" in text


def test_a_port_another_service_listens_on_is_refused():
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would share it
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        with pytest.raises(FlywheelError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            bound_socket("127.0.0.1", port)
    finally:
        other.close()
