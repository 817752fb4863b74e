"""The jitter buffer's specification: what each tick plays for a given sequence of arrivals.

Every test drives the buffer with a simulated clock: packets are put at their arrival time and the playout
tick pops every 20 ms, in time order, exactly as the worker's playout clock does.
"""

from __future__ import annotations

from worker.media.jitter import JitterBuffer, JitterSettings, Packet, Playout, PlayoutKind

TICK = 0.020
SPEECH = bytes([0x78]) + bytes(60)  # TOC: SILK-only wideband 20 ms, one frame; 61 bytes: not silent


def packet(
    index: int, arrival: float, *, payload: bytes = SPEECH, seq0: int = 1000, ts0: int = 5000
) -> Packet:
    return Packet(
        sequence=(seq0 + index) % 65536,
        timestamp=(ts0 + 960 * index) % 2**32,
        ssrc=0x1234,
        marker=index == 0,
        payload=payload,
        arrival=arrival,
    )


def run(buffer: JitterBuffer, packets: list[Packet], ticks: int, start: float = 0.0) -> list[Playout]:
    """Put each packet at its arrival, pop at every tick, in time order."""
    pending = sorted(packets, key=lambda p: p.arrival)
    out = []
    for tick in range(ticks):
        now = start + tick * TICK + 0.0105  # the tick's phase against the sender's 20 ms is arbitrary
        while pending and pending[0].arrival <= now:
            buffer.put(pending.pop(0))
        out.append(buffer.pop(now))
    return out


def test_a_clean_link_plays_every_packet_in_order_with_about_one_frame_of_delay() -> None:
    buffer = JitterBuffer()
    out = run(buffer, [packet(i, i * TICK) for i in range(100)], 100)
    audio = [p for p in out if p.kind is PlayoutKind.AUDIO]
    assert len(audio) == 100
    stats = buffer.statistics()
    assert stats.packets_lost == stats.packets_late == stats.frames_concealed == 0
    assert stats.mean_buffer_delay_seconds <= 0.030


def test_a_lost_packet_is_recovered_with_fec_from_the_next_one_when_that_is_buffered() -> None:
    buffer = JitterBuffer(JitterSettings(min_target_delay=0.04))  # two frames buffered: the next one is here
    packets = [packet(i, i * TICK) for i in range(20) if i != 10]
    out = run(buffer, packets, 22)
    kinds = [p.kind for p in out if p.kind is not PlayoutKind.SILENCE]
    assert kinds.count(PlayoutKind.FEC) == 1
    fec = next(p for p in out if p.kind is PlayoutKind.FEC)
    assert fec.payload == packets[10].payload  # the packet after the lost one carries it
    assert buffer.statistics().packets_lost == 1
