"""The phone's hooks into its aiortc peer connection: its network, its ears at the socket, its keypad.

Three seams, all on the phone's own transports (this is Meta's side, a test double: callhook's code never
uses them). They rely on aiortc 1.16 / aioice 0.13 internals, named here so a new version is checked in one
place (``tests/integration/test_simulator_net.py`` fails loudly if one moves):

* :class:`NetHook`: ``RTCIceTransport._send`` (what the DTLS transport calls for every datagram it sends,
  DTLS and SRTP/SRTCP alike) and the aioice ``Connection.data_received`` (what its UDP protocol calls for
  every datagram that is not STUN). Each datagram goes through a :class:`simulator.net.Link`: lost, or
  delivered later with ``loop.call_at``. STUN (ICE checks, consent) is below this seam and never impaired.
* :class:`InboundTap`: ``RTCDtlsTransport._handle_rtp_data``, called with each decrypted RTP packet as it
  arrives (before aiortc's jitter buffer). The tap decodes each packet's Opus on its own, in arrival order,
  and hands the audio to :class:`simulator.heard.HeardLog`; aiortc's own receive path runs unchanged after it.
* :class:`RtpStream`: ``RTCDtlsTransport._send_rtp``, called with each plain RTP packet the phone's sender
  emits. The stream numbers the phone's packets itself (aiortc keeps its sequence counter in a local variable
  of ``RTCRtpSender._run_rtp``), so extra packets (RFC 4733 telephone events) can be put into the audio
  SSRC's sequence between two audio packets, as a phone does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import av
import numpy as np
from aiortc import RTCDtlsTransport, RTCIceTransport
from aiortc.rtp import is_rtcp

from simulator import dtmf
from simulator.heard import HeardLog
from simulator.net import Link, NetProfile

log = logging.getLogger(__name__)


class NetHook:
    """Applies a :class:`NetProfile` to one ICE transport's datagrams (``up``: sent, ``down``: received)."""

    def __init__(self, profile: NetProfile, seed: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        base = random.Random(seed)
        # The links run on the loop's clock, so a departure time is a call_at time as it stands.
        self.up = Link(profile.up, random.Random(base.getrandbits(64)), self._loop.time)
        self.down = Link(profile.down, random.Random(base.getrandbits(64)), self._loop.time)
        self._timers: dict[str, set[asyncio.TimerHandle]] = {"up": set(), "down": set()}
        self._tasks: set[asyncio.Task[None]] = set()
        self._installed = False
        self._closed = False

    def install(self, ice: RTCIceTransport) -> None:
        if self._installed:
            return
        self._installed = True
        loop = self._loop
        connection: Any = ice._connection
        send: Callable[[bytes], Awaitable[None]] = ice._send
        deliver: Callable[[bytes, int], None] = connection.data_received

        def later(direction: str, at: float, callback: Callable[..., None], *args: object) -> None:
            timers = self._timers[direction]
            handle: asyncio.TimerHandle | None = None

            def fire() -> None:
                assert handle is not None
                timers.discard(handle)
                if not self._closed:
                    callback(*args)

            handle = loop.call_at(at, fire)
            timers.add(handle)

        def received(data: bytes, component: int) -> None:
            at = self.down.admit(data)
            if at is None:
                return
            if at <= loop.time() and not self._timers["down"]:
                deliver(data, component)  # nothing in flight ahead of it: no hop through the loop
            else:
                later("down", at, deliver, data, component)

        async def sent(data: bytes) -> None:
            at = self.up.admit(data)
            if at is None:
                return
            if at <= loop.time() and not self._timers["up"]:
                await send(data)
            else:
                later("up", at, self._send_now, send, data)

        connection.data_received = received
        ice._send = sent

    def _send_now(self, send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._send_quietly(send, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _send_quietly(send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        with contextlib.suppress(ConnectionError):  # the call ended while the datagram was in flight
            await send(data)

    def close(self) -> None:
        self._closed = True
        for timers in self._timers.values():
            for handle in timers:
                handle.cancel()
            timers.clear()
        for task in self._tasks:
            task.cancel()


class InboundTap:
    """Decodes every arriving RTP packet of ``opus_pt`` on its own and logs it in ``log`` (see module doc)."""

    def __init__(self, heard: HeardLog, opus_pt: int | None) -> None:
        self.heard = heard
        self.opus_pt = opus_pt
        self.packets = 0
        self.events: list[tuple[float, dtmf.RtpHeader]] = []  # other payload types, kept for tests
        self._decoder: Any = av.CodecContext.create("opus", "r")
        self._decoder.sample_rate = 48_000

    def install(self, dtls: RTCDtlsTransport) -> None:
        handle: Callable[[bytes, int], Awaitable[None]] = dtls._handle_rtp_data

        async def tapped(data: bytes, arrival_time_ms: int) -> None:
            self.observe(data, time.monotonic())
            await handle(data, arrival_time_ms)

        dtls._handle_rtp_data = tapped  # type: ignore[method-assign]

    def observe(self, data: bytes, now: float) -> None:
        try:
            packet = dtmf.parse_rtp(data)
        except ValueError:
            return
        self.packets += 1
        if self.opus_pt is not None and packet.payload_type != self.opus_pt:
            self.events.append((now, packet))
            return
        self.heard.packet(packet.sequence_number, self._decode(packet.payload), now)

    def _decode(self, payload: bytes) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            return None
        if not frames:
            return None
        chunks = []
        for frame in frames:
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                mono = pcm.reshape(channels, -1).mean(axis=0)
            else:
                mono = pcm.reshape(-1, channels).mean(axis=1)
            if pcm.dtype == np.int16:
                mono = mono / 32768.0
            chunks.append(mono.astype(np.float32))
        return np.concatenate(chunks)


class RtpStream:
    """Numbers the phone's outgoing RTP (one SSRC) and lets extra packets join its sequence."""

    def __init__(self) -> None:
        self._send: Callable[[bytes], Awaitable[None]] | None = None
        self.ssrc: int | None = None
        self._next_seq: int | None = None
        self.last_timestamp: int | None = None
        self.last_timestamp_at: float | None = None
        self.audio_rate = 48_000
        self.audio_packets = 0
        self.on_audio: Callable[[int, float], None] | None = None  # (frame index, time it left)
        self._first_timestamp: int | None = None
        self._frame_samples = 960  # 20 ms at 48 kHz: aiortc's Opus packets
        self.sent: list[tuple[int, int, bool]] = []  # (sequence, payload type, injected), while recording
        self.recording = False

    def install(self, dtls: RTCDtlsTransport) -> None:
        if self._send is not None:
            return
        self._send = dtls._send_rtp

        async def outgoing(data: bytes) -> None:
            if not is_rtcp(data) and len(data) >= 12:
                data = self._renumber(data)
            assert self._send is not None
            await self._send(data)

        dtls._send_rtp = outgoing  # type: ignore[method-assign]

    def _renumber(self, data: bytes) -> bytes:
        ssrc = int.from_bytes(data[8:12], "big")
        if self.ssrc is None:
            self.ssrc = ssrc
            self._next_seq = int.from_bytes(data[2:4], "big")
        if ssrc != self.ssrc or self._next_seq is None:
            return data
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFFFF
        self.audio_packets += 1
        self.last_timestamp = timestamp = int.from_bytes(data[4:8], "big")
        self.last_timestamp_at = now = time.monotonic()
        if self._first_timestamp is None:
            self._first_timestamp = timestamp
        if self.on_audio is not None:  # aiortc's timestamps count from the first frame it encoded
            self.on_audio(((timestamp - self._first_timestamp) & 0xFFFFFFFF) // self._frame_samples, now)
        if self.recording:
            self.sent.append((seq, data[1] & 0x7F, False))
        return data[:2] + seq.to_bytes(2, "big") + data[4:]

    def current_timestamp(self) -> int:
        """The audio clock now, in the stream's RTP units (from the last audio packet sent)."""
        if self.last_timestamp is None or self.last_timestamp_at is None:
            return random.getrandbits(32)
        elapsed = time.monotonic() - self.last_timestamp_at
        return (self.last_timestamp + round(elapsed * self.audio_rate)) & 0xFFFFFFFF

    async def inject(self, payload_type: int, timestamp: int, marker: bool, payload: bytes) -> None:
        """Send one packet on the audio SSRC with the next sequence number."""
        if self._send is None or self.ssrc is None or self._next_seq is None:
            raise ConnectionError("no RTP has been sent yet: nothing to join")
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFFFF
        if self.recording:
            self.sent.append((seq, payload_type, True))
        await self._send(dtmf.rtp_packet(payload_type, seq, timestamp, self.ssrc, marker, payload))


class DigitTap:
    """Collects the telephone events of ``payload_type`` arriving on a DTLS transport (a business's side)."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self.collector = dtmf.DigitCollector()

    def install(self, transport: RTCDtlsTransport) -> None:
        handle: Callable[[bytes, int], Awaitable[None]] = transport._handle_rtp_data

        async def tapped(data: bytes, arrival_time_ms: int) -> None:
            if len(data) > 1 and data[1] & 0x7F == self.payload_type:
                with contextlib.suppress(ValueError):
                    self.collector.packet(dtmf.parse_rtp(data))
            await handle(data, arrival_time_ms)

        transport._handle_rtp_data = tapped  # type: ignore[method-assign]

    @property
    def digits(self) -> str:
        return self.collector.digits


async def press(
    stream: RtpStream,
    digits: str,
    payload_type: int,
    *,
    tone_seconds: float = 0.2,
    gap_seconds: float = 0.1,
) -> None:
    """Press ``digits`` one after the other, as RFC 4733 packets on ``stream`` (see :mod:`simulator.dtmf`)."""
    loop = asyncio.get_running_loop()
    for digit in dtmf.parse_digits(digits):
        timestamp = stream.current_timestamp()
        start = loop.time()
        for packet in dtmf.plan_press(dtmf.EVENTS[digit], tone_seconds):
            delay = start + packet.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the phone's own pacing: this is the keypad's timing
            await stream.inject(payload_type, timestamp, packet.marker, packet.payload())
        await asyncio.sleep(gap_seconds)
