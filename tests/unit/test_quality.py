"""The estimated MOS behaves like G.107's E-model: a clean wideband call near the top, loss and delay less."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.media.jitter import JitterStatistics
from worker.media.quality import (
    OPUS_NARROWBAND,
    OPUS_WIDEBAND,
    CallQuality,
    burst_ratio,
    mos_from_r,
    r_factor,
)


def statistics(
    *, played: int = 3000, concealed: int = 0, runs: int | None = None, delay: float = 0.02
) -> JitterStatistics:
    return JitterStatistics(
        packets_received=played,
        packets_expected=played + concealed,
        packets_lost=concealed,
        frames_played=played,
        frames_concealed=concealed,
        concealment_runs=concealed if runs is None else runs,
        interarrival_jitter_seconds=0.002,
        mean_buffer_delay_seconds=delay,
    )


def test_a_clean_call_rates_near_the_top_of_the_scale() -> None:
    quality = CallQuality.from_statistics(statistics(), rtt_seconds=0.04)
    assert quality.mos is not None
    assert 4.3 <= quality.mos <= 4.5


def test_three_percent_loss_rates_lower_than_clean() -> None:
    clean = CallQuality.from_statistics(statistics()).mos
    lossy = CallQuality.from_statistics(statistics(played=2910, concealed=90)).mos
    assert clean is not None
    assert lossy is not None
    assert lossy < clean - 0.3  # 3 % loss is audible: G.107 puts it well below a clean call
    assert lossy > 3.0  # ... but Opus' concealment keeps it a usable call


def test_four_hundred_ms_of_delay_rates_lower_than_clean() -> None:
    clean = CallQuality.from_statistics(statistics(), rtt_seconds=0.04).mos
    slow = CallQuality.from_statistics(statistics(delay=0.4), rtt_seconds=0.04).mos
    assert clean is not None
    assert slow is not None
    assert slow < clean - 0.5


def test_bursty_loss_rates_lower_than_the_same_loss_scattered() -> None:
    scattered = CallQuality.from_statistics(statistics(played=2910, concealed=90, runs=90))
    bursty = CallQuality.from_statistics(statistics(played=2910, concealed=90, runs=9))
    assert bursty.r < scattered.r
    assert burst_ratio(lost=90, runs=90, total=3000) == 1.0
    assert burst_ratio(lost=90, runs=9, total=3000) == pytest.approx(10 * 0.97)


def test_narrowband_opus_rates_lower_than_wideband() -> None:
    assert r_factor(80, 0, codec=OPUS_NARROWBAND) < r_factor(80, 0, codec=OPUS_WIDEBAND)


@given(
    delay=st.floats(0, 2000),
    more_delay=st.floats(0, 500),
    loss=st.floats(0, 100),
    more_loss=st.floats(0, 50),
    burst=st.floats(1, 20),
)
def test_the_rating_never_rises_with_more_loss_or_delay_and_stays_in_bounds(
    delay: float, more_delay: float, loss: float, more_loss: float, burst: float
) -> None:
    base = r_factor(delay, loss, burst=burst)
    assert r_factor(delay + more_delay, loss, burst=burst) <= base
    assert r_factor(delay, min(100.0, loss + more_loss), burst=burst) <= base + 1e-9
    for r in (base, r_factor(delay + more_delay, loss + more_loss, burst=burst)):
        assert 1.0 <= mos_from_r(r) <= 4.5
    assert mos_from_r(r_factor(delay + more_delay, loss, burst=burst)) <= mos_from_r(base) + 1e-9


def test_mos_from_r_follows_g107_annex_b_and_clamps() -> None:
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(math.nan) == 1.0
    assert mos_from_r(150) == 4.5
    assert mos_from_r(50) == pytest.approx(1 + 0.035 * 50 + 50 * -10 * 50 * 7e-6)
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.01)


def test_the_fields_for_call_ended_are_flat_and_rounded() -> None:
    quality = CallQuality.from_statistics(statistics(played=2910, concealed=90), rtt_seconds=0.0512)
    fields = quality.as_fields()
    assert fields["expected"] == 3000
    assert fields["concealed"] == 90
    assert fields["rtt_ms"] == 51.2
    assert fields["jitter_ms"] == 2.0
    assert fields["loss_percent"] == 3.0
    assert isinstance(fields["mos"], float)
    assert set(fields) == {  # call.ended's media quality (worker/lifecycle.py) is built from these
        "expected", "received", "lost", "late", "concealed", "fec", "jitter_ms", "buffer_delay_ms", "rtt_ms",
        "loss_percent", "mos",
    }  # fmt: skip


def test_a_call_that_played_nothing_has_no_rating() -> None:
    quality = CallQuality.from_statistics(JitterStatistics())
    assert quality.mos is None
    assert quality.as_fields()["mos"] is None
    assert quality.rtt_ms is None
