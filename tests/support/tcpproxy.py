"""An asyncio TCP proxy that tests put between a client and a server to cut, restore or slow the link.

    async with TcpProxy("127.0.0.1", 5672) as proxy:    # listens on 127.0.0.1:<proxy.port>
        ...                                             # connect the code under test to proxy.port
        await proxy.cut()                               # every connection closed, new ones refused
        proxy.restore()                                 # new connections go through again
        proxy.set_delay(0.2)                            # every chunk forwarded 0.2 s after it arrived
        proxy.set_delay(3600)                           # a "hold": nothing passes until set_delay(0)

While cut, the listening socket stays open (so the port never changes hands) but each accepted connection is
reset at once, which clients see as a refused or dropped connection. A delay keeps the order of bytes in each
direction and applies to chunks still waiting when it changes, so lowering it releases held traffic at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from types import TracebackType
from typing import Self

_CHUNK = 65_536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listen_host = listen_host
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self._delay = 0.0
        self._delay_changed = asyncio.Event()
        self.accepted = 0  # connections accepted and forwarded since start
        # Local ports of every upstream connection opened so far: what the server sees as the client's port
        # (e.g. RabbitMQ's ``connection`` field in its firehose trace), so its records can be attributed.
        self.upstream_ports: set[int] = set()
        self._from_clients = 0
        self._received = asyncio.Condition()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self._listen_host, 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_connections(self) -> int:
        return len(self._links)

    @property
    def bytes_from_clients(self) -> int:
        """Bytes received from clients so far (forwarded or still held by a delay)."""
        return self._from_clients

    async def wait_bytes_from_clients(self, total: int) -> None:
        """Wait until :attr:`bytes_from_clients` reaches ``total`` (wrap in ``asyncio.timeout``)."""
        async with self._received:
            await self._received.wait_for(lambda: self._from_clients >= total)

    async def _count_from_client(self, size: int) -> None:
        async with self._received:
            self._from_clients += size
            self._received.notify_all()

    @property
    def is_cut(self) -> bool:
        return self._cut

    async def cut(self) -> None:
        """Reset every open connection and refuse new ones until :meth:`restore`."""
        self._cut = True
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.closed for link in links), return_exceptions=True)

    def restore(self) -> None:
        self._cut = False

    def set_delay(self, seconds: float) -> None:
        """Forward every chunk ``seconds`` after it arrived (0: at once), both directions."""
        self._delay = max(0.0, seconds)
        self._delay_changed.set()
        self._delay_changed = asyncio.Event()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            # cut() or close() ended this connection on purpose. Python 3.11's asyncio.streams asks a finished
            # handler task for its exception without checking for a cancellation and logs it as an error.
            pass
        finally:
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            return
        if self.is_cut:  # cut while we were connecting upstream
            _reset(writer)
            _reset(up_writer)
            return
        self.accepted += 1
        sockname = up_writer.get_extra_info("sockname")
        if sockname is not None:
            self.upstream_ports.add(int(sockname[1]))
        link = _Link(self, writer, up_writer)
        self._links.add(link)
        try:
            await link.run(reader, up_reader)
        finally:
            self._links.discard(link)

    async def _wait_due(self, arrived: float) -> None:
        while (remaining := arrived + self._delay - time.monotonic()) > 0:
            changed = self._delay_changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()


class _Link:
    """One proxied connection: two directions, each a reader feeding a delayed writer."""

    def __init__(self, proxy: TcpProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self._proxy = proxy
        self._writers = (client, upstream)
        self._task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self, client_reader: asyncio.StreamReader, upstream_reader: asyncio.StreamReader) -> None:
        client, upstream = self._writers
        self._task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._direction(client_reader, upstream, from_client=True))
                group.create_task(self._direction(upstream_reader, client, from_client=False))
        except* OSError:
            pass  # a reset from either side ends the link
        finally:
            for writer in self._writers:
                _reset(writer)
            if not self.closed.done():
                self.closed.set_result(None)

    def abort(self) -> None:
        for writer in self._writers:
            _reset(writer)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _direction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        """Forward one direction in order, each chunk when due; an orderly EOF is passed on as a close."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump_in() -> None:
            while chunk := await reader.read(_CHUNK):
                queue.put_nowait((time.monotonic(), chunk))
                if from_client:
                    await self._proxy._count_from_client(len(chunk))
            queue.put_nowait((time.monotonic(), b""))

        async def pump_out() -> None:
            while True:
                arrived, chunk = await queue.get()
                await self._proxy._wait_due(arrived)
                if not chunk:
                    writer.close()
                    await writer.wait_closed()
                    return
                writer.write(chunk)
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            group.create_task(pump_in())
            group.create_task(pump_out())


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) so the peer notices at once, as with a broker crash or a dropped link."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
