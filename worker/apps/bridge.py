"""``ws://…`` / ``wss://…``: each call's audio bridged to an external voice agent over a WebSocket.

One WebSocket per call, speaking Twilio Media Streams (``twilio``, µ-law 8 kHz) or callhook's ``pcm``
protocol (16-bit PCM at 16 or 24 kHz); see docs/bridge.md. Four tasks per call, under one TaskGroup:

* **uplink**: the caller's 20 ms frames → one message each to the agent;
* **keypad**: the caller's key presses → one ``dtmf`` message each (it never decides the ending);
* **downlink**: the agent's messages → :class:`~worker.apps.bridge_playout.Playout` (audio, marks, clear);
* **player**: the playout → ``call.send``; marks reported back once played.

The first to finish decides how the call ends:

=====================================  ===================================================================
caller hung up (frames end), or the    ``stop`` to the agent, then the socket is closed
call ended under the app (cancelled)
agent closed the socket normally       what it already sent is played, then the call is hung up
agent failed (stopped reading past      socket dropped, queued audio cleared, the apology played, hang up
the send timeout, connection lost,
closed with an error code)
=====================================  ===================================================================

**Before accept**: :meth:`Bridge.prepare` connects and sends the stream's opening (Twilio ``connected`` +
``start``) while the call is still being set up, so an agent that cannot be reached gets the call rejected
instead of answered; it returns a :class:`PreparedBridge` whose ``run(call)`` takes over after accept, and
whose ``aclose()`` (the call was never answered) sends ``stop`` and closes. Without ``prepare`` (a session
that does not know the hook) calling the app connects after accept, and an unreachable agent gets the
apology and a hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from worker import audio
from worker.apps.api import Call, CallEnded, CallInfo
from worker.apps.bridge_config import BridgeSettings
from worker.apps.bridge_link import AgentFailed, AgentLink, AgentUnavailable
from worker.apps.bridge_pcm import PcmStream
from worker.apps.bridge_playout import Playout
from worker.apps.bridge_protocol import (
    AgentAudio,
    AgentClear,
    AgentMark,
    AgentStream,
    AgentTransfer,
    StopReason,
)
from worker.apps.bridge_twilio import TwilioStream
from worker.apps.play import open_wav, to_mono

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Apology:
    """What the caller hears when the agent fails after accept: mono 16-bit PCM at ``sample_rate``."""

    pcm: bytes
    sample_rate: int

    @classmethod
    def from_wav(cls, path: Path) -> Apology:
        """Read a WAV file whole (blocking: at start-up, when the app is loaded)."""
        reader, fmt = open_wav(path)
        try:
            return cls(to_mono(reader.readframes(fmt.frames), fmt.channels), fmt.sample_rate)
        finally:
            reader.close()

    @classmethod
    def tones(cls, sample_rate: int = 16000) -> Apology:
        """The ITU-T E.180 "special information tone" (950/1400/1800 Hz, 330 ms each) twice: the sound
        telephone networks play before "your call cannot be completed"."""
        gap = audio.silence(sample_rate, 0.3)
        triple = b"".join(audio.tone(hz, 0.33, sample_rate, amplitude=0.2) for hz in (950.0, 1400.0, 1800.0))
        return cls(triple + gap + triple + gap, sample_rate)


def open_stream(settings: BridgeSettings, info: CallInfo) -> AgentStream:
    """A fresh stream for one call in the configured wire protocol."""
    if settings.protocol == "pcm":
        return PcmStream(info, settings.sample_rate)
    return TwilioStream(info)


# --------------------------------------------------------------------------------------------- endings
@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    ending: str | None  # caller_gone | agent_closed | agent_failed; None while running or never run
    messages_to_agent: int
    agent_audio_seconds: float  # audio received from the agent (played, queued or cleared)
    marks_played: int
    marks_cleared: int
    clears: int
    ignored_messages: int
    digits_sent: int = 0  # dtmf messages to the agent


@dataclass(frozen=True, slots=True)
class _Ending:
    kind: str  # "caller_gone" | "agent_closed" | "agent_failed"
    reason: str


_CALLER_GONE = _Ending("caller_gone", "the call's audio ended")
_AGENT_CLOSED = _Ending("agent_closed", "the agent closed the WebSocket")


# ------------------------------------------------------------------------------------------------ the app
class Bridge:
    """The app for ``ws://…``: ``await bridge(call)``, or ``prepare(info)`` before accept, then ``run``."""

    def __init__(self, url: str, settings: BridgeSettings, apology: Apology | None = None) -> None:
        self.url = url
        self.settings = settings
        self.apology = apology or Apology.tones()

    async def prepare(self, info: CallInfo) -> PreparedBridge:
        """Connect to the agent and open the stream. Raises AgentUnavailable when the connection is not made
        within the connect timeout, or the opening messages cannot be sent within the send timeout."""
        stream = open_stream(self.settings, info)
        link = await AgentLink.connect(self.url, self.settings)
        try:
            for message in stream.opening():
                await link.send(message, text=True)
        except AgentFailed as exc:
            await link.close(abort=True)
            raise AgentUnavailable(f"voice agent took no opening message: {exc}") from exc
        except BaseException:
            await link.close(abort=True)
            raise
        return PreparedBridge(self, link, stream)

    async def __call__(self, call: Call) -> None:
        try:
            prepared = await self.prepare(call.info)
        except AgentUnavailable as exc:
            log.warning("voice agent unavailable after accept: apologizing", extra={"error": str(exc)})
            await apologize(call, self.apology)
            return
        async with prepared:
            await prepared.run(call)

    def __repr__(self) -> str:
        return f"Bridge(protocol={self.settings.protocol!r})"  # the URL may carry a token


class PreparedBridge:
    """A connected stream waiting for its call to be answered. ``run(call)`` once; ``aclose()`` always."""

    def __init__(self, bridge: Bridge, link: AgentLink, stream: AgentStream) -> None:
        self._bridge = bridge
        self._link = link
        self._stream = stream
        self._ran = False
        self._closed = False
        self._ending: str | None = None
        self._playout: Playout | None = None
        self._ignored = 0
        self._digits_sent = 0
        self._transfer: AgentTransfer | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def statistics(self) -> BridgeStatistics:
        playout = self._playout
        return BridgeStatistics(
            ending=self._ending,
            messages_to_agent=self._link.messages_sent,
            agent_audio_seconds=audio.duration_seconds(playout.audio_bytes_in, playout.sample_rate)
            if playout
            else 0.0,
            marks_played=playout.marks_played if playout else 0,
            marks_cleared=playout.marks_cleared if playout else 0,
            clears=playout.clears if playout else 0,
            ignored_messages=self._ignored,
            digits_sent=self._digits_sent,
        )

    async def aclose(self) -> None:
        """Never answered: ``stop`` (not_answered), close. Once ``run`` started, ``run`` owns the socket and
        this does nothing. Idempotent."""
        if self._closed or self._ran:
            return
        self._closed = True
        await self._link.finish(self._stream.stop(StopReason.NOT_ANSWERED))

    async def run(self, call: Call) -> None:
        if self._ran or self._closed:
            raise RuntimeError("a prepared bridge runs one call, once")
        self._ran = True
        settings = self._bridge.settings
        playout = self._playout = Playout(call, self._stream.sample_rate, settings.playout_buffer_seconds)
        try:
            ending = await self._pump(call, playout)
        except BaseException:
            # Cancelled (the call ended under the app) or a bug: the agent still hears that the stream ended.
            self._closed = True
            await self._link.finish(self._stream.stop(StopReason.CALL_ENDED))
            raise
        self._ending = ending.kind
        self._closed = True
        stats = self.statistics()
        log.info(
            "voice agent stream ended",
            extra={
                "ending": ending.kind,
                "reason": ending.reason,
                "messages_to_agent": stats.messages_to_agent,
                "agent_audio_seconds": round(stats.agent_audio_seconds, 2),
                "marks_played": stats.marks_played,
                "clears": stats.clears,
                "ignored_messages": stats.ignored_messages,
                "digits_sent": stats.digits_sent,
            },
        )
        if ending is _CALLER_GONE:
            await self._link.finish(self._stream.stop(StopReason.CALL_ENDED))
        elif self._transfer is not None:
            await self._link.finish(self._stream.stop(StopReason.TRANSFERRED))
            t = self._transfer
            await call.transfer(t.queue, reason=t.reason, context=t.context)
        elif ending is _AGENT_CLOSED:
            await self._link.close()
            await _ignoring_call_end(call.hangup())
        else:
            await self._link.close(abort=True)
            await apologize(call, self._bridge.apology)

    # ------------------------------------------------------------------------------------- the pumps
    async def _pump(self, call: Call, playout: Playout) -> _Ending:
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[_Ending] = loop.create_future()

        async def until_decided(pump: Coroutine[Any, Any, _Ending]) -> None:
            try:
                ending = await pump
            except AgentFailed as exc:
                ending = _Ending("agent_failed", str(exc))
            except CallEnded:
                ending = _CALLER_GONE
            if not decided.done():
                decided.set_result(ending)

        async with asyncio.TaskGroup() as tg:
            pumps = [
                tg.create_task(until_decided(self._uplink(call)), name="bridge-uplink"),
                tg.create_task(until_decided(self._keypad(call)), name="bridge-keypad"),
                tg.create_task(until_decided(self._downlink(playout)), name="bridge-downlink"),
                tg.create_task(until_decided(self._play(playout)), name="bridge-player"),
            ]
            ending = await decided
            for task in pumps:
                task.cancel()
        return ending

    async def _uplink(self, call: Call) -> _Ending:
        stream, link = self._stream, self._link
        frames = call.frames(stream.sample_rate)
        try:
            async for pcm in frames:
                await link.send(stream.audio(pcm), text=stream.audio_is_text)
        finally:
            # Stop the call's media feeding this reader now, not when the generator is collected.
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()
        return _CALLER_GONE

    async def _keypad(self, call: Call) -> _Ending:
        stream, link = self._stream, self._link
        async for digit in call.dtmf():
            message = stream.dtmf(digit)
            if message is not None:
                await link.send(message, text=True)
                self._digits_sent += 1
        # No more digits: the call is ending, and the uplink says so. Wait to be cancelled.
        never: asyncio.Future[_Ending] = asyncio.get_running_loop().create_future()
        return await never

    async def _downlink(self, playout: Playout) -> _Ending:
        stream, link = self._stream, self._link
        while True:
            await playout.wait_space()
            received = await link.receive()
            if received is None:
                await playout.wait_idle()  # the agent's last words are heard before the hang-up
                return _AGENT_CLOSED
            data = received.data
            if received.text:
                event = stream.decode_text(data)
            else:
                event = stream.decode_binary(data if isinstance(data, bytes) else data.encode())
            match event:
                case AgentAudio(pcm=pcm):
                    playout.add_audio(pcm)
                case AgentMark(name=name):
                    playout.add_mark(name)
                case AgentClear():
                    for name in playout.clear():
                        await link.send(stream.mark(name, cleared=True), text=True)
                case AgentTransfer():
                    self._transfer = event
                    return _Ending("transferred", f"to queue {event.queue}")
                case _:
                    self._ignored += 1
                    if self._ignored == 1 or self._ignored % 1000 == 0:
                        log.info(
                            "voice agent message ignored",
                            extra={"reason": event.reason, "count": self._ignored},
                        )

    async def _play(self, playout: Playout) -> _Ending:
        stream, link = self._stream, self._link

        async def report(name: str) -> None:
            await link.send(stream.mark(name, cleared=False), text=True)

        await playout.run(report)


async def apologize(call: Call, apology: Apology) -> None:
    """Drop what is queued, play the apology to its end, hang up (as far as the call still allows)."""
    call.clear()
    with contextlib.suppress(CallEnded):
        await call.send(apology.pcm, apology.sample_rate)
        await call.wait_played()
    await _ignoring_call_end(call.hangup())


async def _ignoring_call_end(waiting: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(CallEnded):
        await waiting
