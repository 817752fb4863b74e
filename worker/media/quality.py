"""A call's media quality: jitter-buffer counters and an estimated MOS (a simplified E-model, ITU-T G.107).

Pure: no asyncio, no aiortc. The worker builds one :class:`CallQuality` at the end of a call (and on demand
for live statistics) from :meth:`JitterBuffer.statistics` and the RTT aiortc's RTCP reports, and puts
:meth:`CallQuality.as_fields` into the ``call.ended`` event and the call's final log line.

The E-model, simplified to what a receiver can know::

    R   = 93.2 - Id(d) - Ie_eff                                   (G.107: R0 - Is = 93.2 at default settings)
    Id  = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)                 (Cole & Rosenbluth 2001, G.107's Id for
                                                                   perfect echo control, d = one-way ms)
    Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)          (G.107 (06/2015) eq. 7-29)
    MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6, for 0 < R < 100 (G.107 Annex B), clamped to 1.0..4.5

``d`` is the mouth-to-ear delay: half the RTT (when known, else ``assumed_network_delay_ms``), the sender's
packetization and Opus look-ahead, and the mean playout delay of our jitter buffer (which holds the jitter).
``Ppl`` is the share of frames the listener heard as concealment (PLC); frames recovered by Opus FEC count as
received. ``BurstR`` is the mean length of the concealment runs over the mean run length random loss of the
same rate would give (G.107 7.2.2), so bursts weigh more than scattered losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from worker.media.jitter import JitterStatistics

__all__ = [
    "OPUS_NARROWBAND",
    "OPUS_WIDEBAND",
    "CallQuality",
    "CodecImpairment",
    "burst_ratio",
    "mos_from_r",
    "r_factor",
]

R_DEFAULT: Final = 93.2  # R0 - Is with G.107's default parameters (narrowband scale)


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    """A codec's equipment impairment Ie and packet-loss robustness Bpl on G.107's narrowband R scale."""

    name: str
    ie: float
    bpl: float
    packetization_ms: float  # frame duration plus the encoder's look-ahead: the delay the codec adds


# Opus values from Alahmadi, Pocta, Melvin, "An Adaptive Bitrate Switching Algorithm for Speech Applications
# in Context of WebRTC", ACM TOMM 17(4) 133 (2021), fitted on random packet loss:
# - wideband (what WhatsApp sends, 16 kHz): Ie,wb 18.1-20.0 at 13-15 kb/s, Bpl 18.7-19.5. The wideband scale
#   (G.107.1) tops out at 129, 35.8 above the narrowband 93.2 used here, so wideband Opus rates above anything
#   the narrowband scale can express: Ie = max(0, Ie,wb - 35.8) = 0; Bpl 19.5 (13 kb/s VBR).
# - narrowband (8 kHz): Ie 11.7, Bpl 18.9 (9 kb/s VBR).
# Packetization: a 20 ms frame plus Opus' look-ahead, 26.5 ms of algorithmic delay in all (RFC 6716).
OPUS_WIDEBAND: Final = CodecImpairment("opus-wb", ie=0.0, bpl=19.5, packetization_ms=26.5)
OPUS_NARROWBAND: Final = CodecImpairment("opus-nb", ie=11.7, bpl=18.9, packetization_ms=26.5)


def delay_impairment(one_way_ms: float) -> float:
    """Id for a one-way mouth-to-ear delay (Cole & Rosenbluth's fit of G.107 with echo controlled)."""
    d = max(0.0, one_way_ms)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(loss_percent: float, burst: float, codec: CodecImpairment) -> float:
    """Ie_eff of G.107 eq. 7-29: the codec's impairment raised by packet loss (random: burst 1)."""
    ppl = min(100.0, max(0.0, loss_percent))
    if ppl == 0:
        return codec.ie
    return codec.ie + (95.0 - codec.ie) * ppl / (ppl / max(1.0, burst) + codec.bpl)


def r_factor(
    one_way_ms: float, loss_percent: float, *, burst: float = 1.0, codec: CodecImpairment = OPUS_WIDEBAND
) -> float:
    """R on G.107's narrowband scale for a one-way delay and a loss rate (a percentage)."""
    loss_impairment = effective_equipment_impairment(loss_percent, burst, codec)
    return R_DEFAULT - delay_impairment(one_way_ms) - loss_impairment


def mos_from_r(r: float) -> float:
    """G.107 Annex B, clamped to 1.0..4.5."""
    if r <= 0 or math.isnan(r):
        return 1.0
    if r >= 100:
        return 4.5
    mos = 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6
    return min(4.5, max(1.0, mos))


def burst_ratio(lost: int, runs: int, total: int) -> float:
    """G.107's BurstR: observed mean loss-run length over the mean run length of random loss at that rate."""
    if lost <= 0 or runs <= 0 or total <= 0:
        return 1.0
    loss = min(lost / total, 0.999)
    random_mean_run = 1 / (1 - loss)
    return max(1.0, (lost / runs) / random_mean_run)


@dataclass(frozen=True, slots=True)
class CallQuality:
    """A call's media quality summary (received direction), as it goes into call.ended and the final log."""

    expected: int
    received: int
    lost: int
    late: int
    concealed: int
    fec: int
    jitter_ms: float  # RFC 3550 interarrival jitter
    buffer_delay_ms: float  # mean playout delay of the jitter buffer
    rtt_ms: float | None
    mos: float | None  # None when nothing was played (no audio to rate)
    loss_percent: float = 0.0  # frames heard as concealment, of all frames played
    r: float = R_DEFAULT

    @classmethod
    def from_statistics(
        cls,
        statistics: JitterStatistics,
        rtt_seconds: float | None = None,
        *,
        codec: CodecImpairment = OPUS_WIDEBAND,
        assumed_network_delay_ms: float = 20.0,
    ) -> CallQuality:
        frames = statistics.frames_played + statistics.frames_fec + statistics.frames_concealed
        loss_percent = 100.0 * statistics.frames_concealed / frames if frames else 0.0
        burst = burst_ratio(statistics.frames_concealed, statistics.concealment_runs, frames)
        buffer_delay_ms = 1000.0 * statistics.mean_buffer_delay_seconds
        network_ms = 500.0 * rtt_seconds if rtt_seconds is not None else assumed_network_delay_ms
        one_way_ms = network_ms + codec.packetization_ms + buffer_delay_ms
        r = r_factor(one_way_ms, loss_percent, burst=burst, codec=codec)
        return cls(
            expected=statistics.packets_expected,
            received=statistics.packets_received,
            lost=statistics.packets_lost,
            late=statistics.packets_late,
            concealed=statistics.frames_concealed,
            fec=statistics.frames_fec,
            jitter_ms=1000.0 * statistics.interarrival_jitter_seconds,
            buffer_delay_ms=buffer_delay_ms,
            rtt_ms=1000.0 * rtt_seconds if rtt_seconds is not None else None,
            mos=mos_from_r(r) if frames else None,
            loss_percent=loss_percent,
            r=r,
        )

    def as_fields(self) -> dict[str, int | float | None]:
        """Flat, JSON-ready fields for the call.ended event and the call's final log line."""
        return {
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "late": self.late,
            "concealed": self.concealed,
            "fec": self.fec,
            "jitter_ms": round(self.jitter_ms, 1),
            "buffer_delay_ms": round(self.buffer_delay_ms, 1),
            "rtt_ms": round(self.rtt_ms, 1) if self.rtt_ms is not None else None,
            "loss_percent": round(self.loss_percent, 2),
            "mos": round(self.mos, 2) if self.mos is not None else None,
        }
