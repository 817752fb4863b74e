"""One call's WebSocket to the voice agent: connect within a deadline, bounded sends, receive, close.

aiohttp errors are translated here into the bridge's own (:class:`AgentUnavailable` before the stream works,
:class:`AgentFailed` after); a close frame with a normal code is not an error: :meth:`AgentLink.receive`
returns ``None``. Each link has its own ``ClientSession`` (a WebSocket is never pooled, and the session's
lifetime is then exactly the call's).

Flow control, so that a slow agent costs bounded memory and never blocks the loop:

* sending: aiohttp writes a frame into the transport at once and waits for the transport to drain once
  about 64 KiB are pending; a send still waiting after ``send_timeout_seconds`` means the agent stopped
  reading, and raises :class:`AgentFailed`. The socket's kernel send buffer is fixed at
  :data:`SEND_BUFFER_BYTES` (Linux would grow it to 4 MiB, minutes of audio that a stuck agent would
  absorb before any send waits, all of it stale by the time it is read); the heartbeat catches an agent
  that neither reads nor answers pings sooner. ``TCP_USER_TIMEOUT`` (twice the send timeout) has the kernel
  drop a connection whose bytes go unacknowledged that long, so even a socket closed with unsent bytes
  towards a stuck agent is gone soon.
* receiving: nothing is read unless the bridge asks (``receive``); aiohttp stops reading the socket once
  ~128 KiB of messages wait, so an agent that runs ahead is slowed by TCP, not buffered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import WSMsgType

from worker.apps.bridge_config import BridgeSettings
from worker.errors import CallhookError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20  # one agent message: 1 MiB is ~2 min of µ-law, ~20 s of 24 kHz PCM
SEND_BUFFER_BYTES = 64 * 1024  # the kernel doubles it: ~4 s of 16 kHz PCM, ~7 s of Twilio media in flight
# Each step of closing (the stop message, the closing handshake, the session's close) gets this long: the
# worker's session gives a cancelled app ~2 s to finish.
CLOSE_TIMEOUT_SECONDS = 0.5
NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005})  # normal, going away, no code given


class BridgeError(CallhookError):
    """The voice agent could not be used; the message says why (the URL is never in it: it may hold a token).

    ``AgentUnavailable``: could not connect, or refused the handshake, within the connect timeout.
    ``AgentFailed``: broke while the call ran (stopped reading, connection lost, closed with an error code).
    """


class AgentUnavailable(BridgeError):
    pass


class AgentFailed(BridgeError):
    pass


@dataclass(frozen=True, slots=True)
class Received:
    data: str | bytes
    text: bool


class AgentLink:
    """A connected WebSocket; use :meth:`connect`, then as an async context manager (closes on exit)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        sockets: _Sockets,
        send_timeout: float,
    ) -> None:
        self._http = http
        self._ws = ws
        self._sockets = sockets
        self._send_timeout = send_timeout
        self.agent_closed = False  # the agent sent a close frame: later sends are dropped, not errors
        self.messages_sent = 0

    @classmethod
    async def connect(cls, url: str, settings: BridgeSettings) -> AgentLink:
        sockets = _Sockets(user_timeout_seconds=2 * settings.send_timeout_seconds)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, socket_factory=sockets.create),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        try:
            async with asyncio.timeout(settings.connect_timeout_seconds):
                ws = await http.ws_connect(
                    url,
                    headers=list(settings.headers),
                    heartbeat=settings.heartbeat_seconds or None,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_SECONDS),
                    compress=0,
                )
        except TimeoutError:
            await http.close()
            raise AgentUnavailable(
                f"voice agent not connected within {settings.connect_timeout_seconds} s"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            await http.close()
            raise AgentUnavailable(f"voice agent refused the WebSocket handshake: HTTP {exc.status}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            await http.close()
            raise AgentUnavailable(f"voice agent unreachable: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await http.close()
            raise
        return cls(http, ws, sockets, settings.send_timeout_seconds)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def send(self, data: bytes, *, text: bool) -> None:
        """Send one message; raises AgentFailed if it cannot be sent within the send timeout."""
        if self._sending_is_moot():
            return
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._ws.send_frame(data, WSMsgType.TEXT if text else WSMsgType.BINARY)
        except TimeoutError:
            raise AgentFailed(f"voice agent not reading: a send waited {self._send_timeout} s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            if self._sending_is_moot():  # the agent's close frame arrived while this send waited
                return
            raise AgentFailed(f"voice agent connection lost while sending: {exc}") from exc
        self.messages_sent += 1

    def _sending_is_moot(self) -> bool:
        return self.agent_closed

    async def receive(self) -> Received | None:
        """The agent's next message; None once it closed normally; AgentFailed for anything else."""
        message = await self._ws.receive()
        if message.type is WSMsgType.TEXT:
            return Received(message.data, text=True)
        if message.type is WSMsgType.BINARY:
            return Received(message.data, text=False)
        if message.type is WSMsgType.CLOSE:
            self.agent_closed = True
            code = message.data
            if code in NORMAL_CLOSE_CODES:
                return None
            raise AgentFailed(
                f"voice agent closed the WebSocket with code {code} {message.extra or ''}".strip()
            )
        if message.type is WSMsgType.ERROR:
            raise AgentFailed(f"voice agent connection failed: {message.data!r}")
        raise AgentFailed(f"voice agent connection ended without a close frame (code {self._ws.close_code})")

    async def finish(self, last: bytes | None) -> None:
        """Send ``last`` (the stream's stop) if the socket still works, then close. Bounded, never raises."""
        try:
            async with asyncio.timeout(min(self._send_timeout, CLOSE_TIMEOUT_SECONDS)):
                if last is not None and not self.agent_closed and not self._ws.closed:
                    await self._ws.send_frame(last, WSMsgType.TEXT)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            log.info("voice agent did not take the stop message", extra={"error": repr(exc)})
            await self.close(abort=True)
            return
        await self.close()

    async def close(self, *, abort: bool = False) -> None:
        """Close: the WebSocket closing handshake (bounded), or at once with ``abort`` (the agent is stuck or
        gone: whatever is still unsent is discarded). Idempotent, never raises."""
        if not abort and not self._ws.closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await self._ws.close()
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                abort = True
        if abort:
            # A transport with unsent bytes only closes once they are sent, which a stuck agent never
            # allows; resetting the socket makes the transport (and the session's close) finish now.
            self._sockets.reset()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._http.close()
        except TimeoutError:
            self._sockets.reset()
            log.warning("voice agent connection did not close in time; reset it")


class _Sockets:
    """The link's sockets (aiohttp's ``socket_factory``): a fixed send buffer, and a way to reset them."""

    def __init__(self, user_timeout_seconds: float) -> None:
        self._user_timeout_ms = max(1000, round(user_timeout_seconds * 1000))
        self._made: list[socket.socket] = []

    def create(self, addr_info: tuple[int, int, int, str, tuple[object, ...]]) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: data stuck this long (even behind a zero window)
            # makes the kernel drop the connection, and bounds how long a closed socket keeps unsent bytes.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self._user_timeout_ms)
        self._made.append(sock)
        return sock

    def reset(self) -> None:
        """Abort every open one: RST instead of FIN (no lingering unsent data), both directions shut."""
        for sock in self._made:
            if sock.fileno() == -1:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
