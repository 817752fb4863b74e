"""An adaptive jitter buffer for one call's received audio: pure, no clock of its own, tested without a loop.

Theory of operation
-------------------
Packets come in with :meth:`JitterBuffer.put` whenever the network delivers them; the worker's playout tick
calls :meth:`JitterBuffer.pop` once every 20 ms and gets exactly one :class:`Playout` back. All times are
arguments (``Packet.arrival``, ``pop(now)``, both on the same monotonic clock, e.g. ``loop.time()``), so the
same code runs under the real loop and in a test that simulates a minute of a lossy network in milliseconds.

*Delay is measured against the fastest packet.* Every packet gives ``d = arrival - timestamp / clock_rate``.
Over a sliding window (2 s) the smallest ``d`` is what the network does on a good day; a packet's *relative
delay* is how much later than that it arrived. The *target delay* is a high quantile (97 %) of the relative
delays in the window, clamped to ``min_target_delay``..``max_target_delay`` (libWebRTC's NetEQ sizes its
target the same way). On a clean link the relative delays are ~0, so the target is the floor (10 ms) and a
packet waits the floor plus the phase of the tick (0-20 ms): about one frame. (Settings are in seconds.)

*The floor is a trade-off, measured.* The playout delay sits anywhere in floor..floor+20 ms, depending on
where the tick falls in the sender's 20 ms. A busy machine now and then handles a single packet 10-20 ms late,
too rarely for the 97 % quantile to see; at the phases that put the delay below 20 ms such a packet arrives
after its turn (one PLC frame, one late packet). A one-frame floor (``min_target_delay=0.020``) covers it at
every phase (tested) but costs ~16 ms on a clean link: ``bench/media_latency.py`` measured clean 52 vs 36 ms
median, past the 50 ms the audio-path issue must show. It did not cure the echo checks that fail on a loaded
machine either: those calls see stalls of the *sending* side of 50-300 ms (the failing call's log: 288 ms
mean buffer delay, 367 ms RTT, 9 late and 19 concealed of 116), which no floor covers (simulated in the pure
buffer: 10 and 20 ms floors conceal the same frames under such stalls). So the floor stays 10 ms.

*Stalls are peaks, not jitter.* A link that stalls and then flushes its queue delivers a dozen packets at
once, with delays from the stall's length down to nothing. Packets arriving together (``burst_gap``) count
as one sample, with the largest delay, so one stall does not fill the window and raise the target for
seconds. A delay that far above the quantile (``peak_margin``) is a *peak*; once two peaks fall within
``peak_memory`` (10 s) the stalls recur, and the target covers the lower of them until they stop (the peak
detector of older NetEQ versions). One stall costs a few concealed frames; a stalling link costs delay.

*The playout delay* ``D`` of the sample at the play position is ``now`` minus the time that sample would have
arrived over the fastest path. A packet with relative delay ``r`` is in the buffer when its turn comes iff
``D >= r``, so holding ``D`` at the target makes 97 % of the packets arrive in time. The buffer steers ``D``:

* ``D`` rises only when it must: when the next frame is missing and ``D`` is below the target, the tick
  plays a concealment frame *without* consuming the missing frame's slot (it may still come). No audio is
  ever stretched while audio is there.
* ``D`` falls by dropping frames when it exceeds the target by a frame or more (after a burst, a stalled
  tick, a clock drift): silent frames first (DTX, an Opus packet of <= 3 bytes, or ``Packet.silent``),
  anywhere in the buffer; speech only after ``catch_up_patience_ticks`` ticks with no silence to drop;
  everything older than the target at once when ``D`` passes ``max_delay``. Because the buffer can always
  shed what it does not need, a loss or a burst cannot ratchet the delay up for the rest of the call
  (aiortc #543).

States, as a table (``pop`` decides, ``put`` only stores and measures)::

    WAITING --(a packet is due: D(its timestamp) >= target; older ones dropped)--> PLAYING
    PLAYING --(next frame here, timestamps continue)-----------------------------> PLAYING, AUDIO
    PLAYING --(next frame missing, D < target)-----------------------------------> PLAYING, CONCEAL (wait)
    PLAYING --(next frame lost, the packet after it here)------------------------> PLAYING, FEC from it
    PLAYING --(next frame lost, no packet after it yet)--------------------------> PLAYING, CONCEAL
    PLAYING --(max_conceal_frames concealed with an empty buffer: a stall)-------> WAITING, SILENCE
    PLAYING --(the buffer is empty after a silent (DTX) frame: the phone is quiet)--> WAITING, SILENCE
    PLAYING --(the buffer is empty, the next number was a telephone event: a key press)--> WAITING, SILENCE
    PLAYING --(a timestamp gap with no audio packet missing, or a hole longer than PLC
               covers: a new talkspurt)------------------------------------------> WAITING (timed afresh)
    PLAYING --(D > max_delay: the tick stalled)----------------------------------> WAITING (resync at once)
    any     --(new SSRC, a sequence jump > max_dropout, a timeline jump)---------> WAITING, stream reset

*Other payloads share the sequence.* An RFC 4733 telephone event (a keypad press) is sent on the audio's SSRC
and numbered in the audio's RTP sequence (RFC 4733; RFC 3550: one sequence per SSRC), between the audio
packets or instead of them while the key is held. The media session routes those packets elsewhere and tells
the buffer about each one with :meth:`JitterBuffer.skip`: its sequence number is then not a lost audio packet
(not counted in ``packets_expected``/``packets_lost``, so it does not lower the MOS), a hole made only of such
numbers is not a frame to conceal or to wait for (a timestamp gap across it is a pause, as in DTX: SILENCE,
then the audio is timed afresh), and an empty buffer right after one means the audio paused for the event, not
that it is late (the cost: an audio packet lost just after an event plays as one frame of silence, not PLC;
and an event packet the network lost still counts as a lost packet: nothing says it was not audio). Loss stays
detected by sequence number, not by timestamp: timestamps jump legitimately (DTX, talkspurts, events replacing
audio), so only the sequence tells a lost packet from one never sent; the buffer just has to know which
numbers were not audio. (aiortc's RTCP receiver reports count every packet of the SSRC, events included, as
RFC 3550 wants: they stay right on their own.)

The play position is a timestamp: PLC over an empty buffer uses up time, not sequence numbers, so a packet is
late when its timestamp is behind the play position (or its sequence number behind the last one played).

A frame longer than a tick (40/60 ms Opus packets) is returned once with its ``samples``; the ticks it covers
then return :data:`HELD`, ``Playout(SILENCE, samples=0)``: nothing new, the previous frame covers this tick.
Frames shorter than a tick (10 ms packets) are not supported: each tick plays one packet.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "HELD",
    "InterarrivalJitter",
    "JitterBuffer",
    "JitterSettings",
    "JitterStatistics",
    "Packet",
    "Playout",
    "PlayoutKind",
    "opus_packet_samples",
]

OPUS_MAX_SAMPLES_48K = 5760  # 120 ms: the longest Opus packet (RFC 6716 3.2.5)
SILENT_PAYLOAD_BYTES = 3  # an Opus packet this small carries no audio (DTX, RFC 6716 3.2.1 / 2.1.9)


@dataclass(frozen=True, slots=True)
class Packet:
    """One received RTP packet of the call, already decrypted."""

    sequence: int  # 16-bit RTP sequence number
    timestamp: int  # 32-bit RTP timestamp
    ssrc: int
    marker: bool  # a talkspurt starts; timing follows the timestamps, which say the same
    payload: bytes  # the Opus payload (or a telephone-event payload: the DTMF decoder reuses this type)
    arrival: float  # seconds on the injected monotonic clock
    silent: bool = False  # a hint from the sender side that the frame is silence (droppable first)


class PlayoutKind(enum.Enum):
    AUDIO = "audio"  # decode `payload`
    FEC = "fec"  # the frame was lost but the next packet is here: decode `payload` with Opus in-band FEC
    CONCEAL = "conceal"  # lost and no next packet (or it may still come): the decoder's PLC
    SILENCE = "silence"  # nothing to play: not started, after a stall, between talkspurts (no PLC forever)


@dataclass(frozen=True, slots=True)
class Playout:
    kind: PlayoutKind
    payload: bytes | None = None
    samples: int = 960  # samples at 48 kHz this frame covers; 0: the previous (long) frame covers this tick


HELD = Playout(PlayoutKind.SILENCE, None, 0)


@dataclass(frozen=True, slots=True)
class JitterSettings:
    clock_rate: int = 48000  # RTP clock of the payload (Opus: always 48000)
    frame_samples: int = 960  # one playout tick, in RTP clock units (20 ms)
    min_target_delay: float = 0.010  # seconds: floor of the target (scheduling noise of both ends)
    max_target_delay: float = 0.300  # seconds: a link worse than this gets concealment, not more delay
    max_delay: float = 0.500  # seconds: beyond this the buffer resyncs at once (a stalled tick)
    delay_quantile: float = 0.97  # share of packets that should arrive before their playout time
    delay_window: float = 2.0  # seconds of arrivals the target is computed from
    burst_gap: float = 0.002  # seconds: packets arriving this close together count as one delay sample
    peak_margin: float = 0.040  # seconds above the quantile: a delay this far out is a peak (a stall)
    peak_memory: float = 10.0  # seconds: two peaks within this raise the target to cover them (NetEQ-style)
    retarget_every: int = 5  # packets between recomputations of the quantile (sorting is the cost)
    capacity_packets: int = 64  # packets held at most; the oldest go first
    max_conceal_frames: int = 5  # concealed frames in a row with an empty buffer before SILENCE (a stall)
    catch_up_patience_ticks: int = 5  # ticks over target without silence to drop before speech is dropped
    max_dropout: int = 3000  # a forward sequence jump beyond this is a new stream (RFC 3550 A.1)
    max_misorder: int = 100  # a packet this far behind the newest is from an old stream, dropped as late
    timeline_jump: float = 2.0  # seconds: a packet this far off the measured timeline restarts timing

    def __post_init__(self) -> None:
        if self.clock_rate <= 0 or self.frame_samples <= 0:
            raise ValueError("clock_rate and frame_samples must be positive")
        if not 0 <= self.min_target_delay <= self.max_target_delay:
            raise ValueError("need 0 <= min_target_delay <= max_target_delay")
        if self.max_delay < self.max_target_delay + 2 * self.frame_samples / self.clock_rate:
            raise ValueError("max_delay must exceed max_target_delay by two frames at least")
        if not 0 < self.delay_quantile <= 1:
            raise ValueError("delay_quantile must be in (0, 1]")
        if self.capacity_packets < 2 or self.max_conceal_frames < 1 or self.retarget_every < 1:
            raise ValueError("need capacity_packets >= 2, max_conceal_frames >= 1, retarget_every >= 1")

    @property
    def tick_seconds(self) -> float:
        return self.frame_samples / self.clock_rate


@dataclass(frozen=True, slots=True)
class JitterStatistics:
    """A snapshot; counters are cumulative over the call (across SSRC changes)."""

    packets_received: int = 0  # distinct packets that arrived (late ones included, duplicates not)
    packets_expected: int = 0  # from the sequence numbers (RFC 3550 A.3)
    packets_lost: int = 0  # expected - received: never arrived at all
    packets_late: int = 0  # arrived after their playout time: counted and dropped
    packets_duplicate: int = 0
    packets_reordered: int = 0  # arrived after a later one, still in time: put back in order
    frames_played: int = 0  # AUDIO
    frames_concealed: int = 0  # CONCEAL (the decoder's PLC)
    concealment_runs: int = 0  # runs of consecutive CONCEAL frames (their mean length tells bursts apart)
    frames_fec: int = 0  # FEC: recovered from the next packet
    frames_dropped: int = 0  # dropped to catch up (or because the buffer was full)
    frames_silent_dropped: int = 0  # of which silent
    frames_silence: int = 0  # SILENCE ticks (not started, stalled, between talkspurts)
    resyncs: int = 0  # stream resets: new SSRC, sequence or timeline jump
    interarrival_jitter_seconds: float = 0.0  # RFC 3550 6.4.1
    target_delay_seconds: float = 0.0
    buffer_delay_seconds: float = 0.0  # playout delay D at the last tick (0 while waiting)
    mean_buffer_delay_seconds: float = 0.0  # mean D over the ticks that played something
    packets_buffered: int = 0  # waiting for their turn now
    buffered_audio_seconds: float = 0.0  # the audio they hold


def opus_packet_samples(payload: bytes) -> int | None:
    """Samples at 48 kHz in an Opus packet, from its TOC byte (RFC 6716 3.1); None if it is malformed."""
    if not payload:
        return None
    toc = payload[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(payload) < 2:
        return None
    else:
        count = payload[1] & 0x3F
    total = frame * count
    return total if 0 < total <= OPUS_MAX_SAMPLES_48K else None


class InterarrivalJitter:
    """RFC 3550 6.4.1 interarrival jitter, in seconds: J += (|D(i-1, i)| - J) / 16, in arrival order."""

    __slots__ = ("_clock_rate", "_previous", "jitter_seconds")

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._previous: tuple[float, int] | None = None
        self.jitter_seconds = 0.0

    def update(self, arrival: float, timestamp: int) -> None:
        if self._previous is not None:
            previous_arrival, previous_timestamp = self._previous
            sent = (timestamp - previous_timestamp) / self._clock_rate
            transit_change = (arrival - previous_arrival) - sent
            self.jitter_seconds += (abs(transit_change) - self.jitter_seconds) / 16
        self._previous = (arrival, timestamp)

    def reset(self) -> None:
        self._previous = None


@dataclass(slots=True)
class _Counters:
    """The cumulative counters of :class:`JitterStatistics`, mutable while the call runs."""

    packets_received: int = 0
    packets_late: int = 0
    packets_duplicate: int = 0
    packets_reordered: int = 0
    frames_played: int = 0
    frames_concealed: int = 0
    concealment_runs: int = 0
    frames_fec: int = 0
    frames_dropped: int = 0
    frames_silent_dropped: int = 0
    frames_silence: int = 0
    resyncs: int = 0


class _State(enum.Enum):
    WAITING = "waiting"
    PLAYING = "playing"


@dataclass(slots=True)
class _Slot:
    """A buffered packet with its extended (unwrapped) numbers."""

    sequence: int
    timestamp: int
    samples: int  # RTP clock units this packet covers
    silent: bool
    packet: Packet
    dropped: bool = False  # marked for catch-up: skipped when the play position reaches it


def _unwrap(value: int, reference: int | None, bits: int) -> int:
    """The extended value nearest to `reference` whose low `bits` are `value`."""
    if reference is None:
        return value
    modulus = 1 << bits
    delta = (value - reference) % modulus
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta


@dataclass(slots=True)
class _DelayWindow:
    """Relative arrival delays over a sliding window: the minimum transit and a quantile above it."""

    span: float
    arrivals: deque[float] = field(default_factory=deque)
    transits: deque[float] = field(default_factory=deque)  # arrival - timestamp / clock rate
    minima: deque[tuple[float, float]] = field(default_factory=deque)  # monotonic: the window's minimum

    def add(self, arrival: float, transit: float, burst_gap: float) -> bool:
        """Measure one packet; False if it came with the previous one (one event, counted once)."""
        together = bool(self.arrivals) and abs(arrival - self.arrivals[-1]) <= burst_gap
        if together:
            # delivered with the previous packet: one sample with the larger delay (a burst after a stall
            # would otherwise fill the window with delays that recur only if the stall does: see peaks)
            self.transits[-1] = max(self.transits[-1], transit)
        else:
            self.arrivals.append(arrival)
            self.transits.append(transit)
        minima = self.minima
        while minima and minima[-1][1] >= transit:
            minima.pop()
        minima.append((arrival, transit))
        horizon = arrival - self.span
        while len(self.arrivals) > 1 and self.arrivals[0] < horizon:
            self.arrivals.popleft()
            self.transits.popleft()
        while len(minima) > 1 and minima[0][0] < horizon:
            minima.popleft()
        return not together

    @property
    def minimum(self) -> float | None:
        return self.minima[0][1] if self.minima else None

    def quantile(self, q: float) -> float:
        """The q-quantile of the relative delays (transit above the window's minimum), in seconds."""
        if not self.transits:
            return 0.0
        ordered = sorted(self.transits)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] - self.minima[0][1]

    def clear(self) -> None:
        self.arrivals.clear()
        self.transits.clear()
        self.minima.clear()

    def __len__(self) -> int:
        return len(self.transits)


class JitterBuffer:
    """One call's receive buffer; see the module docstring for how it decides."""

    def __init__(self, settings: JitterSettings = JitterSettings()) -> None:
        self._settings = settings
        self._tick = settings.frame_samples
        self._tolerance = settings.frame_samples // 2  # timestamps this close continue the timeline
        self._window = _DelayWindow(settings.delay_window)
        self._jitter = InterarrivalJitter(settings.clock_rate)
        self._counts = _Counters()
        self._expected_before = 0  # packets expected in streams before the last reset
        self._delay_sum = 0.0
        self._delay_ticks = 0
        self._target = settings.min_target_delay
        self._last_delay = 0.0
        self._last_kind = PlayoutKind.SILENCE
        self._ssrc: int | None = None
        self._previous_ssrc: int | None = None
        self._reset_stream()

    # -- the stream: sequence/timestamp extension, resets -------------------------------------------------

    def _reset_stream(self) -> None:
        self._wait(in_order=False)
        self._slots: list[_Slot] = []  # sorted by sequence
        self._first_seq: int | None = None
        self._highest_seq: int | None = None
        self._highest_ts: int | None = None
        self._next_seq: int | None = None  # the sequence number the play position is at
        self._play_ts = 0  # the timestamp the play position is at (once _next_seq is set)
        self._played: set[int] = set()
        self._foreign: set[int] = set()  # extended sequence numbers of this stream's non-audio packets
        self._foreign_count = 0  # of them, in first_seq..highest_seq (pruning the set keeps the count)
        self._held = 0  # RTP units of the last frame still covering coming ticks
        self._last_samples = self._tick
        self._concealed_in_row = 0
        self._last_played_silent = False
        self._over_target_ticks = 0
        self._since_retarget = 0
        self._quantile = 0.0  # of the relative delays in the window, at the last retarget
        self._peaks: deque[tuple[float, float]] = deque()  # (arrival, relative delay) of recent stalls
        self._window.clear()
        self._jitter.reset()

    def _restart(self) -> None:
        self._expected_before += self._expected_in_stream()
        self._counts.resyncs += 1
        self._reset_stream()

    def _expected_in_stream(self) -> int:
        if self._first_seq is None or self._highest_seq is None:
            return 0
        return self._highest_seq - self._first_seq + 1 - self._foreign_count

    # -- put: store and measure ---------------------------------------------------------------------------

    def put(self, packet: Packet) -> None:
        if packet.ssrc != self._ssrc:
            if packet.ssrc == self._previous_ssrc:  # a straggler of the stream we left
                self._counts.packets_late += 1
                return
            if self._ssrc is not None:
                self._restart()
            self._previous_ssrc, self._ssrc = self._ssrc, packet.ssrc
        sequence = _unwrap(packet.sequence, self._highest_seq, 16)
        if self._highest_seq is not None and sequence - self._highest_seq > self._settings.max_dropout:
            self._restart()
            sequence = packet.sequence
        if self._highest_seq is not None and self._highest_seq - sequence > self._settings.max_misorder:
            self._counts.packets_late += 1
            return
        timestamp = _unwrap(packet.timestamp, self._highest_ts, 32)
        if self._is_duplicate(sequence):
            self._counts.packets_duplicate += 1
            return
        transit = packet.arrival - timestamp / self._settings.clock_rate
        minimum = self._window.minimum
        if minimum is not None and abs(transit - minimum) > self._settings.timeline_jump:
            self._restart()  # the sender's timestamps jumped (or the network held us for seconds)
            sequence, timestamp = packet.sequence, packet.timestamp
        out_of_order = self._highest_seq is not None and sequence < self._highest_seq
        self._measure(packet, sequence, timestamp, transit)  # late packets measure the jitter too
        if self._next_seq is not None and (sequence < self._next_seq or timestamp < self._play_ts):
            self._counts.packets_late += 1  # its turn has passed: concealed, recovered or skipped
            return
        if out_of_order:
            self._counts.packets_reordered += 1
        self._store(packet, sequence, timestamp)

    def skip(self, packet: Packet) -> None:
        """A packet of the stream that is not audio (an RFC 4733 telephone event): see "Other payloads share
        the sequence" above. Its number is neither lost audio nor a frame to wait for; nothing is stored."""
        if packet.ssrc != self._ssrc or self._highest_seq is None or self._first_seq is None:
            return  # another stream, or before this one's first audio packet (outside its expected range)
        sequence = _unwrap(packet.sequence, self._highest_seq, 16)
        offset = sequence - self._highest_seq
        if offset > self._settings.max_dropout or -offset > self._settings.max_misorder:
            return  # far off: the next audio packet decides whether the stream restarted
        if sequence in self._foreign or self._is_duplicate(sequence):
            return
        self._foreign.add(sequence)
        self._foreign_count += 1
        self._first_seq = min(self._first_seq, sequence)
        self._highest_seq = max(self._highest_seq, sequence)

    def _not_audio(self, first: int, end: int) -> bool:
        """Every sequence number in first..end-1 was a non-audio packet (true for an empty range)."""
        if end - first > self._settings.capacity_packets:
            return False
        return all(sequence in self._foreign for sequence in range(first, end))

    def _is_duplicate(self, sequence: int) -> bool:
        if sequence in self._played:
            return True
        index = bisect.bisect_left(self._slots, sequence, key=lambda slot: slot.sequence)
        return index < len(self._slots) and self._slots[index].sequence == sequence

    def _measure(self, packet: Packet, sequence: int, timestamp: int, transit: float) -> None:
        self._counts.packets_received += 1
        if self._first_seq is None or sequence < self._first_seq:
            self._first_seq = sequence
        if self._highest_seq is None or sequence > self._highest_seq:
            self._highest_seq = sequence
        if self._highest_ts is None or timestamp > self._highest_ts:
            self._highest_ts = timestamp
        self._jitter.update(packet.arrival, timestamp)
        settings = self._settings
        new_event = self._window.add(packet.arrival, transit, settings.burst_gap)
        self._since_retarget += 1
        peak = new_event and self._is_peak(packet.arrival, transit)
        if peak or self._since_retarget >= settings.retarget_every or len(self._window) == 1:
            self._retarget()

    def _is_peak(self, arrival: float, transit: float) -> bool:
        """Record a delay far above the window's quantile (a stall); forget those older than peak_memory."""
        peaks = self._peaks
        while peaks and peaks[0][0] < arrival - self._settings.peak_memory:
            peaks.popleft()
        relative = transit - (self._window.minimum or transit)
        if relative <= self._quantile + self._settings.peak_margin:
            return False
        peaks.append((arrival, relative))
        return True

    def _retarget(self) -> None:
        """Target: the quantile; or, once stalls recur (two peaks within peak_memory), the lower peak too."""
        self._since_retarget = 0
        self._quantile = self._window.quantile(self._settings.delay_quantile)
        wanted = self._quantile
        if len(self._peaks) >= 2:
            wanted = max(wanted, min(relative for _, relative in self._peaks))
        self._target = min(self._settings.max_target_delay, max(self._settings.min_target_delay, wanted))

    def _store(self, packet: Packet, sequence: int, timestamp: int) -> None:
        samples = self._duration(packet)
        silent = packet.silent or len(packet.payload) <= SILENT_PAYLOAD_BYTES
        slot = _Slot(sequence, timestamp, samples, silent, packet)
        if not self._slots or self._slots[-1].sequence < sequence:
            self._slots.append(slot)  # the common case: in order
        else:
            bisect.insort(self._slots, slot, key=lambda slot: slot.sequence)
        while len(self._slots) > self._settings.capacity_packets:
            if not self._slots[0].dropped:
                self._count_drop(self._slots[0])
            self._skip_front()

    def _duration(self, packet: Packet) -> int:
        samples_48k = opus_packet_samples(packet.payload)
        if samples_48k is None:
            return self._tick
        return max(1, samples_48k * self._settings.clock_rate // 48000)

    # -- pop: one decision per tick -----------------------------------------------------------------------

    def pop(self, now: float) -> Playout:
        if self._held >= self._tick:  # the last frame was longer than a tick
            self._held -= self._tick
            return HELD
        self._held = 0
        playout = self._start(now) if self._state is _State.WAITING else self._play(now)
        if playout.kind is PlayoutKind.SILENCE:
            self._last_kind = PlayoutKind.SILENCE
            self._counts.frames_silence += 1
            self._last_delay = 0.0
        else:
            self._delay_sum += self._last_delay
            self._delay_ticks += 1
        return playout

    def _delay(self, timestamp: int, now: float) -> float:
        """D: how long after its arrival over the fastest path the sample at `timestamp` plays at `now`."""
        minimum = self._window.minimum
        assert minimum is not None  # a buffered packet was measured
        return now - (timestamp / self._settings.clock_rate + minimum)

    def _wait(self, *, in_order: bool) -> None:
        """To WAITING. `in_order`: a talkspurt follows silence, start with its first packet once it is due;
        else (the start, a stall, a resync) start with the newest packet that is due: the rest is stale."""
        self._state = _State.WAITING
        self._resume_in_order = in_order

    def _start(self, now: float) -> Playout:
        """WAITING: start playing once a packet is due (see :meth:`_wait` for which one)."""
        while self._slots and self._delay(self._slots[0].timestamp, now) > self._settings.max_delay:
            self._drop_front_unplayed()  # stale: playing it would hold the delay above max_delay
        live = [slot for slot in self._slots if not slot.dropped]
        if live and (self._resume_in_order or self._starts_talkspurt(live[0])):
            live = live[:1]  # a talkspurt's first packet: never skip the onset of speech
        due = [slot for slot in live if self._delay(slot.timestamp, now) >= self._target]
        if not due:
            return Playout(PlayoutKind.SILENCE, samples=self._tick)
        chosen = due[-1]
        while self._slots[0] is not chosen:
            self._drop_front_unplayed()
        self._state = _State.PLAYING
        self._next_seq = chosen.sequence
        self._play_ts = chosen.timestamp
        self._over_target_ticks = 0
        self._last_delay = self._delay(chosen.timestamp, now)
        return self._play_front()

    def _starts_talkspurt(self, slot: _Slot) -> bool:
        """No audio packet missing since the last one played, yet time moved on: the phone was silent (no DTX)
        or sent telephone events instead of audio (a key press)."""
        if self._next_seq is None or slot.timestamp - self._play_ts <= self._tolerance:
            return False
        return self._not_audio(self._next_seq, slot.sequence)

    def _drop_front_unplayed(self) -> None:
        slot = self._slots.pop(0)
        if not slot.dropped:  # a dropped one was counted when it was marked
            self._count_drop(slot)

    def _play(self, now: float) -> Playout:
        delay = self._delay(self._play_ts, now)
        if delay > self._settings.max_delay:
            self._wait(in_order=False)  # the tick stalled: resync at once
            return self._start(now)
        self._catch_up(delay)
        self._skip_dropped()
        delay = self._last_delay = self._delay(self._play_ts, now)
        if not self._slots:
            if self._last_played_silent or self._next_seq in self._foreign:
                # DTX, or a key press the phone sends instead of audio: audio comes when it has some again
                self._wait(in_order=True)
                return Playout(PlayoutKind.SILENCE, samples=self._tick)
            return self._conceal(self._last_samples, wait=delay < self._target, empty=True)
        slot = self._slots[0]
        gap = slot.timestamp - self._play_ts
        while gap < -self._tolerance:  # behind the play position (a sender whose timestamps go back)
            if not self._slots.pop(0).dropped:  # (a dropped one is counted already)
                self._counts.packets_late += 1
            if not self._slots:
                return self._conceal(self._last_samples, wait=False, empty=True)
            slot = self._slots[0]
            gap = slot.timestamp - self._play_ts
        if gap <= self._tolerance:
            return self._play_front()
        if self._starts_talkspurt(slot) or gap > self._settings.max_conceal_frames * self._tick:
            # time passes with no packet missing (DTX, a new talkspurt), or a hole longer than PLC covers
            self._wait(in_order=True)
            return self._start(now)
        if delay < self._target:
            return self._conceal(self._tick, wait=True)  # it may still come: wait for it
        if gap <= max(slot.samples, self._tick) + self._tolerance and not slot.silent:
            return self._recover(slot, gap)
        return self._conceal(min(gap, self._last_samples), wait=False)

    def _play_front(self) -> Playout:
        slot = self._slots.pop(0)
        self._next_seq = slot.sequence + 1
        self._play_ts = slot.timestamp + slot.samples
        self._played.add(slot.sequence)
        self._last_played_silent = slot.silent
        if len(self._played) > 4 * self._settings.capacity_packets:
            horizon = self._next_seq - 2 * self._settings.capacity_packets
            self._played = {sequence for sequence in self._played if sequence >= horizon}
            self._foreign = {sequence for sequence in self._foreign if sequence >= horizon}
        self._concealed_in_row = 0
        self._counts.frames_played += 1
        return self._emit(PlayoutKind.AUDIO, slot.packet.payload, slot.samples)

    def _recover(self, slot: _Slot, gap: int) -> Playout:
        """The frame before `slot` is lost: Opus in-band FEC in `slot` carries it."""
        self._play_ts = slot.timestamp
        self._concealed_in_row = 0
        self._counts.frames_fec += 1
        return self._emit(PlayoutKind.FEC, slot.packet.payload, gap)

    def _conceal(self, samples: int, *, wait: bool, empty: bool = False) -> Playout:
        """PLC for a missing frame: `wait` keeps its slot (it may still come), else its time is used up."""
        if empty:
            self._concealed_in_row += 1
            if self._concealed_in_row > self._settings.max_conceal_frames:
                self._wait(in_order=False)  # a stall: silence until packets come back, no PLC forever
                return Playout(PlayoutKind.SILENCE, samples=self._tick)
        if wait:
            samples = self._tick
        else:
            self._play_ts += samples
        self._counts.frames_concealed += 1
        if self._last_kind is not PlayoutKind.CONCEAL:
            self._counts.concealment_runs += 1
        return self._emit(PlayoutKind.CONCEAL, None, samples)

    def _emit(self, kind: PlayoutKind, payload: bytes | None, samples: int) -> Playout:
        samples = max(1, min(samples, OPUS_MAX_SAMPLES_48K * self._settings.clock_rate // 48000))
        self._last_samples = samples
        self._last_kind = kind
        self._held = samples - self._tick
        return Playout(kind, payload, samples * 48000 // self._settings.clock_rate)

    # -- catch-up -----------------------------------------------------------------------------------------

    def _catch_up(self, delay: float) -> None:
        """Shed what the buffer holds beyond the target: silent frames anywhere first, then speech."""
        tick_seconds = self._settings.tick_seconds
        excess = delay - self._target
        if excess < tick_seconds:
            self._over_target_ticks = 0
            return
        self._over_target_ticks += 1  # ticks over the target since silence was last dropped
        rate = self._settings.clock_rate
        pending = sum(slot.samples for slot in self._slots if slot.dropped) / rate
        for slot in self._slots:
            if excess - pending < tick_seconds:
                self._over_target_ticks = 0  # the silence already marked will do: wait for it to play
                return
            if slot.silent and not slot.dropped:
                slot.dropped = True
                pending += slot.samples / rate
                self._count_drop(slot)
                self._over_target_ticks = 0
        if self._over_target_ticks < self._settings.catch_up_patience_ticks:
            return  # silence keeps coming: wait for it rather than cut speech
        self._skip_dropped()
        if len(self._slots) > 1 and self._continues(self._slots[0]):
            self._count_drop(self._slots[0])
            self._skip_front()

    def _continues(self, slot: _Slot) -> bool:
        return slot.timestamp - self._play_ts <= self._tolerance

    def _count_drop(self, slot: _Slot) -> None:
        self._counts.frames_dropped += 1
        if slot.silent:
            self._counts.frames_silent_dropped += 1

    def _skip_dropped(self) -> None:
        while self._slots and self._slots[0].dropped and self._continues(self._slots[0]):
            self._skip_front()

    def _skip_front(self) -> None:
        slot = self._slots.pop(0)
        if self._next_seq is not None and slot.timestamp >= self._play_ts - self._tolerance:
            self._next_seq = slot.sequence + 1
            self._play_ts = slot.timestamp + slot.samples

    # -- statistics ---------------------------------------------------------------------------------------

    def statistics(self) -> JitterStatistics:
        expected = self._expected_before + self._expected_in_stream()
        received = self._counts.packets_received
        waiting = [slot.samples for slot in self._slots if not slot.dropped]
        return JitterStatistics(
            packets_buffered=len(waiting),
            buffered_audio_seconds=sum(waiting) / self._settings.clock_rate,
            packets_expected=expected,
            packets_lost=max(0, expected - received),
            interarrival_jitter_seconds=self._jitter.jitter_seconds,
            target_delay_seconds=self._target,
            buffer_delay_seconds=self._last_delay,
            mean_buffer_delay_seconds=self._delay_sum / self._delay_ticks if self._delay_ticks else 0.0,
            **{name: getattr(self._counts, name) for name in _Counters.__slots__},
        )
