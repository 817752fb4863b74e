"""The one seam into aiortc's receive path: a call's decrypted RTP packets, before aiortc's jitter buffer.

aiortc has no public way to receive encoded packets (maintainers declined it, aiortc #136, #449). Its own path
(``RTCRtpReceiver._handle_rtp_packet`` -> a fixed ``JitterBuffer(capacity=16, prefetch=4)`` -> a decoder
thread per receiver -> ``run_coroutine_threadsafe`` back to the loop) adds 80-300 ms of delay that ratchets
after a loss, and costs most of a call's CPU (aiortc-notes.md, traps 5-7). :func:`install` takes one
receiver over *before* its ``receive()`` runs:

* ``receive()`` does what aiortc's does (codecs, RTX map, registration with the DTLS transport's RTP router,
  the RTCP task that sends receiver reports) but **never starts the decoder thread**;
* ``_handle_rtp_packet`` keeps aiortc's RTCP statistics (so receiver reports, ``getStats()`` and the
  remote's round-trip time stay right), then hands the packet to ``on_packet``, synchronously, and stops:
  no depayloading, no jitter buffer, no queue, no task;
* an RTCP BYE from the peer or the DTLS transport closing calls ``on_end`` (aiortc would have ended the
  remote track through its decoder thread).

On the send side, :class:`MarkerSeam` sets the RTP marker bit of the call's outbound audio as RFC 3551 means
it (the first packet of a talkspurt); aiortc's sender sets it on every audio packet.

This module is the only one in callhook that touches aiortc's private names. They are listed in
:data:`PRIVATE_API` and checked by ``tests/unit/test_media_seam.py`` against the installed aiortc, which
fails loudly when an aiortc release moves them. Written for and verified with aiortc 1.16
(pyproject pins ``aiortc>=1.16,<1.17``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtcpByePacket, RtpPacket, is_rtcp

from worker.media.forward import opus_samples

# What the seam relies on, per object: (attribute, kind). ``kind`` is "method", "async", "attr" (an instance
# attribute of a fresh receiver) or "class" (a module-level class).
PRIVATE_API: dict[str, tuple[tuple[str, str], ...]] = {
    "RTCRtpReceiver": (
        ("receive", "async"),
        ("stop", "async"),
        ("_handle_rtp_packet", "async"),
        ("_handle_rtcp_packet", "async"),
        ("_handle_disconnect", "method"),
        ("_run_rtcp", "async"),
        ("_enabled", "attr"),
        ("_track", "attr"),
        ("_RTCRtpReceiver__codecs", "attr"),
        ("_RTCRtpReceiver__rtx_ssrc", "attr"),
        ("_RTCRtpReceiver__remote_streams", "attr"),
        ("_RTCRtpReceiver__transport", "attr"),
        ("_RTCRtpReceiver__rtcp_task", "attr"),
        ("_RTCRtpReceiver__started", "attr"),
        ("_RTCRtpReceiver__decoder_thread", "attr"),
    ),
    "RTCRtpSender": (("_RTCRtpSender__rtt", "attr"), ("_ssrc", "attr")),
    "RTCDtlsTransport": (("_register_rtp_receiver", "method"), ("_send_rtp", "async")),
    "StreamStatistics": (
        ("add", "method"),
        ("packets_received", "attr"),
        ("packets_expected", "attr"),
        ("packets_lost", "attr"),
        ("jitter", "attr"),
        ("_clockrate", "attr"),
    ),
}


@dataclass(frozen=True, slots=True)
class RtcpFigures:
    """aiortc's RFC 3550 receiver statistics of a call's inbound stream(s), summed over its SSRCs."""

    received: int = 0
    expected: int = 0
    lost: int = 0
    jitter_seconds: float = 0.0  # interarrival jitter of the most recent SSRC


def round_trip_seconds(sender: RTCRtpSender) -> float | None:
    """The round-trip time aiortc's sender estimated from the phone's RTCP receiver reports (None yet)."""
    rtt = getattr(sender, "_RTCRtpSender__rtt", None)
    return None if rtt is None else max(0.0, float(rtt))


OnPacket = Callable[[RtpPacket, float], None]


class ReceiveSeam:
    """Takes one audio receiver over; see the module's docstring. Create it right after ``addTransceiver``.

    ``on_packet(packet, arrival)`` gets every RTP packet of a negotiated payload type (and of the codecs
    given to :meth:`accept`), with ``arrival`` the ``time.monotonic()`` when it was handled.
    ``on_end()`` is called at most once, when the peer sends RTCP BYE or the DTLS transport closes.
    """

    def __init__(self, receiver: RTCRtpReceiver, on_packet: OnPacket, on_end: Callable[[], None]) -> None:
        self._receiver = receiver
        self._on_packet = on_packet
        self._on_end = on_end
        self._ended = False
        self._extra: list[RTCRtpCodecParameters] = []
        self._codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        self._streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        self._time = time.monotonic  # not loop.time(): uvloop's is cached per loop iteration (playout.py)
        self._aiortc_rtcp = receiver._handle_rtcp_packet
        self._aiortc_disconnect = receiver._handle_disconnect
        # Instance attributes shadow the class's methods for this receiver only.
        receiver.receive = self._receive  # type: ignore[method-assign]
        receiver._handle_rtp_packet = self._handle_rtp_packet  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = self._handle_rtcp_packet  # type: ignore[method-assign]
        receiver._handle_disconnect = self._handle_disconnect  # type: ignore[method-assign]
        self.packets = 0
        self.unknown_payload_type = 0

    def accept(self, codec: RTCRtpCodecParameters) -> None:
        """Also route ``codec``'s payload type here (e.g. telephone-event, which aiortc cannot negotiate).

        Call before the remote description is applied (``receive()`` registers the payload types)."""
        self._extra.append(codec)

    @property
    def started(self) -> bool:
        return bool(self._receiver._RTCRtpReceiver__started)  # type: ignore[attr-defined]

    @property
    def decoder_thread_started(self) -> bool:
        """Always False for a receiver behind this seam (what the tests check)."""
        return self._receiver._RTCRtpReceiver__decoder_thread is not None  # type: ignore[attr-defined]

    def rtcp_statistics(self) -> RtcpFigures:
        """Packets received, expected and lost, and the interarrival jitter, as aiortc's RTCP reports them."""
        received = expected = lost = 0
        jitter_seconds = 0.0
        for stream in self._streams.values():
            if stream.max_seq is None:
                continue
            received += stream.packets_received
            expected += stream.packets_expected
            lost += stream.packets_lost
            jitter_seconds = stream.jitter / stream._clockrate
        return RtcpFigures(received, expected, max(0, lost), jitter_seconds)

    # ------------------------------------------------------------------------------ aiortc's hooks
    async def _receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """aiortc's ``RTCRtpReceiver.receive`` (1.16) without its decoder thread."""
        receiver = self._receiver
        if receiver._RTCRtpReceiver__started:  # type: ignore[attr-defined]
            return
        if self._extra:
            known = {c.payloadType for c in parameters.codecs}
            parameters.codecs = [*parameters.codecs, *(c for c in self._extra if c.payloadType not in known)]
        for codec in parameters.codecs:
            if codec.payloadType is not None:
                self._codecs[codec.payloadType] = codec
        rtx: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx[encoding.rtx.ssrc] = encoding.ssrc
        receiver._RTCRtpReceiver__transport._register_rtp_receiver(receiver, parameters)  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(receiver._run_rtcp())  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__started = True  # type: ignore[attr-defined]

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if not self._receiver._enabled:
            return
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            self.unknown_payload_type += 1
            return
        ssrc = packet.ssrc
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)  # RTCP receiver reports (loss, jitter, LSR/DLSR for the remote's RTT)
        self.packets += 1
        self._on_packet(packet, self._time())

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        await self._aiortc_rtcp(packet)
        if isinstance(packet, RtcpByePacket):
            self._end()

    def _handle_disconnect(self) -> None:
        self._aiortc_disconnect()
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_end()


class MarkerSeam:
    """The marker bit of one sender's outbound audio: set on the first packet of a talkspurt only.

    aiortc 1.16 marks every audio packet (``packet.marker = 1`` for a frame's last payload, and an audio frame
    has one). A receiver may take a marked packet for the start of a talkspurt and re-time its playout there
    (RFC 3551, 4.1). This seam wraps the sender's DTLS transport's ``_send_rtp`` (plain RTP, before SRTP)
    and sets the bit where the sender's timeline does not continue: the first packet, and a packet whose
    timestamp is not the previous one's plus its duration (a pause, a switch between forwarded and encoded
    audio; sequence numbers stay contiguous, so to the receiver any such gap *is* a pause). RTCP and other
    SSRCs pass untouched. :meth:`install` once the transport is the one media flows on (connected).
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._installed = False
        self._next_timestamp: int | None = None
        self.talkspurts = 0

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        transport = self._sender.transport
        original = transport._send_rtp
        ssrc = self._sender._ssrc

        async def _send_rtp(data: bytes) -> None:
            if not is_rtcp(data) and len(data) >= 12 and int.from_bytes(data[8:12]) == ssrc:
                data = self.mark(data)
            await original(data)

        transport._send_rtp = _send_rtp  # type: ignore[method-assign]

    def mark(self, data: bytes) -> bytes:
        """``data`` (one plain RTP packet) with its marker bit set or cleared (see the class docstring)."""
        timestamp = int.from_bytes(data[4:8])
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= offset + 4:  # header extensions: their length in 32-bit words
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4])
        talkspurt = timestamp != self._next_timestamp
        self._next_timestamp = (timestamp + opus_samples(data[offset : offset + 2])) % 0x1_0000_0000
        if talkspurt:
            self.talkspurts += 1
        marked = bool(data[1] & 0x80)
        if marked == talkspurt:
            return data
        return data[:1] + bytes([data[1] ^ 0x80]) + data[2:]
