"""uvicorn internals Flywheel needs to serve connections accepted by another process (the supervisor of
`flywheel serve --workers N` hands each worker its connections). uvicorn serves only sockets it listens on;
its server state, protocol class and lifespan are private. Checked against uvicorn 0.54.0."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import uvicorn

from flywheel.compat import require

CHECKED = "0.54.0"


class HandedConnections(uvicorn.Server):
    """A uvicorn server without a listening socket: it serves each connection whose descriptor arrives on
    `channel` (SCM_RIGHTS), and calls `report(connections)` with how many it has received and how many of
    those are still open, every `report_s`. It exits when the channel closes (the supervisor is gone)."""

    def __init__(
        self, config: uvicorn.Config, channel: socket.socket, report: Callable[[int, int], None], report_s: float
    ):
        require("uvicorn", CHECKED, __name__)
        super().__init__(config)
        self.channel = channel
        self.report = report
        self.report_s = report_s
        self.received = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE: the app's start-up failed and said why
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        self.servers = []
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._receive, loop, create_protocol)
        self._reporter = loop.create_task(self._report())
        self.started = True

    def _receive(self, loop: asyncio.AbstractEventLoop, create_protocol: Callable[[], asyncio.Protocol]) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, 64, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:  # the supervisor closed its end: it is gone or stopping
            loop.remove_reader(self.channel.fileno())
            self.should_exit = True
        for fd in fds:
            loop.create_task(self._take(loop, create_protocol, socket.socket(fileno=fd)))

    async def _take(
        self, loop: asyncio.AbstractEventLoop, create_protocol: Callable[[], asyncio.Protocol], sock: socket.socket
    ) -> None:
        sock.setblocking(False)
        try:
            await loop.connect_accepted_socket(create_protocol, sock)
        except OSError:
            sock.close()  # the client left before it was served
        self.received += 1  # counted once its protocol holds it, so received - open never counts it as closed

    async def _report(self) -> None:
        while True:
            self.report(self.received, len(self.server_state.connections))
            await asyncio.sleep(self.report_s)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.channel.fileno())
        self._reporter.cancel()
        await super().shutdown(sockets)
