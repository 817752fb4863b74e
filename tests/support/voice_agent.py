"""A voice agent for bridge tests and benchmarks: a real aiohttp WebSocket server on 127.0.0.1.

It speaks either wire protocol of the bridge (``twilio`` or ``pcm``), written from the protocol's description
(docs/bridge.md), not from the bridge's code: it decodes µ-law with its own table-free numpy formula, so a
bug in the bridge's codec cannot cancel out. Each WebSocket the bridge opens becomes an :class:`AgentSession`
the test drives: what it heard (``heard``: PCM at the protocol's rate), the control messages it got, and
methods to talk back (audio, marks, clear), close, or stop reading altogether.

    async with VoiceAgent("twilio") as agent:
        ... load_app(agent.url) ...
        session = await agent.next_session()
        await session.wait_heard(440.0)
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import numpy as np
from aiohttp import WSMsgType, web

from worker import audio

FRAME_SECONDS = 0.02


def mulaw_decode(codes: bytes) -> bytes:
    """G.711 µ-law expansion by its formula (independent of the bridge's table)."""
    u = ~np.frombuffer(codes, dtype=np.uint8).astype(np.int32) & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype("<i2").tobytes()


def mulaw_encode(pcm: bytes) -> bytes:
    """G.711 µ-law compression by its formula."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


class AgentSession:
    """One WebSocket from the bridge, as the agent sees it."""

    def __init__(self, agent: VoiceAgent, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.protocol = agent.protocol
        self.ws = ws
        self.request = request
        self.headers = dict(request.headers)
        self.messages: list[dict[str, Any]] = []  # every JSON message, in order (twilio media included)
        self.texts: list[str] = []  # the same, as received
        self.heard = bytearray()  # the caller's audio, PCM at sample_rate
        self.heard_at: list[float] = []  # monotonic receive time of each audio message
        self.sample_rate = 8000 if agent.protocol == "twilio" else agent.pcm_rate
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self.stream_sid = ""
        self.on_message: list[Callable[[dict[str, Any]], None]] = []  # called with each JSON message
        self.reading_stopped = False

    # ------------------------------------------------------------------------------------------ reading
    def on_text(self, text: str) -> None:
        self.texts.append(text)
        message = json.loads(text)
        self.messages.append(message)
        if self.protocol == "twilio" and message.get("event") == "media":
            self.heard += mulaw_decode(base64.b64decode(message["media"]["payload"]))
            self.heard_at.append(time.monotonic())
        if message.get("event") == "start":
            self.stream_sid = message["streamSid"]
        for hook in self.on_message:
            hook(message)
        self._changed.set()

    def on_binary(self, data: bytes) -> None:
        self.heard += data
        self.heard_at.append(time.monotonic())
        self._changed.set()

    def on_closed(self, code: int | None) -> None:
        self.close_code = code
        self.closed.set()
        self._changed.set()

    def control(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Control messages (everything but twilio media), optionally only those of one kind."""
        key = "event" if self.protocol == "twilio" else "type"
        found = [m for m in self.messages if m.get(key) != "media"]
        return [m for m in found if kind is None or m.get(key) == kind]

    def digits(self) -> str:
        """The keys the caller pressed, from the ``dtmf`` messages, in order (a pcm flash as ``"!"``)."""
        if self.protocol == "twilio":
            return "".join(m["dtmf"]["digit"] for m in self.control("dtmf"))
        return "".join("!" if m["digit"] == "flash" else m["digit"] for m in self.control("dtmf"))

    def marks(self) -> list[str]:
        return [m["mark"]["name"] if self.protocol == "twilio" else m["name"] for m in self.control("mark")]

    async def wait_for(self, condition: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
        async with asyncio.timeout(timeout_seconds):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_heard(self, tone_hz: float, timeout_seconds: float = 10.0) -> None:
        """Until the last 200 ms of caller audio are dominated by ``tone_hz`` (within 20 Hz)."""
        window = audio.frame_bytes(self.sample_rate, 0.2)

        def heard_it() -> bool:
            recent = self.heard[-window:]
            return (
                len(recent) == window
                and abs(audio.dominant_frequency(recent, self.sample_rate) - tone_hz) < 20
            )

        await self.wait_for(heard_it, timeout_seconds)

    # ------------------------------------------------------------------------------------------ talking
    async def send_audio(self, pcm: bytes, *, chunk_seconds: float = FRAME_SECONDS) -> None:
        """Audio at the protocol's rate, in chunks, as fast as the socket takes it (like a TTS burst)."""
        size = audio.frame_bytes(self.sample_rate, chunk_seconds)
        for i in range(0, len(pcm), size):
            chunk = pcm[i : i + size]
            if self.protocol == "twilio":
                payload = base64.b64encode(mulaw_encode(chunk)).decode()
                await self.send_json(
                    {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
                )
            else:
                await self.ws.send_bytes(chunk)

    async def send_tone(self, tone_hz: float, seconds: float) -> None:
        await self.send_audio(audio.tone(tone_hz, seconds, self.sample_rate))

    async def send_mark(self, name: str) -> None:
        if self.protocol == "twilio":
            await self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        else:
            await self.send_json({"type": "mark", "name": name})

    async def send_clear(self) -> None:
        if self.protocol == "twilio":
            await self.send_json({"event": "clear", "streamSid": self.stream_sid})
        else:
            await self.send_json({"type": "clear"})

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code=code)

    def stop_reading(self) -> None:
        """Read nothing more, ever: the kernel's receive window closes and the bridge's sends back up."""
        transport = self.request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.pause_reading()
        self.reading_stopped = True

    def resume_reading(self) -> None:
        """Read again (at teardown: a paused transport never notices the bridge resetting it)."""
        transport = self.request.transport
        if self.reading_stopped and transport is not None and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            transport.resume_reading()
        self.reading_stopped = False


class VoiceAgent:
    """The server: ``url`` to give the bridge, :meth:`next_session` for each WebSocket it opens."""

    def __init__(
        self, protocol: str = "twilio", *, pcm_rate: int = 16000, refuse_status: int | None = None
    ) -> None:
        self.protocol = protocol
        self.pcm_rate = pcm_rate
        self.refuse_status = refuse_status  # answer the handshake with this HTTP status instead
        self.sessions: asyncio.Queue[AgentSession] = asyncio.Queue()
        self.all_sessions: list[AgentSession] = []
        self.on_session: Callable[[AgentSession], Any] | None = None  # called as each session opens
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/agent"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/agent", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None
        for session in self.all_sessions:
            session.resume_reading()
        await self._runner.cleanup()

    async def next_session(self, timeout_seconds: float = 10.0) -> AgentSession:
        async with asyncio.timeout(timeout_seconds):
            return await self.sessions.get()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_status is not None:
            return web.Response(status=self.refuse_status, text="go away")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = AgentSession(self, ws, request)
        self.sessions.put_nowait(session)
        self.all_sessions.append(session)
        if self.on_session is not None:
            self.on_session(session)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    session.on_text(message.data)
                elif message.type is WSMsgType.BINARY:
                    session.on_binary(message.data)
        finally:
            session.on_closed(ws.close_code)
        return ws
