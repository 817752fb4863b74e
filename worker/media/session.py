"""One call's WebRTC media: aiortc for ICE, DTLS, SRTP and RTCP; callhook's own audio path after it.

A :class:`MediaSession` answers Meta's offer (or makes an offer for an outgoing call), reports when ICE and
DTLS are connected, hands the caller's audio to the app as 16-bit mono PCM at the rate the app asks for, and
sends the app's PCM as Opus. The audio path (docs/architecture.md, "Audio path"):

    SRTP -> seam (worker/media/seam.py: RTP packets before aiortc's jitter buffer; no decoder thread)
         -> telephone-event packets -> :attr:`MediaSession.on_telephone_event`
         -> jitter buffer (worker/media/jitter.py: adaptive, FEC/PLC, catches up, never ratchets)
         -> the worker's playout tick (worker/media/playout.py), every 20 ms for every call:
            one frame popped, decoded in the loop (worker/media/codec.py), queued for the app;
            20 ms of the app's audio encoded and handed to aiortc's sender ready to packetize.

What it guarantees, and why:

* **No audio before accept.** Nothing reaches aiortc's sender until :meth:`start_sending`: the first media
  packet counts as "answered" on the phone, and Meta wants it only after ``accept`` returned 200.
* **Never silent on the wire.** Once started it sends a packet every tick, silence when the app has nothing
  queued: the phone hangs up after 20 s without business audio.
* **Inbound is always drained** (aiortc-notes.md, trap 6): the tick pops one frame per call whether or not the
  app reads; frames the app is too slow for are dropped oldest first, never piled up, and never hold up the
  tick (other calls). Nothing is decoded for a call whose app does not read.
* **Cheap per frame.** No per-call tasks of ours, no per-packet wake-ups, no threads: a packet is parsed by
  aiortc and put into the jitter buffer; the tick does the rest (traps 4, 5, 7, 8).
* **Bounded waits.** :meth:`wait_connected` has its own timeout (aiortc reports a failed check list only
  after ~63 s, trap 9); no inbound RTP for ``silence_timeout_seconds`` after connecting ends the media
  (:meth:`wait_ended` returns :attr:`EndReason.INBOUND_SILENCE`) so the call can be hung up.
* **Forwarding without the codec.** A relay can take each inbound audio packet as it arrives
  (:attr:`on_audio_packet`) and give it to another session's :meth:`forward`, which sends it as it is, on this
  session's SSRC, sequence and timeline (worker/media/forward.py), while :meth:`set_forwarding` is on; off,
  the session encodes its own audio again on the same timeline.
* **Nothing outlives the call.** :meth:`close` (idempotent) takes the call off the playout clock, frees its
  decoder and closes the peer connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import Any, Self

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from worker import audio, sdp
from worker.config import WorkerConfig
from worker.errors import CallhookError
from worker.media.codec import OPUS_RATES, OpusDecoder
from worker.media.forward import SendTimeline
from worker.media.jitter import JitterBuffer, JitterSettings, Packet, Playout, PlayoutKind
from worker.media.playout import PlayoutClock, shared_clock
from worker.media.quality import CallQuality
from worker.media.seam import MarkerSeam, ReceiveSeam, round_trip_seconds
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

OPUS_CLOCK_RATE = 48000
_OPUS_TIME_BASE = Fraction(1, OPUS_CLOCK_RATE)
TELEPHONE_EVENT = "telephone-event"


# ------------------------------------------------------------------------------------------------ errors
class MediaError(CallhookError):
    """The call's media could not be set up or failed (belongs under CallhookError in worker/errors.py)."""


class UnusableSdp(MediaError):
    """The remote SDP cannot be answered or applied (no Opus, no sha-256 fingerprint, malformed)."""


class MediaConnectTimeout(MediaError):
    """ICE and DTLS did not connect within the time given to :meth:`MediaSession.wait_connected`."""


class MediaConnectFailed(MediaError):
    """The connection failed or the session ended before media connected."""


class EndReason(enum.Enum):
    INBOUND_SILENCE = "inbound_silence"  # no RTP from the caller for silence_timeout_seconds
    CONNECTION_FAILED = "connection_failed"  # ICE or DTLS failed (e.g. consent freshness lost)
    REMOTE_ENDED = "remote_ended"  # the peer ended its stream (RTCP BYE) or closed DTLS
    MEDIA_ERROR = "media_error"  # this session's audio failed (a bug; logged with its traceback)
    CLOSED = "closed"  # close() was called


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True, slots=True)
class MediaSettings:
    ice_servers: tuple[str, ...] = ()  # "stun:host:port", "turn:host:port?transport=udp"; none by default
    turn_username: str = ""
    turn_credential: str = field(default="", repr=False)
    silence_timeout_seconds: float = 10.0
    stats_interval_seconds: float = 5.0
    send_sample_rate: int = 16000  # what the Opus encoder is fed; Meta plays ~16 kHz audio
    opus_bitrate: int = 24000
    opus_complexity: int = 1  # libopus 0-10: ~50 us per 20 ms frame at 1, ~130 us at 5 (bench figures)
    send_buffer_seconds: float = 2.0  # send() waits while more than this is queued
    inbound_queue_frames: int = 50  # frames kept for an app that reads slowly (1 s), oldest dropped
    # A leg forwarding another leg's packets sends its own silence while they stop for longer than this.
    forward_fill_after_seconds: float = 0.2
    jitter: JitterSettings = field(default_factory=JitterSettings)

    @classmethod
    def from_config(cls, config: WorkerConfig) -> MediaSettings:
        return cls(
            ice_servers=config.ice_servers,
            turn_username=config.turn_username,
            turn_credential=config.turn_credential,
            silence_timeout_seconds=config.media_silence_timeout_seconds,
        )


def ice_servers(settings: MediaSettings) -> list[RTCIceServer]:
    """aiortc ICE servers from configuration strings; an empty list, never aiortc's Google STUN default."""
    servers = []
    for url in settings.ice_servers:
        if url.startswith(("turn:", "turns:")):
            servers.append(
                RTCIceServer(urls=url, username=settings.turn_username, credential=settings.turn_credential)
            )
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


@dataclass(frozen=True, slots=True)
class MediaStatistics:
    connection_state: str
    sending: bool
    frames_in: int  # frames played out to the call from its audio (received, FEC-rebuilt or concealed)
    frames_out: int  # packets sent: encoded here or forwarded from another leg
    inbound_frames_dropped: int  # frames an app was too slow for
    packets_lost: int  # inbound RTP never received (aiortc's RTCP receiver statistics)
    queued_seconds: float
    ended: EndReason | None
    packets_received: int = 0
    packets_expected: int = 0
    packets_late: int = 0  # arrived after their playout time: dropped by the jitter buffer
    frames_concealed: int = 0  # PLC frames
    frames_fec: int = 0  # frames rebuilt from the next packet's in-band FEC
    frames_caught_up: int = 0  # frames dropped by the jitter buffer to shrink its delay
    jitter_seconds: float = 0.0  # RFC 3550 interarrival jitter
    buffer_delay_seconds: float = 0.0  # the jitter buffer's playout delay at the last tick
    mean_buffer_delay_seconds: float = 0.0  # ... averaged over the call's played frames
    round_trip_seconds: float | None = None  # from RTCP (the phone's receiver reports), when known
    mos: float | None = None  # simplified E-model estimate (worker/media/quality.py)
    call_quality: CallQuality | None = None  # the summary the above come from
    frames_encoded: int = 0  # outbound frames this session's Opus encoder made
    frames_decoded: int = 0  # inbound frames its decoder made (decode, FEC or PLC)
    frames_forwarded: int = 0  # outbound packets forwarded as they came from another leg (no codec)
    forward_dropped: int = 0  # ... dropped instead: duplicates, too late (worker/media/forward.py)
    send_backlog_dropped: int = 0  # outbound packets dropped because aiortc's sender task was behind

    @property
    def loss_ratio(self) -> float:
        lost = self.packets_lost + self.packets_late
        return min(1.0, lost / self.packets_expected) if self.packets_expected > 0 else 0.0

    def quality(self) -> dict[str, float | int | None] | None:
        """The call's inbound media quality (:meth:`worker.media.quality.CallQuality.as_fields`), as it goes
        into ``call.ended`` and the call's final log line; None when no RTP arrived at all."""
        if self.call_quality is None or self.packets_received == 0:
            return None
        return self.call_quality.as_fields()


# ------------------------------------------------------------------------------------- outbound audio
class _Outbound:
    """The business side's audio: queued PCM (or silence), encoded 20 ms per tick once started; or, while
    :attr:`forwarding`, Opus packets from another leg, sent as they come (the tick encodes only to fill a
    source's silence longer than ``forward_fill_after_seconds``: the phone hangs up on a silent wire).
    Both kinds are stamped on one :class:`~worker.media.forward.SendTimeline`."""

    def __init__(self, settings: MediaSettings) -> None:
        self._encoder = audio.OpusEncoder(
            settings.send_sample_rate, settings.opus_bitrate, settings.opus_complexity
        )
        self.sample_rate = settings.send_sample_rate
        self._frame_bytes = self._encoder.frame_bytes
        self._high_water = audio.frame_bytes(self.sample_rate, settings.send_buffer_seconds)
        self._silence = audio.silence(self.sample_rate)
        self._buffer = bytearray()
        self._partial_waited = False
        self.started = False
        self.empty = asyncio.Event()
        self.empty.set()
        self.space = asyncio.Event()
        self.space.set()
        self.frames_sent = 0
        self.frames_encoded = 0
        self.frames_forwarded = 0
        self.timeline = SendTimeline()
        self.forwarding = False
        self._forwarded_at = 0.0
        self._fill_after = settings.forward_fill_after_seconds

    def next_packet(self, now: float) -> av.Packet[Any] | None:
        if not self.started:
            return None
        if self.forwarding:
            if now - self._forwarded_at < self._fill_after:
                return None
            pcm = self._silence
        else:
            pcm = self._take()
        packet = self._encoder.encode(pcm)
        packet.pts = self.timeline.encoded(now).pts
        self.frames_sent += 1
        self.frames_encoded += 1
        return packet

    def forward(self, source: Packet, now: float) -> av.Packet[Any] | None:
        """The packet to send for ``source`` (an Opus packet of another leg), None to drop it."""
        if not (self.started and self.forwarding):
            return None
        stamp = self.timeline.forwarded(source.ssrc, source.sequence, source.timestamp, source.payload, now)
        if stamp is None:
            return None
        self._forwarded_at = now
        packet = av.Packet(source.payload)
        packet.pts = stamp.pts
        packet.time_base = _OPUS_TIME_BASE
        self.frames_sent += 1
        self.frames_forwarded += 1
        return packet

    def enqueue(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._buffer += pcm
        self.empty.clear()
        if len(self._buffer) > self._high_water:
            self.space.clear()

    def clear(self) -> None:
        self._buffer.clear()
        self._drained()

    def release(self) -> None:
        """Wake everyone waiting on this audio (the session is ending)."""
        self._buffer.clear()
        self.empty.set()
        self.space.set()

    @property
    def queued_bytes(self) -> int:
        return len(self._buffer)

    def _take(self) -> bytes:
        size = self._frame_bytes
        buffer = self._buffer
        if len(buffer) >= size:
            chunk = bytes(buffer[:size])
            del buffer[:size]
            self._partial_waited = False
        elif buffer and self._partial_waited:
            # A tail shorter than a frame waited one tick for more: pad it rather than hold it forever.
            chunk = bytes(buffer) + bytes(size - len(buffer))
            buffer.clear()
            self._partial_waited = False
        else:
            self._partial_waited = bool(buffer)
            return self._silence
        self._drained()
        return chunk

    def _drained(self) -> None:
        if not self._buffer:
            self.empty.set()
        if len(self._buffer) <= self._high_water:
            self.space.set()


class _SenderTrack(MediaStreamTrack):
    """What aiortc's sender reads: the Opus packets the playout tick made, ready to packetize.

    The sender's own task waits in :meth:`recv` for the next tick; it never encodes (aiortc's encoder is
    48 kHz stereo 96 kb/s in a thread pool, traps 4 and 8) and never paces (the tick does)."""

    kind = "audio"
    BACKLOG = 3  # packets kept when the sender's task is behind (a stalled loop); older ones are dropped
    # Forwarded packets come in the bursts the network delivers (aiortc's DTLS task reads a burst without
    # yielding): keep a burst's worth (200 ms) for the far end's jitter buffer rather than drop it.
    FORWARD_BACKLOG = 10

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque[av.Packet[Any]] = deque()
        self._waiter: asyncio.Future[av.Packet[Any]] | None = None
        self.dropped = 0

    def deliver(self, packet: av.Packet[Any], backlog: int = BACKLOG) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(packet)
            return
        pending = self._pending
        while len(pending) >= backlog:
            pending.popleft()
            self.dropped += 1
        pending.append(packet)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pending:
            return self._pending.popleft()
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            packet: av.Packet[Any] = await waiter
            return packet
        finally:
            self._waiter = None

    def stop(self) -> None:
        super().stop()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(MediaStreamError())


# -------------------------------------------------------------------------------------- inbound audio
class _Subscription:
    """One reader of inbound PCM (at the decoder's rate): a bounded buffer that drops its oldest when full."""

    def __init__(self, capacity: int, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._frames: deque[bytes] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, pcm: bytes) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(pcm)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> bytes | None:
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()


def _decoder_rate(wanted: int) -> int:
    """Opus decodes straight to 8/12/16/24/48 kHz; any other rate is resampled from 48 kHz."""
    return wanted if wanted in OPUS_RATES else OPUS_CLOCK_RATE


# ------------------------------------------------------------------------------------------- session
class MediaSession:
    """The media of one call. Use as an async context manager, or call :meth:`close` (idempotent).

    Create it inside the running loop. ``on_ended`` (optional) is called once, synchronously, with the
    reason the media ended; :meth:`wait_ended` gives the same reason to whoever awaits it. ``clock`` is the
    worker's playout clock (by default the running loop's :func:`~worker.media.playout.shared_clock`).

    :attr:`on_telephone_event` (None by default): called, synchronously and in arrival order, with every RTP
    packet of the negotiated telephone-event payload type (RFC 4733 DTMF), as a :class:`jitter.Packet`. Those
    packets never enter the audio jitter buffer. Set it before the media connects; it must not block.

    :attr:`drop_inbound` (None by default): fault injection for tests and drills. Called with each inbound
    RTP packet's sequence number before anything else sees it; True drops the packet as if the network had
    lost it (aiortc's RTCP statistics still count it as received).

    :attr:`on_audio_packet` (None by default): called, synchronously and as it arrives (before the jitter
    buffer, which still gets it for the call's statistics), with every inbound audio packet: what a relay
    forwards to another session's :meth:`forward` without decoding it (worker/handoff/relay.py).
    """

    on_telephone_event: Callable[[Packet], None] | None
    drop_inbound: Callable[[int], bool] | None
    on_audio_packet: Callable[[Packet], None] | None

    def __init__(
        self,
        settings: MediaSettings | None = None,
        *,
        metrics: WorkerMetrics | None = None,
        on_ended: Callable[[EndReason], None] | None = None,
        clock: PlayoutClock | None = None,
    ) -> None:
        self._settings = settings = settings or MediaSettings()
        self._metrics = metrics
        self._on_ended = on_ended
        self._loop = asyncio.get_running_loop()
        self._clock = clock or shared_clock(metrics)
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(settings)))
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._outbound = _Outbound(settings)
        self._track = _SenderTrack()
        self._transceiver: RTCRtpTransceiver = self._pc.addTransceiver(self._track, direction="sendrecv")
        self._transceiver.setCodecPreferences(_opus_only())
        self._seam = ReceiveSeam(self._transceiver.receiver, self._on_packet, self._on_remote_end)
        self._marker = MarkerSeam(self._transceiver.sender)
        self._jitter = JitterBuffer(settings.jitter)
        self._decoder: OpusDecoder | None = None
        self._subscriptions: set[_Subscription] = set()
        self._send_resamplers: dict[int, audio.Resampler] = {}
        self.on_telephone_event = None
        self.drop_inbound = None
        self.on_audio_packet = None
        self._telephone_event_pt: int | None = None
        self._remote_opus_48k = False
        self._frames_decoded = 0
        # None once connected, or why the media ended first.
        self._connect_outcome: asyncio.Future[EndReason | None] = self._loop.create_future()
        self._ended = asyncio.Event()
        self._ended_reason: EndReason | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._ticking = False
        self._offer_sdp: str | None = None
        self._last_arrival = 0.0
        self._ticks = 0
        self._report_every = max(1, round(settings.stats_interval_seconds / 0.020))
        self._reported = dict.fromkeys(("in", "out", "lost", "late", "fec", "plc", "catch_up", "app"), 0)
        self._final: MediaStatistics | None = None
        self._dropped_by_gone = 0  # frames dropped for readers that are gone

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ signalling
    async def answer(self, offer_sdp: str) -> str:
        """Answer an incoming call's offer; returns the answer as WhatsApp wants it (see worker/sdp.py)."""
        self._check_open()
        problems = sdp.offer_problems(offer_sdp)
        if problems:
            raise UnusableSdp("cannot answer the offer: " + "; ".join(problems))
        await self._set_remote(offer_sdp, "offer")
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        answer = sdp.prepare_answer(self._pc.localDescription.sdp, offer_sdp)
        problems = sdp.answer_problems(answer)
        if problems:  # our bug, not the caller's: say so loudly
            raise MediaError("made an answer WhatsApp would refuse: " + "; ".join(problems))
        return answer

    async def offer(self) -> str:
        """An offer for an outgoing call (sha-256 only, CRLF); complete it with :meth:`apply_answer`."""
        self._check_open()
        await self._pc.setLocalDescription(await self._pc.createOffer())
        self._offer_sdp = sdp.prepare_offer(self._pc.localDescription.sdp)
        # The telephone-event payload type we offer (sdp.prepare_offer adds it) is routed to us even when the
        # callee's answer leaves it out: a phone may send its key presses anyway (decode leniently).
        self._route_telephone_events(self._offer_sdp)
        return self._offer_sdp

    async def apply_answer(self, answer_sdp: str) -> None:
        """Apply the callee's answer (from the ``connect`` webhook of a business-initiated call)."""
        self._check_open()
        if self._offer_sdp is None:
            raise MediaError("apply_answer() before offer()")
        await self._set_remote(answer_sdp, "answer")

    async def _set_remote(self, text: str, kind: str) -> None:
        self._route_telephone_events(text)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=text, type=kind))
        except (ValueError, IndexError, InternalError, InvalidAccessError, OperationError) as exc:
            # What aiortc's SDP parser and validation raise for a description it cannot use.
            raise UnusableSdp(f"cannot apply the remote {kind}: {exc}") from exc

    def _route_telephone_events(self, remote_sdp: str) -> None:
        """aiortc cannot negotiate telephone-event; the remote's payload type is routed to us by the seam."""
        try:
            facts = sdp.read_facts(remote_sdp)
        except ValueError:
            return  # aiortc's own parser reports the problem
        self._remote_opus_48k = any(
            c.name.lower() == "opus" and c.clock_rate == OPUS_CLOCK_RATE
            for media in facts.audio[:1]
            for c in media.codecs
        )
        for media in facts.audio[:1]:
            for codec in media.codecs:
                # The 8000 Hz one, as the answer keeps (a browser also offers telephone-event/48000).
                clock_ok = codec.clock_rate == sdp.TELEPHONE_EVENT_CLOCK_RATE
                if codec.name.lower() == TELEPHONE_EVENT and clock_ok and self._telephone_event_pt is None:
                    self._telephone_event_pt = codec.payload_type
                    self._seam.accept(
                        RTCRtpCodecParameters(
                            mimeType="audio/telephone-event",
                            clockRate=codec.clock_rate,
                            channels=1,
                            payloadType=codec.payload_type,
                        )
                    )

    @property
    def remote_sdp(self) -> str | None:
        """The remote description applied (Meta's offer or answer, a browser's offer), once there is one."""
        description = self._pc.remoteDescription
        return description.sdp if description is not None else None

    @property
    def opus_48k(self) -> bool:
        """The remote's description has Opus at 48000 Hz (RFC 7587's only form): its packets and ours are
        the same codec and clock, so a relay may forward them between legs as they are."""
        return self._remote_opus_48k

    @property
    def telephone_event_payload_type(self) -> int | None:
        """The remote's telephone-event payload type, when its SDP had one."""
        return self._telephone_event_pt

    async def wait_connected(self, timeout_seconds: float) -> None:
        """Return once ICE and DTLS are connected; raise MediaConnectTimeout/MediaConnectFailed otherwise."""
        try:
            async with asyncio.timeout(timeout_seconds):
                # shield: a timeout cancels this wait, not the outcome other waiters may share.
                failure = await asyncio.shield(self._connect_outcome)
        except TimeoutError:
            raise MediaConnectTimeout(f"media not connected after {timeout_seconds} s") from None
        if failure is not None:
            raise MediaConnectFailed(f"media ended before connecting: {failure.value}")

    # ----------------------------------------------------------------------------------------- audio
    def start_sending(self) -> None:
        """Let audio flow to the caller (call after ``accept`` returned 200). Idempotent."""
        self._outbound.started = True

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        """The caller's audio as 20 ms frames of mono 16-bit PCM at ``sample_rate``; ends with the media."""
        if self._ended.is_set():
            return
        if self._decoder is None:
            self._decoder = OpusDecoder(_decoder_rate(sample_rate))
        subscription = _Subscription(self._settings.inbound_queue_frames, self._decoder.sample_rate)
        self._subscriptions.add(subscription)
        resampler = audio.Resampler(sample_rate) if subscription.sample_rate != sample_rate else None
        chunker = audio.Chunker(audio.frame_bytes(sample_rate))
        try:
            while (pcm := await subscription.get()) is not None:
                if resampler is not None:
                    pcm = resampler.pcm(pcm, subscription.sample_rate)
                for chunk in chunker.feed(pcm):
                    yield chunk
        finally:
            self._subscriptions.discard(subscription)
            self._dropped_by_gone += subscription.dropped

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        """Queue mono 16-bit PCM for the caller; waits while more than ``send_buffer_seconds`` is queued.

        After the media ended the audio is dropped: nobody will hear it.
        """
        if self._ended.is_set():
            return
        if sample_rate != self._outbound.sample_rate:
            resampler = self._send_resamplers.get(sample_rate)
            if resampler is None:
                resampler = self._send_resamplers[sample_rate] = audio.Resampler(self._outbound.sample_rate)
            pcm = resampler.pcm(pcm, sample_rate)
        self._outbound.enqueue(pcm)
        if not self._outbound.space.is_set():
            await self._outbound.space.wait()

    def clear(self) -> None:
        """Drop every queued outbound sample (barge-in)."""
        self._outbound.clear()

    @property
    def forwarding(self) -> bool:
        return self._outbound.forwarding

    def set_forwarding(self, on: bool) -> None:
        """On: this session sends the Opus packets given to :meth:`forward` (and encodes nothing of its own
        unless they stop coming); off: it encodes its queued audio again. Either way the receiver sees one
        timeline with this session's SSRC, sequence and timestamps (worker/media/forward.py)."""
        self._outbound.forwarding = on

    def forward(self, packet: Packet) -> None:
        """Send another leg's Opus packet as it is, now (not on the tick): while :attr:`forwarding` and
        started; otherwise, or when it is a duplicate or too late, it is dropped."""
        if self._ended.is_set():
            return
        out = self._outbound.forward(packet, time.monotonic())
        if out is not None:
            self._track.deliver(out, _SenderTrack.FORWARD_BACKLOG)

    async def wait_played(self) -> None:
        """Return when everything queued has been sent, or the media ended."""
        if not self._ended.is_set():
            await self._outbound.empty.wait()

    # ------------------------------------------------------------------------------- the playout tick
    def tick(self, now: float) -> None:
        """One 20 ms step of the receive side, from the worker's playout clock (worker/media/playout.py)."""
        if now - self._last_arrival > self._settings.silence_timeout_seconds:
            self._end(EndReason.INBOUND_SILENCE)
            return
        playout = self._jitter.pop(now)
        if playout.samples and self._subscriptions:  # samples == 0: a long frame still covers this tick
            pcm = self._decode(playout)
            for subscription in self._subscriptions:
                subscription.put(pcm)
        self._ticks += 1
        if self._ticks % self._report_every == 0:
            self._report()

    def tick_send(self) -> None:
        """The tick's send side: 20 ms of the app's audio (or silence) encoded for aiortc's sender."""
        packet = self._outbound.next_packet(time.monotonic())
        if packet is not None:
            self._track.deliver(packet)

    def tick_failed(self, error: BaseException) -> None:
        self._ticking = False
        self._end(EndReason.MEDIA_ERROR)

    def _decode(self, playout: Playout) -> bytes:
        decoder = self._decoder
        assert decoder is not None  # created with the first subscription
        kind = playout.kind
        samples = playout.samples * decoder.sample_rate // OPUS_CLOCK_RATE
        if kind is PlayoutKind.SILENCE:
            return bytes(2 * samples)
        self._frames_decoded += 1
        if kind is PlayoutKind.AUDIO and playout.payload is not None:
            return decoder.decode(playout.payload)
        if kind is PlayoutKind.FEC and playout.payload is not None:
            return decoder.decode_fec(playout.payload, samples)
        if kind is PlayoutKind.CONCEAL:
            return decoder.conceal(samples)
        return bytes(2 * samples)

    def _on_packet(self, rtp: RtpPacket, arrival: float) -> None:
        """Every RTP packet of the call, from the seam (aiortc's DTLS receive task), before any buffering."""
        if self.drop_inbound is not None and self.drop_inbound(rtp.sequence_number):
            return
        self._last_arrival = arrival
        packet = Packet(
            sequence=rtp.sequence_number,
            timestamp=rtp.timestamp,
            ssrc=rtp.ssrc,
            marker=bool(rtp.marker),
            payload=rtp.payload,
            arrival=arrival,
        )
        if rtp.payload_type == self._telephone_event_pt:
            # Numbered in the audio's sequence (RFC 4733): the jitter buffer must not take it for lost audio.
            self._jitter.skip(packet)
            callback = self.on_telephone_event
            if callback is not None:
                callback(packet)
            return
        forward = self.on_audio_packet
        if forward is not None:
            try:
                forward(packet)
            except Exception:  # a relay's bug must not stop this leg's own audio (aiortc's receive task)
                self.on_audio_packet = None
                log.exception("forwarding an inbound packet failed: forwarding stops")
        self._jitter.put(packet)

    def _on_remote_end(self) -> None:
        if not self._closing:
            self._end(EndReason.REMOTE_ENDED)

    # ----------------------------------------------------------------------------------- lifecycle
    @property
    def ended_reason(self) -> EndReason | None:
        return self._ended_reason

    async def wait_ended(self) -> EndReason:
        await self._ended.wait()
        assert self._ended_reason is not None
        return self._ended_reason

    def statistics(self) -> MediaStatistics:
        """Live figures (the final ones once closed)."""
        if self._final is not None:
            return self._final
        buffer = self._jitter.statistics()
        round_trip = self._round_trip_seconds()
        quality = CallQuality.from_statistics(buffer, round_trip)
        return MediaStatistics(
            connection_state=self._pc.connectionState,
            sending=self._outbound.started,
            frames_in=buffer.frames_played + buffer.frames_fec + buffer.frames_concealed,
            frames_out=self._outbound.frames_sent,
            inbound_frames_dropped=self._dropped_by_gone + sum(s.dropped for s in self._subscriptions),
            packets_lost=buffer.packets_lost,
            queued_seconds=audio.duration_seconds(self._outbound.queued_bytes, self._outbound.sample_rate),
            ended=self._ended_reason,
            packets_received=buffer.packets_received,
            packets_expected=buffer.packets_expected,
            packets_late=buffer.packets_late,
            frames_concealed=buffer.frames_concealed,
            frames_fec=buffer.frames_fec,
            frames_caught_up=buffer.frames_dropped,
            jitter_seconds=buffer.interarrival_jitter_seconds,
            buffer_delay_seconds=buffer.buffer_delay_seconds,
            mean_buffer_delay_seconds=buffer.mean_buffer_delay_seconds,
            round_trip_seconds=round_trip,
            mos=quality.mos,
            call_quality=quality,
            frames_encoded=self._outbound.frames_encoded,
            frames_decoded=self._frames_decoded,
            frames_forwarded=self._outbound.frames_forwarded,
            forward_dropped=self._outbound.timeline.dropped_packets,
            send_backlog_dropped=self._track.dropped,
        )

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            self._end(EndReason.CLOSED)
            self._report()
            self._final = self.statistics()
            if self._metrics is not None and self._final.packets_received > 0:
                _observe_quality(self._metrics, self._final)
            await self._pc.close()
        finally:
            if self._decoder is not None:
                self._decoder.close()
            self._closed.set()

    # ------------------------------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closing:
            raise MediaError("media session is closed")

    def _end(self, reason: EndReason) -> None:
        if self._ended_reason is not None:
            return
        self._ended_reason = reason
        self._ended.set()
        self._clock.discard(self)
        self._ticking = False
        if not self._connect_outcome.done():
            self._connect_outcome.set_result(reason)
        self._outbound.release()
        for subscription in self._subscriptions:
            subscription.close()
        if reason is EndReason.MEDIA_ERROR:
            log.error("media failed", extra={"reason": reason.value})
        elif reason is not EndReason.CLOSED:
            log.info("media ended", extra={"reason": reason.value})
        if self._on_ended is not None:
            try:
                self._on_ended(reason)
            except Exception:  # the owner's callback must not break aiortc's event dispatch
                log.exception("on_ended callback failed")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("media connection state", extra={"state": state})
        if state == "connected":
            if not self._connect_outcome.done():
                self._connect_outcome.set_result(None)
            if not self._ticking and not self._closing and self._ended_reason is None:
                self._marker.install()
                self._ticking = True
                self._last_arrival = time.monotonic()
                self._clock.add(self)
        elif state == "failed" and not self._closing:
            self._end(EndReason.CONNECTION_FAILED)
        elif state == "closed" and not self._closing:
            self._end(EndReason.REMOTE_ENDED)  # the peer closed DTLS

    def _round_trip_seconds(self) -> float | None:
        return round_trip_seconds(self._transceiver.sender)

    def _report(self) -> None:
        if self._metrics is None:
            return
        metrics = self._metrics
        stats = self.statistics()
        current = {
            "in": stats.frames_in,
            "out": stats.frames_out,
            "lost": stats.packets_lost,
            "late": stats.packets_late,
            "fec": stats.frames_fec,
            "plc": stats.frames_concealed,
            "catch_up": stats.frames_caught_up,
            "app": stats.inbound_frames_dropped,
        }
        delta = {key: current[key] - self._reported[key] for key in current}
        self._reported = current
        if delta["in"] > 0:
            metrics.media_frames.labels("in").inc(delta["in"])
        if delta["out"] > 0:
            metrics.media_frames.labels("out").inc(delta["out"])
        if delta["lost"] > 0:
            metrics.media_packets_lost.inc(delta["lost"])
        if delta["late"] > 0:
            metrics.media_late_packets.inc(delta["late"])
        if delta["fec"] > 0:
            metrics.media_concealed_frames.labels("fec").inc(delta["fec"])
        if delta["plc"] > 0:
            metrics.media_concealed_frames.labels("plc").inc(delta["plc"])
        if delta["catch_up"] > 0:
            metrics.media_dropped_frames.labels("catch_up").inc(delta["catch_up"])
        if delta["app"] > 0:
            metrics.media_dropped_frames.labels("app").inc(delta["app"])


def _observe_quality(metrics: WorkerMetrics, stats: MediaStatistics) -> None:
    """A call's media quality at its end, into the histograms (no call id: one observation per call)."""
    metrics.media_loss_ratio.observe(stats.loss_ratio)
    metrics.media_jitter.observe(stats.jitter_seconds)
    metrics.media_jitter_buffer_delay.observe(stats.mean_buffer_delay_seconds)
    if stats.round_trip_seconds is not None:
        metrics.media_round_trip.observe(stats.round_trip_seconds)
    if stats.mos is not None:
        metrics.media_mos.observe(stats.mos)


def _opus_only() -> list[Any]:
    """Opus alone: our outbound track produces Opus packets, so no other codec may be negotiated."""
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    return [c for c in codecs if c.mimeType.lower() == "audio/opus"]
