"""The test signal can be recognised after a delay, and the analysis refuses what was not played."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.signal import (
    ANALYSIS_RATE,
    BURST_SYMBOLS,
    FREQUENCIES_HZ,
    SEND_RATE,
    Recording,
    TestSignal,
    analyse,
    downsample_48k_to_16k,
)

FRAME = 320  # 20 ms at 16 kHz


def _echo(
    signal: TestSignal,
    *,
    seconds: float,
    delay_seconds: float,
    heard_signal: TestSignal | None = None,
    noise: float = 0.0,
    gain: float = 1.0,
) -> Recording:
    """What a phone would record if the far end echoed it with ``delay_seconds`` (frames on one clock)."""
    frames = int(seconds / 0.02)
    sent_times = 100.0 + np.arange(frames) * 0.02
    source = heard_signal or signal
    heard = downsample_48k_to_16k(source.render(0, frames * 960, SEND_RATE)) * gain
    if noise:
        heard = heard + np.random.default_rng(7).normal(0, noise, len(heard)).astype(np.float32)
    heard_times = sent_times + delay_seconds
    return Recording(
        sent_times=sent_times,
        heard=heard.astype(np.float32),
        heard_ends=np.arange(1, frames + 1, dtype=np.int64) * FRAME,
        heard_times=heard_times,
    )


def test_an_echo_matches_and_its_round_trip_is_measured() -> None:
    signal = TestSignal(seed=3)
    report = analyse(signal, _echo(signal, seconds=3.0, delay_seconds=0.17, noise=0.02, gain=0.5))
    assert report.matched
    assert report.correlation > 0.9
    assert report.windows_compared >= 25
    assert report.match_ratio == 1.0
    assert report.round_trip_seconds == pytest.approx(0.17, abs=0.001)


def test_the_alignment_finds_where_the_heard_audio_started() -> None:
    signal = TestSignal(seed=3)
    full = _echo(signal, seconds=4.0, delay_seconds=0.2)
    skip = 37 * FRAME  # the first 740 ms were lost
    late = Recording(
        sent_times=full.sent_times,
        heard=full.heard[skip:],
        heard_ends=full.heard_ends[37:] - skip,
        heard_times=full.heard_times[37:],
    )
    report = analyse(signal, late)
    assert report.matched
    assert report.offset_seconds == pytest.approx(0.74, abs=1e-6)
    assert report.round_trip_seconds == pytest.approx(0.2, abs=0.001)


def test_another_signal_silence_or_noise_does_not_match() -> None:
    signal = TestSignal(seed=3)
    other = analyse(signal, _echo(signal, seconds=3.0, delay_seconds=0.1, heard_signal=TestSignal(seed=4)))
    assert not other.matched
    assert other.match_ratio < 0.5
    assert other.round_trip_seconds is None

    silent = analyse(signal, _echo(signal, seconds=3.0, delay_seconds=0.1, gain=0.0))
    assert not silent.matched
    assert silent.windows_matched == 0

    noisy = analyse(signal, _echo(signal, seconds=3.0, delay_seconds=0.1, gain=0.0, noise=0.3))
    assert not noisy.matched


def test_nothing_heard_is_an_empty_report() -> None:
    signal = TestSignal()
    empty = Recording(
        sent_times=np.arange(10, dtype=np.float64),
        heard=np.zeros(0, dtype=np.float32),
        heard_ends=np.zeros(0, dtype=np.int64),
        heard_times=np.zeros(0, dtype=np.float64),
    )
    report = analyse(signal, empty)
    assert not report.matched
    assert report.round_trip_seconds is None
    assert report.seconds_played == pytest.approx(0.2)


def test_the_signal_is_deterministic_rate_independent_and_never_repeats_a_tone() -> None:
    a, b = TestSignal(seed=9), TestSignal(seed=9)
    assert np.array_equal(a.render(1000, 960, SEND_RATE), b.render(1000, 960, SEND_RATE))
    assert not np.array_equal(a.symbols[:50], TestSignal(seed=10).symbols[:50])
    assert np.all(a.symbols[1:] != a.symbols[:-1])
    assert set(a.symbol_frequencies(0, 500)) <= set(FREQUENCIES_HZ)
    # Each 100 ms symbol is a tone at its listed frequency, but every sixth is silent (a burst follows).
    samples = a.render(0, 24 * 1600, ANALYSIS_RATE).reshape(24, 1600)
    spectrum = np.abs(np.fft.rfft(samples, 16_000, axis=1))
    silent = np.arange(24) % BURST_SYMBOLS == BURST_SYMBOLS - 1
    assert np.all(np.max(np.abs(samples[silent]), axis=1) == 0)
    tones = np.argmax(spectrum, axis=1).astype(float)
    assert np.array_equal(tones[~silent], a.symbol_frequencies(0, 24)[~silent])
    assert float(np.max(np.abs(samples))) <= 0.3 + 1e-6


@pytest.mark.parametrize(("jump_seconds", "round_trip"), [(2.0, 0.1), (0.5, 0.35)])
def test_an_echo_whose_delay_jumps_mid_call_still_matches(jump_seconds: float, round_trip: float) -> None:
    """A jitter buffer that grows after a loss moves the echo later for good: each half second re-aligns."""
    signal = TestSignal(seed=5)
    frames = 150  # 3 s heard
    played = downsample_48k_to_16k(signal.render(0, (frames + 20) * 960, SEND_RATE))
    jump, gap = round(jump_seconds * ANALYSIS_RATE), round(0.25 * ANALYSIS_RATE)
    # Echo with 100 ms round trip, then 250 ms of nothing while the buffer grows, then the echo goes on later.
    heard = np.concatenate([played[:jump], np.zeros(gap, np.float32), played[jump : frames * FRAME - gap]])
    sent_times = 100.0 + np.arange(frames + 20) * 0.02
    ends = np.arange(1, frames + 1, dtype=np.int64) * FRAME
    report = analyse(signal, Recording(sent_times, heard, ends, sent_times[:frames] + 0.1))
    assert report.matched, report
    assert report.match_ratio >= 0.85
    # The median frame tells the round trip that held most of the time.
    assert report.round_trip_seconds == pytest.approx(round_trip, abs=0.011)  # to within half a frame


def test_silence_before_the_echo_is_not_held_against_it() -> None:
    """The far end may send silence before the echo arrives: that part maps to before the signal began."""
    signal = TestSignal(seed=2)
    frames = 100
    lead = round(0.133 * ANALYSIS_RATE)
    played = downsample_48k_to_16k(signal.render(0, frames * 960, SEND_RATE))
    heard = np.concatenate([np.zeros(lead, np.float32), played[: frames * FRAME - lead]])
    sent_times = 100.0 + np.arange(frames) * 0.02
    ends = np.arange(1, frames + 1, dtype=np.int64) * FRAME
    report = analyse(signal, Recording(sent_times, heard, ends, sent_times + 0.2))
    assert report.matched, report
    assert report.windows_matched == report.windows_compared
    assert report.offset_seconds == pytest.approx(-0.133, abs=1e-4)
