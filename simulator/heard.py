"""What the caller heard, measured at the phone's socket: the echo's delay, gaps, and an estimated MOS. Pure.

The phone's test signal (:mod:`simulator.signal`) has a silent 100 ms slot every 600 ms, so each period starts
with a *tone burst*. :class:`OnsetDetector` dates the first loud sample after a quiet stretch, to the sample:
on the phone's side in the frames it sends (dated from the moment each frame was handed to the encoder), and
on the heard side in each RTP packet's audio as the packet arrives at the phone's socket (every packet's Opus
decoded on its own in arrival order, *not* through the phone's own jitter buffer, so the phone adds nothing).
A frame's samples are dated back from the moment the frame was complete. An onset right after a missing packet
is not trusted (the loud part may have started in the lost packet), so such a burst counts as not heard.

:class:`HeardLog` pairs every heard onset with the latest burst sent less than a period before it: the
difference is the echo's delay as the caller hears it (the business, both network legs and the phone's
encoder; not the phone's playout). The MOS takes half that delay as the one-way delay and the loss of both
legs (the way up from the phone's network, as the business's RTCP reports would tell a real phone).
It also follows the RTP sequence numbers: packets expected and received,
runs of missing packets (*gaps*) and the audio they carried.

:func:`estimate_mos` is a simplified E-model (ITU-T G.107) from one-way delay and packet loss, with the
codec's impairment set for Opus (``ie=0``, ``bpl=20``; Opus is not in G.113, these are the values commonly
used for a wideband codec with good concealment). It is the simulator's own small function: the worker's
quality module was not committed when this was written, so the two are separate estimates of one formula.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PERIOD_SECONDS = 0.6  # one burst per period (the signal's silent slot comes every sixth 100 ms symbol)
THRESHOLD = 0.1  # |sample| above this is loud (the signal's tones peak at 0.3)
QUIET_SECONDS = 0.04  # this much quiet, contiguous audio before a loud sample makes it an onset
PACKET_SECONDS = 0.02

Samples = npt.NDArray[np.float32]


class OnsetDetector:
    """Dates the first loud sample after at least :data:`QUIET_SECONDS` of contiguous quiet audio."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.onsets: list[float] = []
        self._quiet = 0  # contiguous quiet samples just before the next feed (0: unknown)
        self._needed = round(QUIET_SECONDS * rate)

    def feed(self, samples: Samples, complete_at: float) -> float | None:
        """One frame of mono samples whose last sample was complete at ``complete_at``; the onset or None."""
        loud = np.flatnonzero(np.abs(samples) > THRESHOLD)
        if loud.size == 0:
            self._quiet += samples.size
            return None
        onset: float | None = None
        if self._quiet + int(loud[0]) >= self._needed:
            onset = complete_at - (samples.size - int(loud[0])) / self.rate
            self.onsets.append(onset)
        self._quiet = samples.size - 1 - int(loud[-1])
        return onset

    def discontinuity(self) -> None:
        """Audio is missing here: what comes next cannot be an onset until quiet again."""
        self._quiet = 0


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
    arrivals: list[float] = field(default_factory=list)  # of packets, for the reporting window
    _highest: int | None = None  # extended sequence number
    _first: int | None = None
    _received: set[int] = field(default_factory=set)
    _late: int = 0

    def extend(self, sequence_number: int) -> int:
        """The 16-bit sequence number extended past wrap-arounds, relative to the highest seen."""
        if self._highest is None:
            return sequence_number
        delta = (sequence_number - self._highest + 0x8000) % 0x10000 - 0x8000
        return self._highest + delta

    def packet(self, sequence_number: int, samples: Samples | None, arrived_at: float) -> None:
        """One RTP packet's audio (None: it could not be decoded) as it arrived at the socket."""
        seq = self.extend(sequence_number)
        self.arrivals.append(arrived_at)
        if seq in self._received:
            return  # a duplicate: the network model never makes one, but a business might
        self._received.add(seq)
        if self._first is None or self._highest is None:
            self._first = self._highest = seq
        elif seq <= self._highest:
            self._late += 1
            return  # reordered: decoded for the codec's sake, but its audio belongs to the past
        elif seq > self._highest + 1:
            self.heard.discontinuity()
        if seq > self._highest:
            self._highest = seq
        if samples is None:
            self.heard.discontinuity()
            return
        self.heard.feed(samples, arrived_at)

    def delays(self) -> list[tuple[float, float]]:
        """(sent onset, delay) for every heard onset matched to the burst it echoes."""
        sent = self.sent.onsets
        pairs: list[tuple[float, float]] = []
        index = 0
        used: set[int] = set()
        for at in self.heard.onsets:
            while index < len(sent) and sent[index] < at:
                index += 1
            if index and at - sent[index - 1] < PERIOD_SECONDS and index - 1 not in used:
                used.add(index - 1)
                pairs.append((sent[index - 1], at - sent[index - 1]))
        return pairs

    def report(
        self, *, start: float | None = None, end: float | None = None, upstream_loss: float = 0.0
    ) -> HeardReport:
        """Bursts sent in ``[start, end)`` (default: the whole call but its last period) and their echoes."""
        last_arrival = self.arrivals[-1] if self.arrivals else None
        hi = end if end is not None else (last_arrival - PERIOD_SECONDS if last_arrival is not None else 0.0)
        lo = start if start is not None else float("-inf")
        pairs = [(s, d) for s, d in self.delays() if lo <= s < hi]
        sent = [s for s in self.sent.onsets if lo <= s < hi]
        if start is None and pairs:  # before the first echo the business was not answering yet
            sent = [s for s in sent if s >= pairs[0][0]]
        values = [d for _, d in pairs]
        received = len(self._received)
        expected = 0
        if self._highest is not None and self._first is not None:
            expected = self._highest - self._first + 1
        runs = _missing_runs(sorted(self._received))
        median = float(np.median(values)) if values else None
        p90 = float(np.percentile(values, 90)) if values else None
        lost = max(0, expected - received)
        # The echo crossed both legs: the MOS takes the loss on the way to the business too.
        path_loss = 1.0 - (1.0 - (lost / expected if expected else 0.0)) * (1.0 - upstream_loss)
        mos = estimate_mos(median / 2, path_loss) if median is not None else None
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


def _missing_runs(received: list[int]) -> list[int]:
    return [b - a - 1 for a, b in itertools.pairwise(received) if b - a > 1]


def estimate_mos(
    one_way_delay_seconds: float, loss_fraction: float, *, ie: float = 0.0, bpl: float = 20.0
) -> float:
    """Simplified E-model (G.107): R = 93.2 - Id - Ie,eff with random loss (BurstR = 1), then R -> MOS."""
    d = max(0.0, one_way_delay_seconds * 1000.0)
    delay_impairment = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, min(100.0, loss_fraction * 100.0))
    equipment = ie + (95.0 - ie) * ppl / (ppl + bpl)
    r = 93.2 - delay_impairment - equipment
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
