"""One call's WebRTC media: an aiortc peer connection, audio both ways, and an inbound-silence watchdog.

A :class:`MediaSession` answers Meta's offer (or makes an offer for an outgoing call), reports when ICE and
DTLS are connected, hands the caller's audio to the app as 16-bit mono PCM at the rate the app asks for, and
sends the app's PCM as Opus. What it guarantees, and why:

* **No audio before accept.** The outbound track holds aiortc's sender until :meth:`start_sending`: the first
  media packet counts as "answered" on the phone, and Meta wants it only after ``accept`` returned 200.
* **Never silent on the wire.** Once started it sends a packet every 20 ms, silence when the app has nothing
  queued: the phone hangs up after 20 s without business audio.
* **Inbound is always drained** (aiortc-notes.md, trap 6), whether or not the app reads; frames the app is
  too slow for are dropped oldest first, never piled up.
* **Cheap per frame.** Opus packets are made here (:class:`worker.audio.OpusEncoder`) and handed to aiortc's
  sender ready to packetize, so aiortc neither re-encodes at 96 kb/s stereo in a thread pool nor computes an
  audio level in Python (traps 4, 7, 8). Inbound frames are resampled by PyAV only when the app reads them.
* **Bounded waits.** :meth:`wait_connected` has its own timeout (aiortc reports a failed check list only
  after ~63 s, trap 9); inbound silence for ``silence_timeout_seconds`` after connecting ends the media
  (:meth:`wait_ended` returns :attr:`EndReason.INBOUND_SILENCE`) so the call can be hung up.
* **Nothing outlives the call.** :meth:`close` (idempotent) cancels and awaits every task this object
  started and closes the peer connection, which stops aiortc's decoder thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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

from worker import audio, sdp
from worker.config import WorkerConfig
from worker.errors import CallhookError
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


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
    INBOUND_SILENCE = "inbound_silence"  # no audio frame from the caller for silence_timeout_seconds
    CONNECTION_FAILED = "connection_failed"  # ICE or DTLS failed (e.g. consent freshness lost)
    REMOTE_ENDED = "remote_ended"  # the peer ended its track (RTCP BYE) or closed DTLS
    MEDIA_ERROR = "media_error"  # one of this session's own tasks failed (a bug; logged with its traceback)
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
    frames_in: int
    frames_out: int
    inbound_frames_dropped: int
    packets_lost: int
    queued_seconds: float
    ended: EndReason | None


# ------------------------------------------------------------------------------------- outbound audio
class _OutboundAudio(MediaStreamTrack):
    """The business side's track: queued PCM (or silence) as Opus packets, one every 20 ms once started."""

    kind = "audio"
    # Behind schedule by more than this (a stalled loop), restart the schedule instead of bursting.
    _MAX_LATE_SECONDS = 0.2

    def __init__(self, settings: MediaSettings) -> None:
        super().__init__()
        self._encoder = audio.OpusEncoder(
            settings.send_sample_rate, settings.opus_bitrate, settings.opus_complexity
        )
        self.sample_rate = settings.send_sample_rate
        self._frame_bytes = self._encoder.frame_bytes
        self._high_water = audio.frame_bytes(self.sample_rate, settings.send_buffer_seconds)
        self._silence = audio.silence(self.sample_rate)
        self._buffer = bytearray()
        self._partial_waited = False
        self._next_at: float | None = None
        self.started = asyncio.Event()
        self.empty = asyncio.Event()
        self.empty.set()
        self.space = asyncio.Event()
        self.space.set()
        self.frames_sent = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if not self.started.is_set():
            await self.started.wait()
        await self._pace()
        packet = self._encoder.encode(self._take())
        self.frames_sent += 1
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
        """Wake everyone waiting on this track (the session is closing)."""
        self._buffer.clear()
        self.empty.set()
        self.space.set()

    @property
    def queued_bytes(self) -> int:
        return len(self._buffer)

    async def _pace(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._next_at is None or now - self._next_at > self._MAX_LATE_SECONDS:
            self._next_at = now
        elif self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at += audio.FRAME_SECONDS

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


class _Subscription:
    """One reader of inbound frames: a bounded buffer that drops its oldest frame when full."""

    def __init__(self, capacity: int) -> None:
        self._frames: deque[av.AudioFrame] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, frame: av.AudioFrame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> av.AudioFrame | None:
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()


# ------------------------------------------------------------------------------------------- session
class MediaSession:
    """The media of one call. Use as an async context manager, or call :meth:`close` (idempotent).

    Create it inside the running loop. ``on_ended`` (optional) is called once, synchronously, with the
    reason the media ended; :meth:`wait_ended` gives the same reason to whoever awaits it.
    """

    def __init__(
        self,
        settings: MediaSettings | None = None,
        *,
        metrics: WorkerMetrics | None = None,
        on_ended: Callable[[EndReason], None] | None = None,
    ) -> None:
        self._settings = settings or MediaSettings()
        self._metrics = metrics
        self._on_ended = on_ended
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self._settings)))
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._outbound = _OutboundAudio(self._settings)
        self._transceiver: RTCRtpTransceiver = self._pc.addTransceiver(self._outbound, direction="sendrecv")
        self._transceiver.setCodecPreferences(_opus_only())
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: set[_Subscription] = set()
        self._send_resamplers: dict[int, audio.Resampler] = {}
        # None once connected, or why the media ended first.
        self._connect_outcome: asyncio.Future[EndReason | None] = self._loop.create_future()
        self._ended = asyncio.Event()
        self._ended_reason: EndReason | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._reading = False
        self._watching = False
        self._offer_sdp: str | None = None
        self._frames_in = 0
        self._last_inbound_at = 0.0
        self._packets_lost = 0
        self._reported = {"in": 0, "out": 0, "lost": 0}

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
        self._start_reading()
        return answer

    async def offer(self) -> str:
        """An offer for an outgoing call (sha-256 only, CRLF); complete it with :meth:`apply_answer`."""
        self._check_open()
        await self._pc.setLocalDescription(await self._pc.createOffer())
        self._offer_sdp = sdp.prepare_offer(self._pc.localDescription.sdp)
        return self._offer_sdp

    async def apply_answer(self, answer_sdp: str) -> None:
        """Apply the callee's answer (from the ``connect`` webhook of a business-initiated call)."""
        self._check_open()
        if self._offer_sdp is None:
            raise MediaError("apply_answer() before offer()")
        await self._set_remote(answer_sdp, "answer")
        self._start_reading()

    async def _set_remote(self, text: str, kind: str) -> None:
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=text, type=kind))
        except (ValueError, IndexError, InternalError, InvalidAccessError, OperationError) as exc:
            # What aiortc's SDP parser and validation raise for a description it cannot use.
            raise UnusableSdp(f"cannot apply the remote {kind}: {exc}") from exc

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
        self._outbound.started.set()

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        """The caller's audio as 20 ms frames of mono 16-bit PCM at ``sample_rate``; ends with the media."""
        subscription = _Subscription(self._settings.inbound_queue_frames)
        if self._ended.is_set():
            return
        self._subscriptions.add(subscription)
        resampler = audio.Resampler(sample_rate)
        chunker = audio.Chunker(audio.frame_bytes(sample_rate))
        try:
            while (frame := await subscription.get()) is not None:
                for chunk in chunker.feed(resampler.frame(frame)):
                    yield chunk
        finally:
            self._subscriptions.discard(subscription)

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

    async def wait_played(self) -> None:
        """Return when everything queued has been sent, or the media ended."""
        if not self._ended.is_set():
            await self._outbound.empty.wait()

    # ----------------------------------------------------------------------------------- lifecycle
    @property
    def ended_reason(self) -> EndReason | None:
        return self._ended_reason

    async def wait_ended(self) -> EndReason:
        await self._ended.wait()
        assert self._ended_reason is not None
        return self._ended_reason

    def statistics(self) -> MediaStatistics:
        return MediaStatistics(
            connection_state=self._pc.connectionState,
            sending=self._outbound.started.is_set(),
            frames_in=self._frames_in,
            frames_out=self._outbound.frames_sent,
            inbound_frames_dropped=sum(s.dropped for s in self._subscriptions),
            packets_lost=self._packets_lost,
            queued_seconds=audio.duration_seconds(self._outbound.queued_bytes, self._outbound.sample_rate),
            ended=self._ended_reason,
        )

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            self._end(EndReason.CLOSED)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._refresh_packets_lost()
            self._report()
            await self._pc.close()
        finally:
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
        if not self._connect_outcome.done():
            self._connect_outcome.set_result(reason)
        self._outbound.release()
        for subscription in self._subscriptions:
            subscription.close()
        if reason is not EndReason.CLOSED:
            log.info("media ended", extra={"reason": reason.value})
        if self._on_ended is not None:
            try:
                self._on_ended(reason)
            except Exception:  # the owner's callback must not break aiortc's event dispatch
                log.exception("on_ended callback failed")

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = self._loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media task failed", exc_info=task.exception(), extra={"task": task.get_name()})
            self._end(EndReason.MEDIA_ERROR)

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("media connection state", extra={"state": state})
        if state == "connected":
            if not self._connect_outcome.done():
                self._connect_outcome.set_result(None)
            if not self._watching and not self._closing:
                self._watching = True
                self._last_inbound_at = self._loop.time()
                self._spawn(self._watch_inbound(), "media-watchdog")
                self._spawn(self._report_periodically(), "media-stats")
        elif state == "failed" and not self._closing:
            self._end(EndReason.CONNECTION_FAILED)
        elif state == "closed" and not self._closing:
            self._end(EndReason.REMOTE_ENDED)  # the peer closed DTLS

    def _start_reading(self) -> None:
        track = self._transceiver.receiver.track
        if self._reading or track is None:
            return
        self._reading = True
        self._spawn(self._read_inbound(track), "media-inbound")

    async def _read_inbound(self, track: MediaStreamTrack) -> None:
        loop = self._loop
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                if not self._closing:
                    self._end(EndReason.REMOTE_ENDED)
                return
            self._frames_in += 1
            self._last_inbound_at = loop.time()
            if self._subscriptions and isinstance(frame, av.AudioFrame):
                for subscription in self._subscriptions:
                    subscription.put(frame)

    async def _watch_inbound(self) -> None:
        # Sleeps until the moment silence would have lasted long enough; wakes about once per timeout.
        timeout = self._settings.silence_timeout_seconds
        while True:
            remaining = self._last_inbound_at + timeout - self._loop.time()
            if remaining <= 0:
                self._end(EndReason.INBOUND_SILENCE)
                return
            await asyncio.sleep(remaining)

    async def _report_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.stats_interval_seconds)
            await self._refresh_packets_lost()
            self._report()

    async def _refresh_packets_lost(self) -> None:
        stats = await self._transceiver.receiver.getStats()
        lost = sum(s.packetsLost for s in stats.values() if getattr(s, "type", "") == "inbound-rtp")
        self._packets_lost = max(self._packets_lost, lost)

    def _report(self) -> None:
        if self._metrics is None:
            return
        current = {"in": self._frames_in, "out": self._outbound.frames_sent, "lost": self._packets_lost}
        delta = {key: current[key] - self._reported[key] for key in current}
        self._reported = current
        if delta["in"] > 0:
            self._metrics.media_frames.labels("in").inc(delta["in"])
        if delta["out"] > 0:
            self._metrics.media_frames.labels("out").inc(delta["out"])
        if delta["lost"] > 0:
            self._metrics.media_packets_lost.inc(delta["lost"])


def _opus_only() -> list[Any]:
    """Opus alone: our outbound track produces Opus packets, so no other codec may be negotiated."""
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    return [c for c in codecs if c.mimeType.lower() == "audio/opus"]
