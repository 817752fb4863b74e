"""The WhatsApp user's phone in one call: a real aiortc peer that looks like Meta's side of the media.

It offers (a user calling the business) or answers (the business calling the user) with SDP shaped like Meta's
(:func:`simulator.sdp.meta_offer` / :func:`simulator.sdp.meta_answer`: ICE-lite, Opus 111 with the 16 kHz cap,
telephone-event 126, one SHA-256 fingerprint, CRLF). Once the call is accepted it plays the test signal of
:mod:`simulator.signal` in real time and records what it hears, so :meth:`Phone.audio_report` can tell whether
the business echoed it back intact and how long the round trip took. Like a real phone it hangs up on silence:
:meth:`Phone.run_media` returns ``"no_media"`` when nothing was heard within ``start_silence_seconds`` of the
accept, ``"media_timeout"`` after ``midcall_silence_seconds`` of silence later on.

Known private seam (aiortc 1.16, ``rtcpeerconnection.py``): aiortc makes whoever sets a local *offer* the
ICE-controlling agent, but Meta's side is ICE-lite and always controlled. :func:`make_ice_controlled` marks
the offer's ICE transport controlled (``RTCIceTransport._connection.ice_controlling = False``) and settled
(``_role_set = True``) before ``setLocalDescription``. The answering business sees ``a=ice-lite`` and makes
itself controlling, as it must with Meta. The phone's agent still runs full ICE checks, which a controlling
peer accepts.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from simulator import dtmf
from simulator import sdp as sdp_edit
from simulator.errors import SimulatorError
from simulator.heard import HeardLog, HeardReport
from simulator.journal import Changes
from simulator.net import NetProfile
from simulator.signal import (
    FRAME_SECONDS,
    SEND_RATE,
    AudioReport,
    Recording,
    TestSignal,
    analyse,
    downsample_48k_to_16k,
)
from simulator.wiretap import InboundTap, NetHook, RtpStream, press

SAMPLES_PER_FRAME = round(SEND_RATE * FRAME_SECONDS)
# What aiortc raises on an SDP it cannot apply (its parser lets plain ValueError/KeyError/IndexError out too).
_AIORTC_SDP_ERRORS = (
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
    ValueError,
    KeyError,
    IndexError,
)
NO_MEDIA = "no_media"
MEDIA_TIMEOUT = "media_timeout"


@dataclass(frozen=True, slots=True)
class PhoneSettings:
    start_silence_seconds: float = 20.0
    midcall_silence_seconds: float = 30.0
    record_seconds: float = 10.0
    signal_seed: int = 1
    net: NetProfile = field(default_factory=NetProfile)  # the phone's network, each direction (simulator.net)
    net_seed: int | None = None  # None: different losses every call


def make_ice_controlled(sender: RTCRtpSender) -> None:
    """Make the ICE agent behind ``sender`` the controlled one before the offer is set (see module doc)."""
    ice_transport = sender.transport.transport
    ice_transport._connection.ice_controlling = False
    ice_transport._role_set = True


class MediaError(SimulatorError):
    """The phone's peer connection could not apply an SDP."""


class DtmfUnavailable(SimulatorError):
    """The phone cannot press keys: no telephone-event negotiated, or no audio flowing yet."""


class SignalTrack(MediaStreamTrack):
    """Plays the test signal in real time from the moment the call is accepted; silent (blocked) before."""

    kind = "audio"

    def __init__(self, signal: TestSignal, talking: asyncio.Event, heard: HeardLog) -> None:
        super().__init__()
        self._signal = signal
        self._talking = talking
        self._heard = heard
        self._start: float | None = None
        self._next_sample = 0
        self.sent_times: list[float] = []  # monotonic time each frame was handed to the encoder

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._talking.wait()
        if self._start is None:
            self._start = time.monotonic()
        # Pace like a microphone: frame k is due at start + k * 20 ms.
        wait = self._start + self._next_sample / SEND_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = self._signal.render(self._next_sample, SAMPLES_PER_FRAME, SEND_RATE)
        pcm = np.round(samples * 32767).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SEND_RATE
        frame.pts = self._next_sample
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self._next_sample += SAMPLES_PER_FRAME
        self.sent_times.append(time.monotonic())
        self._heard.microphone(len(self.sent_times) - 1, samples)  # dated when its packet leaves
        return frame


class _Ears:
    """What the phone heard: 16 kHz samples (up to a limit), frame arrival times, the last arrival."""

    def __init__(self, limit_seconds: float) -> None:
        self._limit_frames = int(limit_seconds / FRAME_SECONDS)
        self.chunks: list[npt.NDArray[np.int16]] = []
        self.arrivals: list[float] = []
        self.frames = 0
        self.last_at: float | None = None
        self.changes = Changes()

    def hear(self, frame: AudioFrame) -> None:
        now = time.monotonic()
        self.frames += 1
        self.last_at = now
        if len(self.chunks) < self._limit_frames:
            channels = len(frame.layout.channels)
            pcm = frame.to_ndarray().reshape(-1, channels).mean(axis=1)
            self.chunks.append(np.round(downsample_48k_to_16k(pcm)).astype(np.int16))
            self.arrivals.append(now)
        self.changes.notify()

    def forget(self) -> None:
        self._limit_frames = 0
        self.chunks.clear()
        self.arrivals.clear()

    @property
    def seconds(self) -> float:
        return self.frames * FRAME_SECONDS


class Phone:
    """One call's user device. Use ``create_offer`` (user calls) or ``answer`` (business calls), then
    ``accept_answer`` / ``start_talking``; run ``run_media`` in a task; ``close`` when the call ends."""

    def __init__(self, settings: PhoneSettings, *, connects_media: bool = True) -> None:
        self._settings = settings
        # False: a phone whose network loses the media path. Meta's API still takes the business's answer,
        # but the phone never applies it, so it never runs ICE or DTLS with the business.
        self._connects_media = connects_media
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._signal = TestSignal(settings.signal_seed)
        self._talking = asyncio.Event()
        self._talking_since: float | None = None
        self._heard = HeardLog()
        self._track = SignalTrack(self._signal, self._talking, self._heard)
        self.net = NetHook(settings.net, settings.net_seed)  # .up / .down: each direction's Link and stats
        self.rtp = RtpStream()
        self.rtp.on_audio = self._heard.left_socket
        self._tap = InboundTap(self._heard, None)
        self._remote_sdp: str | None = None
        self._ears = _Ears(settings.record_seconds)
        self._remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self._connected = asyncio.Event()
        self._closed = False
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._remote.done():
            self._remote.set_result(track)

    def _on_state(self) -> None:
        if self._pc.connectionState == "connected":
            self._connected.set()

    # Signalling
    async def create_offer(self) -> str:
        """The user's offer for a call to the business, shaped like Meta's."""
        sender = self._pc.addTrack(self._track)
        make_ice_controlled(sender)
        self._install(sender)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return sdp_edit.meta_offer(self._pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the business's answer (from pre_accept): ICE and DTLS start now."""
        if not self._connects_media:
            return
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except _AIORTC_SDP_ERRORS as exc:
            raise MediaError(f"the answer could not be applied: {exc!r}") from exc
        self._remote_negotiated(sdp)

    async def answer(self, offer_sdp: str) -> str:
        """The phone's answer to a business's offer (a business-initiated call), shaped like Meta's."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except _AIORTC_SDP_ERRORS as exc:
            raise MediaError(f"the offer could not be applied: {exc!r}") from exc
        self._install(self._pc.addTrack(self._track))
        self._remote_negotiated(offer_sdp)
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        # Like a phone, it keeps the telephone-event the business offered (aiortc's own answer drops it).
        return sdp_edit.meta_answer(self._pc.localDescription.sdp, dtmf_pt=dtmf.telephone_event_pt(offer_sdp))

    def _install(self, sender: RTCRtpSender) -> None:
        """The phone's network, its ears at the socket and its keypad (:mod:`simulator.wiretap`)."""
        self.net.install(sender.transport.transport)
        self.rtp.install(sender.transport)
        self._tap.install(sender.transport)

    def _remote_negotiated(self, remote_sdp: str) -> None:
        self._remote_sdp = remote_sdp
        self._tap.opus_pt = dtmf.codec_pt(remote_sdp, "opus")

    @property
    def telephone_event_pt(self) -> int | None:
        """The telephone-event/8000 payload type the business negotiated, if it did."""
        return dtmf.telephone_event_pt(self._remote_sdp) if self._remote_sdp else None

    async def press(
        self,
        digits: str,
        *,
        tone_seconds: float = 0.2,
        gap_seconds: float = 0.1,
        payload_type: int | None = None,
    ) -> None:
        """Press ``digits`` (0-9 * # A-D) on the keypad: RFC 4733 packets on the audio stream, through the
        phone's network (:mod:`simulator.dtmf`). ``payload_type`` overrides the negotiated one (a business
        that dropped telephone-event from its SDP gets them anyway); returns once the last end packet left."""
        pt = payload_type if payload_type is not None else self.telephone_event_pt
        if pt is None:
            raise DtmfUnavailable("the business's SDP has no telephone-event/8000: it cannot receive digits")
        if self.rtp.ssrc is None:
            raise DtmfUnavailable("no audio has been sent yet (press once the call is answered)")
        await press(self.rtp, digits, pt, tone_seconds=tone_seconds, gap_seconds=gap_seconds)

    # Media
    def start_talking(self) -> None:
        if not self._talking.is_set():
            self._talking_since = time.monotonic()
            self._talking.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def ice_role(self) -> str | None:
        """``"controlled"`` as Meta's side always is (``"controlling"`` would mean the seam broke)."""
        transceivers = self._pc.getTransceivers()
        if not transceivers:
            return None
        role: str = transceivers[0].sender.transport.transport.role
        return role

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded wait is the API
        """True once ICE and DTLS are up, False if that takes longer than ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def run_media(self) -> str:
        """Record what is heard and watch for silence; returns why the phone gives up on the media."""
        async with asyncio.TaskGroup() as tg:
            recorder = tg.create_task(self._record())
            reason = await self._watch_silence()
            recorder.cancel()
        return reason

    async def _record(self) -> None:
        track = await self._remote
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, AudioFrame):
                self._ears.hear(frame)

    async def _watch_silence(self) -> str:
        await self._talking.wait()
        assert self._talking_since is not None
        while True:
            last = self._ears.last_at
            if last is None or last < self._talking_since:
                deadline, reason = self._talking_since + self._settings.start_silence_seconds, NO_MEDIA
            else:
                deadline, reason = last + self._settings.midcall_silence_seconds, MEDIA_TIMEOUT
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reason
            await asyncio.sleep(remaining)  # a timer to the deadline, re-armed if audio arrived meanwhile

    async def wait_heard(self, seconds: float, timeout: float | None) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until the phone has heard ``seconds`` of audio."""
        await self._ears.changes.wait_for(lambda: self._ears.seconds >= seconds, timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._track.stop()
        self.net.close()
        await self._pc.close()

    # Results
    @property
    def seconds_heard(self) -> float:
        return self._ears.seconds

    @property
    def frames_sent(self) -> int:
        return len(self._track.sent_times)

    def recording(self) -> Recording:
        ears = self._ears
        heard = np.concatenate(ears.chunks) if ears.chunks else np.zeros(0, dtype=np.int16)
        ends = np.cumsum([len(chunk) for chunk in ears.chunks], dtype=np.int64)
        return Recording(
            sent_times=np.asarray(self._track.sent_times, dtype=np.float64),
            heard=(heard / 32768.0).astype(np.float32),
            heard_ends=ends,
            heard_times=np.asarray(ears.arrivals, dtype=np.float64),
        )

    def heard_report(self) -> HeardReport:
        """What reached the phone's socket: the echo's delay per burst, gaps, MOS (:mod:`simulator.heard`)."""
        up = self.net.up.stats
        return self._heard.report(upstream_loss=up.lost / up.datagrams if up.datagrams else 0.0)

    @property
    def heard_log(self) -> HeardLog:
        """The raw onsets and packets behind :meth:`heard_report` (benches slice it by time)."""
        return self._heard

    def audio_report(self) -> AudioReport:
        """Did the phone hear its own signal back (an echo), and with what round trip."""
        return analyse(self._signal, self.recording())

    def forget_audio(self) -> None:
        """Drop what was recorded and stop recording (a long scenario keeps only each call's report)."""
        self._ears.forget()
