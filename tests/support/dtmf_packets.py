"""RFC 4733 packets as a phone sends them, for tests of the keypad decoder and what sits on it."""

from __future__ import annotations

from worker.media.dtmf import EventBlock
from worker.media.jitter import Packet

__all__ = ["SSRC", "Packet", "press"]

SSRC = 0x1234ABCD
UPDATE_SECONDS = 0.05  # a phone's update interval
TICKS_PER_UPDATE = 400  # 50 ms at 8 kHz


def press(
    event: int, timestamp: int, *, at: float = 0.0, updates: int = 3, sequence: int = 0, ssrc: int = SSRC
) -> list[Packet]:
    """The packets a phone sends for one key press: start (marker), ``updates`` updates, three end packets."""
    packets = [Packet(sequence, timestamp, ssrc, True, EventBlock(event, False, 10, 0).encode(), at)]
    for n in range(1, updates + 1):
        block = EventBlock(event, False, 10, n * TICKS_PER_UPDATE)
        packets.append(Packet(sequence + n, timestamp, ssrc, False, block.encode(), at + n * UPDATE_SECONDS))
    final = EventBlock(event, True, 10, (updates + 1) * TICKS_PER_UPDATE)
    end_at = at + (updates + 1) * UPDATE_SECONDS
    for n in range(3):
        end_sequence = (sequence + updates + 1 + n) & 0xFFFF
        packets.append(Packet(end_sequence, timestamp, ssrc, False, final.encode(), end_at))
    return packets
