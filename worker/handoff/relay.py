"""The audio between a caller's leg and an agent's leg: Opus forwarded as it is, or PCM transcoded.

Two modes, chosen once per relay (:func:`choose_mode`) and visible in ``callhook_handoff_relays_total{mode}``
and the "relay started" log line's ``relay_mode``:

* **forwarded**, when both legs negotiated Opus/48000 (WhatsApp's and a browser's always do) and
  ``CALLHOOK_HANDOFF_FORWARD_OPUS`` is on: each inbound audio packet of one leg is handed to the other leg's
  sender *as it arrives* (from the seam, before the jitter buffer; no decode, no encode). The far ends
  (the browser's NetEQ, the phone) have jitter buffers of their own, so a second one here would only add
  its delay (docs/handoff.md). The sending leg keeps its own SSRC and sequence numbers and rewrites the
  timestamps (worker/media/forward.py). Each leg's jitter buffer is still fed and popped on the tick (nothing
  is decoded), so its quality figures stay live. RFC 4733 telephone events are routed to the session's
  event callback before this tap, so they never reach the agent as audio.
* **transcoded**: each leg decoded on the playout tick, its 16 kHz PCM queued on the other leg, which
  encodes it on the same tick.

Whenever a leg must carry audio of the worker's own (hold: the caller hears the hold audio, the agent
silence), that leg stops forwarding and encodes again; off hold it forwards again. The switch happens on
the sending leg's timeline, so the receiver sees neither a sequence gap nor a timestamp jump.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from worker.media import MediaSession

log = logging.getLogger(__name__)

RATE = 16000


class RelayMode(enum.Enum):
    FORWARDED = "forwarded"
    TRANSCODED = "transcoded"


def choose_mode(caller: MediaSession, agent: MediaSession, *, forward_opus: bool) -> RelayMode:
    if forward_opus and caller.opus_48k and agent.opus_48k:
        return RelayMode.FORWARDED
    return RelayMode.TRANSCODED


class Relay:
    """Relays audio both ways while :meth:`run` runs (cancel it to stop). :meth:`set_hold` may be called at
    any time; ``hold_audio`` (16 kHz PCM) is looped to the caller while on hold."""

    def __init__(self, caller: MediaSession, agent: MediaSession, mode: RelayMode, hold_audio: bytes) -> None:
        self.caller = caller
        self.agent = agent
        self.mode = mode
        self._hold_audio = hold_audio
        self.on_hold = False
        self._hold_changed = asyncio.Event()

    def set_hold(self, on: bool) -> None:
        if on != self.on_hold:
            self.on_hold = on
            self._hold_changed.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                if self.mode is RelayMode.TRANSCODED:
                    tg.create_task(self._pipe(self.caller, self.agent))
                    tg.create_task(self._pipe(self.agent, self.caller))
                else:
                    self.caller.on_audio_packet = self.agent.forward
                    self.agent.on_audio_packet = self.caller.forward
                    self._forward(True)
                tg.create_task(self._follow_hold())
        finally:
            self.caller.on_audio_packet = None
            self.agent.on_audio_packet = None
            self._forward(False)

    # ------------------------------------------------------------------------------------ internals
    def _forward(self, on: bool) -> None:
        on = on and self.mode is RelayMode.FORWARDED
        self.caller.set_forwarding(on)
        self.agent.set_forwarding(on)

    async def _pipe(self, source: MediaSession, sink: MediaSession) -> None:
        async for pcm in source.frames(RATE):
            if not self.on_hold:  # on hold: both hear nothing of the other (the caller hears hold audio)
                await sink.send(pcm, RATE)

    async def _follow_hold(self) -> None:
        while True:
            await self._wait_hold(True)
            self._forward(False)  # both legs carry our own audio now: the hold audio, silence
            self.caller.clear()
            playing = asyncio.ensure_future(self._loop_hold())
            try:
                await self._wait_hold(False)
            finally:
                playing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await playing
            self.caller.clear()
            self._forward(True)

    async def _wait_hold(self, on: bool) -> None:
        while self.on_hold is not on:
            await self._hold_changed.wait()
            self._hold_changed.clear()

    async def _loop_hold(self) -> None:
        while self.caller.ended_reason is None:
            await self.caller.send(self._hold_audio, RATE)
            await self.caller.wait_played()
