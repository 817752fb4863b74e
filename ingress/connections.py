"""Deadlines and a cap for connections that are still sending: what keeps slow clients from starving Meta.

aiohttp has no header or body deadline (its keep-alive timer only closes connections that send nothing, and
is an hour by default), so a client that opens a connection and sends its headers one byte a minute holds a
socket and a parser forever. :class:`ConnectionGuard` wraps each connection's protocol (:class:`GuardedSite`
passes every accepted connection through it) and knows its phase:

``HEADERS``  from the connection's start, or from the first byte after a response, until the request handler
             starts (:meth:`request_started`): closed after ``header_timeout``.
``BODY``     the handler is reading the body (until :meth:`body_read`): the handlers bound their own reads
             (408 after ``body_timeout``); the guard closes the connection one second later as a backstop.
``BUSY``     the request is being handled (published): not counted here; ``max_inflight_requests`` bounds it.
``IDLE``     keep-alive, waiting for the next request: closed after ``idle_timeout``.

Connections in HEADERS, BODY or IDLE count against ``max_reading``. When a new connection would exceed it,
the *oldest* such connection is closed: a flood of slow clients then only ever evicts itself, while a real
client (Meta sends headers and body within milliseconds) passes through the counted phases long before
``max_reading`` newer connections arrive.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

BODY_BACKSTOP_SECONDS = 1.0


class Phase(enum.Enum):
    HEADERS = "header_timeout"
    BODY = "body_timeout"
    BUSY = "busy"
    IDLE = "idle_timeout"


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; tells the guard when bytes arrive."""

    __slots__ = ("_guard", "_inner", "phase", "timer", "transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.HEADERS
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport has the methods but not asyncio's base class.
        self.transport = cast(asyncio.Transport, transport)
        self._guard._opened(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self._guard._enter(self, Phase.HEADERS)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._closed(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    def __init__(
        self,
        *,
        header_timeout: float,
        body_timeout: float,
        idle_timeout: float,
        max_reading: int,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        # The handlers bound their own body reads (and answer 408); the guard's body deadline is a backstop
        # one second later, for any route that does not.
        self._timeouts = {
            Phase.HEADERS: header_timeout,
            Phase.BODY: body_timeout + BODY_BACKSTOP_SECONDS,
            Phase.IDLE: idle_timeout,
        }
        self._max_reading = max_reading
        self._on_close = on_close
        self._reading: OrderedDict[_Guarded, None] = OrderedDict()  # oldest first
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}

    @property
    def reading(self) -> int:
        return len(self._reading)

    @property
    def connections(self) -> int:
        return len(self._by_transport)

    def owns(self, transport: asyncio.BaseTransport | None) -> bool:
        return transport is not None and transport in self._by_transport

    def wrap(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _Guarded(self, inner)

    # --- called by the request handlers (through the middleware) ---
    def request_started(self, request: web.BaseRequest) -> None:
        """Headers are complete; the body (if any) is still to be read."""
        conn = self._of(request)
        if conn is not None:
            has_body = request.body_exists and request.method not in ("GET", "HEAD")
            self._enter(conn, Phase.BODY if has_body else Phase.BUSY)

    def body_read(self, request: web.BaseRequest) -> None:
        conn = self._of(request)
        if conn is not None and conn.phase is Phase.BODY:
            self._enter(conn, Phase.BUSY)

    def request_done(self, request: web.BaseRequest) -> None:
        conn = self._of(request)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            self._enter(conn, Phase.IDLE)

    # --- the connection's side ---
    def _of(self, request: web.BaseRequest) -> _Guarded | None:
        transport = request.transport
        return None if transport is None else self._by_transport.get(transport)

    def _opened(self, conn: _Guarded) -> None:
        assert conn.transport is not None
        self._by_transport[conn.transport] = conn
        self._enter(conn, Phase.HEADERS)

    def _closed(self, conn: _Guarded) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self._reading.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def _enter(self, conn: _Guarded, phase: Phase) -> None:
        conn.phase = phase
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if phase is Phase.BUSY:
            self._reading.pop(conn, None)
            return
        self._reading[conn] = None
        self._reading.move_to_end(conn)
        conn.timer = asyncio.get_running_loop().call_later(self._timeouts[phase], self._expire, conn, phase)
        while len(self._reading) > self._max_reading:
            oldest = next(iter(self._reading))
            self._close(oldest, "evicted")

    def _expire(self, conn: _Guarded, phase: Phase) -> None:
        conn.timer = None
        if conn.phase is phase:
            self._close(conn, phase.value)

    def _close(self, conn: _Guarded, reason: str) -> None:
        self._reading.pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.phase = Phase.BUSY  # no more timers for it
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()  # not close(): nothing buffered for it is worth sending
        if self._on_close is not None:
            self._on_close(reason)


def guard_middleware(guard_of: Callable[[web.Request], ConnectionGuard | None]) -> Any:
    """aiohttp middleware: tells the connection's guard when a request starts and ends."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        guard = guard_of(request)
        if guard is None:
            return await handler(request)  # type: ignore[no-any-return]
        guard.request_started(request)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            guard.request_done(request)

    return middleware


class GuardedSite(web.TCPSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self.guard
        self._server = await loop.create_server(
            lambda: guard.wrap(server()),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
