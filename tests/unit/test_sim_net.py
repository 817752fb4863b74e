"""The phone's network model, seeded: loss rates, burst lengths, jitter bounds, order, no invented packets."""

from __future__ import annotations

import itertools
import random

import pytest

from simulator.net import Link, LinkProfile, NetProfile, Outage, describe, parse_link, parse_net

RTP = bytes([0x80, 111]) + bytes(30)  # first byte 128: RTP
DTLS = bytes([22, 0xFE, 0xFD]) + bytes(30)  # first byte 22: a DTLS handshake record


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(
    profile: LinkProfile, count: int, seed: int = 7, datagram: bytes = RTP
) -> tuple[Link, list[float | None]]:
    """``count`` datagrams sent 20 ms apart; each one's departure time (None = lost)."""
    clock = FakeClock()
    link = Link(profile, random.Random(seed), clock)
    out = []
    for i in range(count):
        clock.now = 100.0 + i * 0.02 + 1e-9  # exact steps, just past each 20 ms tick
        out.append(link.admit(datagram))
    return link, out


def test_a_clean_link_delivers_everything_at_once_in_order() -> None:
    link, out = run(LinkProfile(), 1000)
    assert out == [pytest.approx(100.0 + 0.02 * i) for i in range(1000)]
    assert link.stats.lost == 0
    assert not LinkProfile().impaired


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_loss_rate_is_within_bounds(seed: int) -> None:
    link, out = run(LinkProfile(loss=0.03), 20_000, seed)
    lost = out.count(None)
    assert 0.025 * 20_000 < lost < 0.035 * 20_000  # 3 % +- 5 sigma
    assert link.stats.lost == lost == link.stats.datagrams - sum(1 for t in out if t is not None)


def test_the_same_seed_loses_the_same_datagrams() -> None:
    _, first = run(LinkProfile(loss=0.1, jitter_seconds=0.03), 500, seed=11)
    _, again = run(LinkProfile(loss=0.1, jitter_seconds=0.03), 500, seed=11)
    _, other = run(LinkProfile(loss=0.1, jitter_seconds=0.03), 500, seed=12)
    assert first == again
    assert first != other


def test_burst_loss_comes_in_runs_of_the_mean_length() -> None:
    link, out = run(LinkProfile(burst_loss=0.05, burst_length=4), 50_000)
    lost = out.count(None)
    assert 0.04 * 50_000 < lost < 0.06 * 50_000
    runs = link.stats.burst_runs
    assert len(runs) > 300
    assert 3.5 < sum(runs) / len(runs) < 4.5  # geometric with mean 4
    assert max(runs) > 10  # geometric, not fixed
    # Losses are bunched: consecutive losses far more often than independent 5 % loss would give (0.25 %).
    pairs = sum(1 for a, b in itertools.pairwise(out) if a is None and b is None)
    assert pairs > 0.02 * 50_000
    assert link.stats.lost_in_bursts == lost


def test_jitter_stays_within_bounds_and_keeps_order() -> None:
    link, out = run(LinkProfile(delay_seconds=0.05, jitter_seconds=0.03), 5000)
    sent = [100.0 + 0.02 * i for i in range(5000)]
    delays = [d - s for d, s in zip(out, sent, strict=True) if d is not None]
    assert min(delays) >= 0.05 - 1e-9
    # FIFO can add to a draw only what the previous datagram had beyond 20 ms: at most 30 - 20 ms.
    assert max(delays) <= 0.05 + 0.03 + 1e-9
    assert 0.05 + 0.012 < sum(delays) / len(delays) < 0.05 + 0.022  # spread, not constant
    departures = [d for d in out if d is not None]
    assert departures == sorted(departures)
    assert link.stats.reordered == 0


def test_reordered_datagrams_are_overtaken_and_nothing_else_moves() -> None:
    link, out = run(LinkProfile(reorder=0.05, reorder_delay_seconds=0.05), 4000)
    assert 0.03 * 4000 < link.stats.reordered < 0.07 * 4000
    departures = [d for d in out if d is not None]
    assert len(departures) == 4000  # none lost, none invented
    overtaken = sum(
        1 for i, d in enumerate(departures) if any(later < d for later in departures[i + 1 : i + 4])
    )
    assert overtaken == link.stats.reordered


def test_outages_lose_everything_inside_the_window_only() -> None:
    link, out = run(LinkProfile(outages=(Outage(1.0, 0.12),)), 100)
    lost = [i for i, d in enumerate(out) if d is None]
    assert lost == [50, 51, 52, 53, 54, 55]  # 1.00 .. 1.10 s: six 20 ms datagrams
    assert link.stats.lost_in_outages == 6


def test_a_run_time_outage_starts_now() -> None:
    clock = FakeClock()
    link = Link(LinkProfile(), random.Random(1), clock)
    assert link.admit(RTP) is not None
    link.outage(0.1)
    assert link.admit(RTP) is None
    clock.now += 0.099
    assert link.admit(RTP) is None
    clock.now += 0.002
    assert link.admit(RTP) == pytest.approx(clock.now)


def test_dtls_is_delayed_but_never_lost_unless_asked() -> None:
    bad = LinkProfile(loss=0.5, burst_loss=0.3, jitter_seconds=0.01, outages=(Outage(0, 10),))
    link, out = run(bad, 200, datagram=DTLS)
    assert None not in out
    assert link.stats.lost == 0
    _, unprotected = run(LinkProfile(loss=0.5, protect_dtls=False), 200, datagram=DTLS)
    assert unprotected.count(None) > 50


def test_every_datagram_leaves_at_most_once_and_never_before_it_was_sent() -> None:
    profile = LinkProfile(loss=0.05, burst_loss=0.02, jitter_seconds=0.04, reorder=0.02, delay_seconds=0.01)
    link, out = run(profile, 10_000)
    sent = [100.0 + 0.02 * i for i in range(10_000)]
    assert all(d is None or d >= s for d, s in zip(out, sent, strict=True))
    assert link.stats.datagrams == 10_000
    assert sum(1 for d in out if d is not None) + link.stats.lost == 10_000


def test_spec_parsing() -> None:
    profile = parse_link("loss=3%,jitter=30ms,delay=0.02,burst=2%,burst_len=4,reorder=1%,outage=5s:120ms")
    assert profile == LinkProfile(
        loss=0.03,
        jitter_seconds=0.03,
        delay_seconds=0.02,
        burst_loss=0.02,
        burst_length=4.0,
        reorder=0.01,
        outages=(Outage(5.0, 0.12),),
    )
    assert parse_link(describe(profile)) == profile
    assert parse_link("clean") == LinkProfile()
    assert describe(LinkProfile()) == "clean"


def test_per_direction_specs_override_the_common_one_key_by_key() -> None:
    net = parse_net("loss=3%,jitter=30ms", up="loss=5%", down="jitter=0")
    assert net == NetProfile(
        up=LinkProfile(loss=0.05, jitter_seconds=0.03), down=LinkProfile(loss=0.03, jitter_seconds=0.0)
    )
    assert net.impaired
    assert not parse_net().impaired


@pytest.mark.parametrize(
    "spec",
    ["loss=3", "loss", "speed=3", "jitter=-1ms", "burst_len=0.5", "burst=100%", "outage=5s", "loss=x%"],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="network"):
        parse_link(spec)
