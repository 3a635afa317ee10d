"""`flywheel serve --workers N` binds a socket per worker with SO_REUSEPORT: it must still refuse a port
another service listens on, even one that uses SO_REUSEPORT itself (the kernel would split the traffic)."""

from __future__ import annotations

import socket

import pytest

from flywheel.errors import FlywheelError
from flywheel.serving.process import free_port
from flywheel.serving.workers import bound_sockets


@pytest.mark.parametrize("other_reuses_port", [False, True])
def test_a_port_another_service_listens_on_is_refused(other_reuses_port):
    other = socket.socket()
    if other_reuses_port:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        with pytest.raises(FlywheelError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            bound_sockets("127.0.0.1", port, 2)
    finally:
        other.close()


def test_workers_share_a_free_port():
    port = free_port()
    sockets = bound_sockets("127.0.0.1", port, 2)
    try:
        for s in sockets:
            s.listen()
        assert {s.getsockname()[1] for s in sockets} == {port}
    finally:
        for s in sockets:
            s.close()
