"""The phone's test signal and the analysis of what the phone heard. Pure (numpy only).

Design: a never-repeating (within ten minutes) sequence of 100 ms tones drawn from twelve frequencies in the
telephone band (400-2900 Hz, at least 150 Hz apart), each faded in and out over 5 ms, at -10 dBFS; every
sixth 100 ms slot is silent, so every 600 ms a *tone burst* starts after 100 ms of quiet (the phone dates the
echo of each burst's onset: :mod:`simulator.heard`). It survives
Opus at any bitrate and a 16 kHz cap, and it is verifiable two ways:

* *alignment*: the tone sequence is pseudo-random, so its cross-correlation with a delayed copy has a single
  sharp peak; the peak's lag says which part of the signal was heard and, with the send/arrival times of the
  frames, the audio round trip of an echo;
* *content*: after alignment, every whole 100 ms tone heard must have its dominant frequency within 4 % (25 Hz
  at least) of the tone that was played.

The signal is defined for any sample rate: the phone renders 48 kHz frames to send, and the analysis renders
the same stretch and downsamples it to 16 kHz (:data:`ANALYSIS_RATE`) exactly as the heard audio was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]
Times = npt.NDArray[np.float64]

SEND_RATE = 48_000
ANALYSIS_RATE = 16_000
FRAME_SECONDS = 0.02
SYMBOL_SECONDS = 0.1
FREQUENCIES_HZ: tuple[float, ...] = (400, 550, 700, 850, 1000, 1200, 1400, 1650, 1900, 2200, 2500, 2900)
AMPLITUDE = 0.3
FADE_SECONDS = 0.005
PERIOD_SYMBOLS = 6000  # ten minutes before the sequence repeats
BURST_SYMBOLS = 6  # every sixth symbol is silent: each 600 ms starts with a tone burst after 100 ms of quiet

MIN_CORRELATION = 0.5
MIN_MATCH_RATIO = 0.8
MIN_WINDOWS = 3
MAX_LAG_SECONDS = 10.0  # heard audio is looked for at most this far into the played signal
SEGMENT_SECONDS = 0.5  # each half second of heard audio is aligned on its own ...
SEARCH_SECONDS = 0.4  # ... at most this far from the overall alignment
_SILENCE_RMS = 0.01


class TestSignal:
    """A deterministic tone sequence; ``seed`` picks the sequence, so two phones can play different ones."""

    __test__ = False  # not a pytest class

    def __init__(self, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        steps = rng.integers(1, len(FREQUENCIES_HZ), size=PERIOD_SYMBOLS)
        # Each step moves to a different tone, so no two neighbouring symbols are equal.
        self.symbols = np.cumsum(steps) % len(FREQUENCIES_HZ)
        self._frequencies = np.asarray(FREQUENCIES_HZ, dtype=np.float64)

    def render(self, start: int, count: int, rate: int) -> Samples:
        """Samples ``start .. start+count`` of the signal at ``rate`` Hz, float32 in [-1, 1]."""
        index = np.arange(start, start + count, dtype=np.int64)
        per_symbol = round(rate * SYMBOL_SECONDS)
        symbol = (index // per_symbol) % PERIOD_SYMBOLS
        within = (index % per_symbol).astype(np.float64)
        fade = rate * FADE_SECONDS
        envelope = np.clip(np.minimum(within, per_symbol - 1 - within) / fade, 0.0, 1.0)
        envelope[symbol % BURST_SYMBOLS == BURST_SYMBOLS - 1] = 0.0  # the silent slot before each burst
        phase = 2.0 * np.pi * self._frequencies[self.symbols[symbol]] * (index / rate)
        return (AMPLITUDE * envelope * np.sin(phase)).astype(np.float32)

    def frequency(self, symbol_index: int) -> float:
        return float(self._frequencies[self.symbols[symbol_index % PERIOD_SYMBOLS]])

    def symbol_frequencies(self, first: int, count: int) -> npt.NDArray[np.float64]:
        return self._frequencies[self.symbols[np.arange(first, first + count) % PERIOD_SYMBOLS]]


def downsample_48k_to_16k(samples: npt.ArrayLike) -> Samples:
    """Average groups of three: a cheap low-pass + decimation used on both the sent and heard sides."""
    values: Samples = np.asarray(samples, dtype=np.float32)
    usable = len(values) - len(values) % 3
    means: Samples = values[:usable].reshape(-1, 3).mean(axis=1, dtype=np.float32)
    return means


@dataclass(frozen=True, slots=True)
class AudioReport:
    """What the phone heard compared with what it played (an echo of itself)."""

    seconds_played: float
    seconds_heard: float
    correlation: float  # median over half seconds of the Pearson correlation of heard vs played
    windows_compared: int  # whole 100 ms tones inside the overlap
    windows_matched: int  # of those, dominant frequency within tolerance
    offset_seconds: float | None  # overall, heard[0] lines up with the played signal at this time
    round_trip_seconds: float | None  # median frame send -> echo arrival; None unless matched
    matched: bool

    @property
    def match_ratio(self) -> float:
        return self.windows_matched / self.windows_compared if self.windows_compared else 0.0


@dataclass(frozen=True, slots=True)
class Recording:
    """Inputs to :func:`analyse`: played frames' send times, heard samples and their frames' arrival times.

    ``sent_times[k]`` is when played frame ``k`` (samples ``k*frame .. (k+1)*frame`` at the analysis rate) was
    handed to the encoder; ``heard_ends[j]`` is the index just past heard frame ``j`` in ``heard`` and
    ``heard_times[j]`` its arrival time. All times on one monotonic clock.
    """

    sent_times: Times
    heard: Samples
    heard_ends: npt.NDArray[np.int64]
    heard_times: Times


def analyse(signal: TestSignal, recording: Recording) -> AudioReport:
    """Align the heard audio on the played signal, check each tone, and measure the round trip.

    One cross-correlation over everything finds the overall alignment; then every half second of what was
    heard is aligned again on its own, within :data:`SEARCH_SECONDS` of it, because the delay of a real echo
    path moves (a jitter buffer that grows after a lost packet, a frame dropped under load). Tones are
    checked, and the round trip measured, with each half second's own alignment.
    """
    rate = ANALYSIS_RATE
    frame = round(rate * FRAME_SECONDS)
    heard = recording.heard
    usable_frames = (len(heard) + round(MAX_LAG_SECONDS * rate)) // frame
    played_count = min(len(recording.sent_times), usable_frames) * frame
    seconds_played = len(recording.sent_times) * FRAME_SECONDS
    seconds_heard = len(heard) / rate
    if played_count == 0 or len(heard) < frame:
        return AudioReport(seconds_played, seconds_heard, 0.0, 0, 0, None, None, False)
    # The reference goes through the same 48 -> 16 kHz step as what was heard, so no fractional offset.
    played = downsample_48k_to_16k(signal.render(0, played_count * 3, SEND_RATE))
    overall = _best_shift(heard, played)
    segments = _segments(heard, played, overall)
    tones: dict[int, bool] = {}  # played symbol -> heard at its frequency (in any segment)
    for segment in segments:
        for symbol, ok in _compare_tones(signal, heard, segment, played_count).items():
            tones[symbol] = tones.get(symbol, False) or ok
    compared, matched = len(tones), sum(tones.values())
    correlation = float(np.median([seg.correlation for seg in segments])) if segments else 0.0
    ok = correlation >= MIN_CORRELATION and compared >= MIN_WINDOWS and matched >= MIN_MATCH_RATIO * compared
    rtt = _round_trip(recording, segments, frame, played_count) if ok else None
    return AudioReport(seconds_played, seconds_heard, correlation, compared, matched, overall / rate, rtt, ok)


@dataclass(frozen=True, slots=True)
class _Segment:
    """``heard[start:end]`` lines up with ``played[start + shift : end + shift]``."""

    start: int
    end: int
    shift: int
    correlation: float


def _correlation(a: Samples, b: Samples) -> npt.NDArray[np.float64]:
    """``c[k] = sum(a[n] * b[n + k])`` for every k (negative k wrapped to the end), via FFT."""
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    result: npt.NDArray[np.float64] = np.fft.irfft(np.conj(np.fft.rfft(a, size)) * np.fft.rfft(b, size), size)
    return result


def _best_shift(heard: Samples, played: Samples) -> int:
    """``s`` maximising sum(heard[n] * played[n + s]) over every overlap."""
    correlation = _correlation(heard, played)
    size = len(correlation)
    lags = np.concatenate([np.arange(0, len(played)), np.arange(-(len(heard) - 1), 0)])
    values = np.concatenate([correlation[: len(played)], correlation[size - (len(heard) - 1) :]])
    return int(lags[int(np.argmax(values))])


def _segments(heard: Samples, played: Samples, overall: int) -> list[_Segment]:
    length = round(SEGMENT_SECONDS * ANALYSIS_RATE)
    radius = round(SEARCH_SECONDS * ANALYSIS_RATE)
    # Silence before and after the signal: what is heard first may be the far end's own silence.
    pad = length + radius
    padded = np.concatenate([np.zeros(pad, np.float32), played, np.zeros(pad, np.float32)])
    segments: list[_Segment] = []
    for start in range(0, len(heard) - length + 1, length):  # a tail shorter than a segment is left out
        lo = max(0, start + overall - radius + pad)
        hi = min(len(padded), start + overall + length + radius + pad)
        if start + overall + length <= 0 or start + overall >= len(played) or hi - lo < length:
            continue  # this part of what was heard lies outside what was played
        chunk = heard[start : start + length]
        lag = int(np.argmax(_correlation(chunk, padded[lo:hi])[: hi - lo - length + 1]))
        shift = lo + lag - pad - start
        reference = padded[start + shift + pad : start + shift + pad + length]
        segments.append(_Segment(start, start + length, shift, _pearson(chunk, reference)))
    return segments


def _pearson(a: Samples, b: Samples) -> float:
    x = a.astype(np.float64) - float(a.mean())
    y = b.astype(np.float64) - float(b.mean())
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.dot(x, y) / denominator) if denominator > 0 else 0.0


def _compare_tones(
    signal: TestSignal, heard: Samples, segment: _Segment, played_count: int
) -> dict[int, bool]:
    """For each played tone heard whole inside ``segment``: was it heard at the frequency played?"""
    per_symbol = round(ANALYSIS_RATE * SYMBOL_SECONDS)
    shift = segment.shift
    first = max(0, -(-(segment.start + shift) // per_symbol))
    last = min(played_count // per_symbol, (segment.end + shift) // per_symbol)
    if last <= first:
        return {}
    trim = per_symbol // 10
    offsets = np.arange(first, last) * per_symbol - shift + trim
    windows = np.stack([heard[o : o + per_symbol - 2 * trim] for o in offsets])
    fft_size = 4096
    magnitudes = np.abs(np.fft.rfft(windows * np.hanning(windows.shape[1]), fft_size, axis=1))
    dominant = np.argmax(magnitudes, axis=1) * ANALYSIS_RATE / fft_size
    expected = signal.symbol_frequencies(int(first), int(last - first))
    tolerance = np.maximum(25.0, 0.04 * expected)
    loud = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1)) > _SILENCE_RMS
    matched = loud & (np.abs(dominant - expected) <= tolerance)
    # A silent slot has nothing to compare: it is left out.
    return {
        first + i: bool(ok)
        for i, ok in enumerate(matched)
        if (first + i) % BURST_SYMBOLS != BURST_SYMBOLS - 1
    }


def _round_trip(
    recording: Recording, segments: list[_Segment], frame: int, played_count: int
) -> float | None:
    """Median over heard frames of (arrival - send time of the played frame it echoes)."""
    length = round(SEGMENT_SECONDS * ANALYSIS_RATE)
    shifts = np.full(len(recording.heard) // length + 1, np.iinfo(np.int64).min, dtype=np.int64)
    for segment in segments:
        shifts[segment.start // length] = segment.shift
    last_sample = recording.heard_ends - 1
    shift = shifts[last_sample // length]
    played_index = last_sample + shift
    usable = (shift != np.iinfo(np.int64).min) & (played_index >= 0) & (played_index < played_count)
    if not np.any(usable):
        return None
    sent = recording.sent_times[played_index[usable] // frame]
    return float(np.median(recording.heard_times[usable] - sent))
