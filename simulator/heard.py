"""What the caller heard, measured at the phone's socket: the echo's delay, gaps, and an estimated MOS. Pure.

The phone's test signal (:mod:`simulator.signal`) has a silent 100 ms slot every 600 ms, so each period starts
with a *tone burst*. :class:`OnsetDetector` dates the first loud sample after a quiet stretch, to the sample:
on the phone's side in the frames it plays (dated when the frame's packet leaves for the network:
:meth:`HeardLog.microphone`, :meth:`HeardLog.left_socket`), and on the heard side in each RTP packet's audio
as the packet arrives at the phone's socket (every packet's Opus decoded on its own in arrival order, *not*
through the phone's own jitter buffer, so the phone adds nothing). A frame's samples are dated back from the
moment its packet left or arrived. An onset right after a missing packet
is not trusted (the loud part may have started in the lost packet), so such a burst counts as not heard.

:class:`HeardLog` pairs every heard onset with the burst it echoes, recognised by the burst's first tone
(:meth:`HeardLog.delays`), so an echo later than a period is still matched right: the difference is the
echo's delay as the caller hears it (the business, both network legs and the phone's encoder; not the
phone's playout). The MOS takes half that delay as the one-way delay and the loss of both legs (the way up
from the phone's network, as the business's RTCP reports would tell a real phone). It also follows the RTP
sequence numbers: packets expected and received, runs of missing packets (*gaps*) and the audio they carried.

:func:`estimate_mos` is the worker's simplified E-model (ITU-T G.107, :mod:`worker.media.quality`, wideband
Opus: Ie 0, Bpl 19.5) from one-way delay, packet loss and its burstiness (G.107's BurstR, from the runs of
missing packets at the socket), so the caller's side and the worker's side rate a call by the same formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from worker.media.quality import OPUS_WIDEBAND, burst_ratio, mos_from_r, r_factor

PERIOD_SECONDS = 0.6  # one burst per period (the signal's silent slot comes every sixth 100 ms symbol)
MAX_DELAY_SECONDS = 2.0  # an echo later than this is not matched to its burst
TONE_SECONDS = 0.03  # audio after an onset used to find the burst's tone
NEIGHBOURS = 4  # heard bursts either side that can support a match
SUPPORT_SECONDS = 0.25  # a neighbour's delay this close supports a candidate's (under half a period)
THRESHOLD = 0.1  # |sample| above this is loud (the signal's tones peak at 0.3)
QUIET_SECONDS = 0.015  # this much quiet, contiguous audio before a loud sample makes it an onset
PACKET_SECONDS = 0.02
RECENT_PACKETS = 1024  # duplicates are recognised this far back

Samples = npt.NDArray[np.float32]


class OnsetDetector:
    """Dates the first loud sample after at least :data:`QUIET_SECONDS` of contiguous quiet audio."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.onsets: list[float] = []
        self.tones: list[float] = []  # each onset's dominant frequency (NaN: audio missing right after it)
        self._quiet = 0  # contiguous quiet samples just before the next feed (0: unknown)
        self._needed = round(QUIET_SECONDS * rate)
        self._tone_samples = round(TONE_SECONDS * rate)
        self._collecting: list[Samples] | None = None

    def feed(self, samples: Samples, complete_at: float) -> float | None:
        """One frame of mono samples whose last sample was complete at ``complete_at``; the onset or None."""
        if self._collecting is not None:
            self._collect(samples)
        loud = np.flatnonzero(np.abs(samples) > THRESHOLD)
        if loud.size == 0:
            self._quiet += samples.size
            return None
        onset: float | None = None
        if self._quiet + int(loud[0]) >= self._needed:
            onset = complete_at - (samples.size - int(loud[0])) / self.rate
            self.onsets.append(onset)
            self.tones.append(float("nan"))
            self._collecting = []
            self._collect(samples[int(loud[0]) :])
        self._quiet = samples.size - 1 - int(loud[-1])
        return onset

    def _collect(self, samples: Samples) -> None:
        assert self._collecting is not None
        self._collecting.append(samples)
        collected = np.concatenate(self._collecting)
        if collected.size >= self._tone_samples:
            self.tones[-1] = dominant_frequency(collected[: self._tone_samples], self.rate)
            self._collecting = None

    def discontinuity(self) -> None:
        """Audio is missing here: what comes next cannot be an onset until quiet again."""
        self._quiet = 0
        self._collecting = None  # the tone of the last onset stays unknown


def dominant_frequency(samples: Samples, rate: int) -> float:
    size = 16_384
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size), size))
    return float(np.argmax(spectrum)) * rate / size


def same_tone(a: float, b: float) -> bool:
    """Within 4 % (25 Hz at least), as the signal's own analysis judges a tone."""
    return abs(a - b) <= max(25.0, 0.04 * b)


@dataclass(frozen=True, slots=True)
class HeardReport:
    """Per call, what reached the phone's socket from the business."""

    packets_received: int
    packets_expected: int  # from the first to the highest sequence number received
    packets_lost: int
    packets_late: int  # arrived after a later sequence number (reordered)
    gaps: int  # runs of missing packets
    longest_gap_seconds: float
    missing_audio_seconds: float
    bursts_sent: int  # bursts that had time to come back
    bursts_heard: int
    delay_median_seconds: float | None
    delay_p90_seconds: float | None
    mos: float | None

    @property
    def loss_fraction(self) -> float:
        return self.packets_lost / self.packets_expected if self.packets_expected else 0.0

    @property
    def heard_fraction(self) -> float:
        return self.bursts_heard / self.bursts_sent if self.bursts_sent else 0.0

    def format(self) -> str:
        p50, p90 = self.delay_median_seconds, self.delay_p90_seconds
        delay = (
            "no burst heard"
            if p50 is None or p90 is None
            else f"delay p50 {p50 * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms"
        )
        mos = "-" if self.mos is None else f"{self.mos:.2f}"
        return (
            f"{delay}, bursts heard {self.bursts_heard}/{self.bursts_sent}, packets lost "
            f"{self.packets_lost}/{self.packets_expected} in {self.gaps} gaps (longest "
            f"{self.longest_gap_seconds * 1000:.0f} ms), late {self.packets_late}, MOS {mos}"
        )


@dataclass(slots=True)
class HeardLog:
    """Collects sent onsets and heard packets; :meth:`report` turns them into a :class:`HeardReport`."""

    sent: OnsetDetector = field(default_factory=lambda: OnsetDetector(48_000))
    heard: OnsetDetector = field(default_factory=lambda: OnsetDetector(48_000))
    last_arrival: float | None = None
    _highest: int | None = None  # extended sequence number
    _first: int | None = None
    _count: int = 0  # distinct packets received
    _recent: set[int] = field(default_factory=set)  # the last RECENT_PACKETS sequence numbers, for duplicates
    _gaps: dict[int, int] = field(default_factory=dict)  # first missing sequence number -> run length
    _late: int = 0
    _mic: OnsetDetector = field(default_factory=lambda: OnsetDetector(48_000))  # on the signal's own clock
    _leaving: dict[int, int] = field(default_factory=dict)  # frame index -> its onset in _mic, to be dated
    _from_mic: dict[int, int] = field(
        default_factory=dict
    )  # sent onset -> _mic onset whose tone may be pending

    def microphone(self, frame_index: int, samples: Samples) -> None:
        """Frame ``frame_index`` (20 ms, 48 kHz) of what the phone plays. Its onsets are dated once the
        frame's packet leaves the phone (:meth:`left_socket`): both ends are then dated at the phone's socket,
        and the phone's own encoder (aiortc's, in a thread pool) does not count as the business's delay."""
        if self._mic.feed(samples, complete_at=(frame_index + 1) * PACKET_SECONDS) is not None:
            self._leaving[frame_index] = len(self._mic.onsets) - 1

    def left_socket(self, frame_index: int, at: float) -> None:
        """The packet of frame ``frame_index`` was handed to the phone's network at ``at``."""
        mic = self._leaving.pop(frame_index, None)
        if mic is None:
            return
        self._from_mic[len(self.sent.onsets)] = mic
        self.sent.onsets.append(at - ((frame_index + 1) * PACKET_SECONDS - self._mic.onsets[mic]))
        self.sent.tones.append(self._mic.tones[mic])  # NaN until the tone's first 30 ms were played

    def _settle_tones(self) -> None:
        for sent, mic in list(self._from_mic.items()):
            if not np.isnan(self._mic.tones[mic]):
                self.sent.tones[sent] = self._mic.tones[mic]
                del self._from_mic[sent]

    def extend(self, sequence_number: int) -> int:
        """The 16-bit sequence number extended past wrap-arounds, relative to the highest seen."""
        if self._highest is None:
            return sequence_number
        delta = (sequence_number - self._highest + 0x8000) % 0x10000 - 0x8000
        return self._highest + delta

    def packet(self, sequence_number: int, samples: Samples | None, arrived_at: float) -> None:
        """One RTP packet's audio (None: it could not be decoded) as it arrived at the socket."""
        seq = self.extend(sequence_number)
        self.last_arrival = arrived_at
        if seq in self._recent:
            return  # a duplicate: the network model never makes one, but a business might
        self._count += 1
        self._recent.add(seq)
        if len(self._recent) > 2 * RECENT_PACKETS:  # bounded memory on long calls
            self._recent = {s for s in self._recent if s > seq - RECENT_PACKETS}
        if self._first is None or self._highest is None:
            self._first = self._highest = seq
        elif seq <= self._highest:
            self._late += 1
            self._fill(seq)
            return  # reordered: decoded for the codec's sake, but its audio belongs to the past
        elif seq > self._highest + 1:
            self._gaps[self._highest + 1] = seq - self._highest - 1
            self.heard.discontinuity()
        if seq > self._highest:
            self._highest = seq
        if samples is None:
            self.heard.discontinuity()
            return
        self.heard.feed(samples, arrived_at)

    def _fill(self, seq: int) -> None:
        """A late packet arrived: it is no longer missing (its run of missing packets splits around it)."""
        for start, length in self._gaps.items():
            if start <= seq < start + length:
                del self._gaps[start]
                if seq > start:
                    self._gaps[start] = seq - start
                if seq + 1 < start + length:
                    self._gaps[seq + 1] = start + length - seq - 1
                return

    def delays(self) -> list[tuple[float, float]]:
        """(sent onset, delay) for every heard onset matched to the burst it echoes.

        A heard burst is matched by its tone: its candidates are the bursts sent less than
        :data:`MAX_DELAY_SECONDS` before it that started with the same tone (the signal draws each burst's
        first tone at random from twelve). Two candidates can share a tone, and some other audio can match one
        by chance, so each candidate's delay must be *supported*: a neighbouring heard burst (up to
        :data:`NEIGHBOURS` either side) has a candidate delay within :data:`SUPPORT_SECONDS` of it (an echo's
        delay moves, it does not jump by a whole period from one burst to the next). The best supported
        candidate wins, ties going to the delay nearest the previous echo's. A heard onset whose tone is
        unknown (audio missing right after it) has one candidate: the latest burst, if less than a period
        before it. Each burst is matched once.
        """
        self._settle_tones()
        sent, sent_tones = self.sent.onsets, self.sent.tones
        options: list[list[tuple[int, float]]] = []  # per heard onset: (sent index, delay)
        lo = 0
        for at, tone in zip(self.heard.onsets, self.heard.tones, strict=True):
            while lo < len(sent) and sent[lo] <= at - MAX_DELAY_SECONDS:
                lo += 1
            hi = lo
            while hi < len(sent) and sent[hi] < at:
                hi += 1
            if np.isnan(tone):
                found = [i for i in (hi - 1,) if i >= lo and at - sent[i] < PERIOD_SECONDS]
            else:
                found = [i for i in range(lo, hi) if same_tone(tone, sent_tones[i])]
            options.append([(i, at - sent[i]) for i in found])
        lonely = len(options) < 2
        pairs: list[tuple[float, float]] = []
        used: set[int] = set()
        previous: float | None = None
        for j, candidates in enumerate(options):
            neighbours = [
                options[k]
                for k in range(max(0, j - NEIGHBOURS), min(len(options), j + NEIGHBOURS + 1))
                if k != j
            ]
            scored = []
            for i, delay in candidates:
                if i in used:
                    continue
                support = sum(
                    1 for other in neighbours if any(abs(delay - d) < SUPPORT_SECONDS for _, d in other)
                )
                if support or lonely:
                    distance = abs(delay - previous) if previous is not None else -sent[i]
                    scored.append((-support, distance, i, delay))
            if not scored:
                continue
            _, _, best, delay = min(scored)
            used.add(best)
            previous = delay
            pairs.append((sent[best], delay))
        return pairs

    def report(
        self, *, start: float | None = None, end: float | None = None, upstream_loss: float = 0.0
    ) -> HeardReport:
        """Bursts sent in ``[start, end)`` (default: the whole call but its last period) and their echoes."""
        everything = self.delays()
        # By default, bursts sent too late to have come back before the last packet arrived are left out.
        longest = max((d for _, d in everything), default=0.0)
        last_arrival = self.last_arrival if self.last_arrival is not None else 0.0
        hi = end if end is not None else last_arrival - max(PERIOD_SECONDS, longest + 0.1)
        lo = start if start is not None else float("-inf")
        pairs = [(s, d) for s, d in everything if lo <= s < hi]
        sent = [s for s in self.sent.onsets if lo <= s < hi]
        if start is None and pairs:  # before the first echo the business was not answering yet
            sent = [s for s in sent if s >= pairs[0][0]]
        values = [d for _, d in pairs]
        received = self._count
        expected = 0
        if self._highest is not None and self._first is not None:
            expected = self._highest - self._first + 1
        runs = list(self._gaps.values())
        median = float(np.median(values)) if values else None
        p90 = float(np.percentile(values, 90)) if values else None
        lost = max(0, expected - received)
        # The echo crossed both legs: the MOS takes the loss on the way to the business too.
        path_loss = 1.0 - (1.0 - (lost / expected if expected else 0.0)) * (1.0 - upstream_loss)
        burst = burst_ratio(lost, len(runs), expected) if lost else 1.0
        mos = estimate_mos(median / 2, path_loss, burst=burst) if median is not None else None
        return HeardReport(
            packets_received=received,
            packets_expected=expected,
            packets_lost=lost,
            packets_late=self._late,
            gaps=len(runs),
            longest_gap_seconds=max(runs, default=0) * PACKET_SECONDS,
            missing_audio_seconds=lost * PACKET_SECONDS,
            bursts_sent=len(sent),
            bursts_heard=len(pairs),
            delay_median_seconds=median,
            delay_p90_seconds=p90,
            mos=mos,
        )


def estimate_mos(one_way_delay_seconds: float, loss_fraction: float, *, burst: float = 1.0) -> float:
    """MOS from the worker's E-model (:mod:`worker.media.quality`) for wideband Opus."""
    return mos_from_r(
        r_factor(one_way_delay_seconds * 1000.0, loss_fraction * 100.0, burst=burst, codec=OPUS_WIDEBAND)
    )
