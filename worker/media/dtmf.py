"""Keypad digits from RFC 4733 telephone events: a pure decoder, no I/O, no loop, the clock passed in.

WhatsApp sends the caller's key presses in the media as ``telephone-event/8000`` packets (payload type 126 in
Meta's offer), never as a webhook. A phone sends one *event* per key press, all its packets with the same RTP
timestamp (the moment the key went down) and a growing duration:

* the start, with the marker bit set (duration 0 or one packet's worth);
* updates every ~50 ms while the key is held, the duration growing;
* three end packets (the E bit set, the final duration), sent again in case one is lost.

:class:`DtmfDecoder` turns any subset of those packets, in any order, into one :class:`Digit` per event:

* **When.** A digit is reported when its event ends: at its first end packet; or when a newer event begins
  (a phone sends one event at a time, so the older one is over even if its end packets were lost); or, if
  neither comes, by :meth:`DtmfDecoder.poll` once no packet of it arrived for ``end_timeout_seconds`` (all
  three end packets lost and the caller pressed nothing after). It then carries the longest duration seen.
* **Once.** Events are told apart by their RTP timestamp (and SSRC): repeated end packets, duplicated or late
  packets of an event already reported change nothing. Two presses of the same key are two events with two
  timestamps, so two digits.
* **In order.** Digits come out in the order of their timestamps (the 32-bit timestamp's wrap-around handled
  by serial-number arithmetic; sequence numbers are not used, so theirs does not matter). A packet of an event
  older than the newest one seen that was never reported (its every packet lost but one that came very late)
  is dropped and counted as ``late``: reporting it would put it after a digit pressed after it.

Events 0-9, ``*`` (10), ``#`` (11), ``A``-``D`` (12-15) and flash (16, reported as ``"flash"``) are digits;
other events (modem and call-progress tones, 17-255) are counted as ``ignored`` and dropped.

The decoder reads only ``timestamp``, ``ssrc``, ``marker``, ``payload`` and ``arrival`` of a packet
(:class:`worker.media.jitter.Packet` has them): anything shaped like :class:`TelephoneEventPacket` will do.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

CLOCK_RATE = 8000  # telephone-event/8000: durations count 1/8000 s
DEFAULT_END_TIMEOUT_SECONDS = 0.5  # ten update intervals of 50 ms without a packet: the key is up
EVENT_NAMES = "0123456789*#ABCD"
FLASH = 16
_MAX_DURATION = 0xFFFF  # a longer press is split into segments of this many ticks (RFC 4733 §2.5.1.3)
_REMEMBERED_EVENTS = 64  # timestamps of reported events kept for de-duplication


class TelephoneEventPacket(Protocol):
    """What the decoder reads of an RTP packet (``worker.media.jitter.Packet`` is one)."""

    @property
    def timestamp(self) -> int: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def marker(self) -> bool: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def arrival(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Digit:
    """One key press: ``digit`` is one of ``0-9 * # A B C D`` or ``"flash"``; ``at`` the earliest arrival time
    of its packets (the clock of their ``arrival``); ``timestamp`` its RTP timestamp, of its first segment."""

    digit: str
    duration_seconds: float
    at: float
    timestamp: int


@dataclass(frozen=True, slots=True)
class EventBlock:
    """The payload of one telephone-event packet (RFC 4733 §2.3)."""

    event: int
    end: bool
    volume: int  # 0 to 63, in -dBm0
    duration: int  # in clock ticks since the event began

    @classmethod
    def parse(cls, payload: bytes) -> EventBlock | None:
        """The event block at the start of ``payload``; None if it is shorter than the 4 bytes of one."""
        if len(payload) < 4:
            return None
        return cls(
            event=payload[0],
            end=bool(payload[1] & 0x80),
            volume=payload[1] & 0x3F,
            duration=(payload[2] << 8) | payload[3],
        )

    def encode(self) -> bytes:
        flags = (0x80 if self.end else 0) | (self.volume & 0x3F)
        return bytes((self.event, flags, (self.duration >> 8) & 0xFF, self.duration & 0xFF))


def digit_name(event: int) -> str | None:
    """The digit an event code stands for, or None for an event that is not a key."""
    if 0 <= event < len(EVENT_NAMES):
        return EVENT_NAMES[event]
    return "flash" if event == FLASH else None


def timestamp_newer(a: int, b: int) -> bool:
    """Whether 32-bit RTP timestamp ``a`` is after ``b`` (serial-number arithmetic, wraps at 2**32)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


@dataclass(frozen=True, slots=True)
class DtmfStatistics:
    packets: int  # telephone-event packets fed
    digits: int  # digits reported
    duplicates: int  # packets of an event already reported
    late: int  # packets of an older event never reported: dropped to keep the order
    ignored: int  # events that are not keys (tones 17-255)
    malformed: int  # payloads shorter than one event block
    timed_out: int  # digits reported by poll() because no end packet came


@dataclass(slots=True)
class _Pending:
    ssrc: int
    timestamp: int
    name: str
    duration: int
    first_arrival: float
    last_arrival: float
    segments: int = 0  # long presses: earlier segments of 0xFFFF ticks each


class DtmfDecoder:
    """RFC 4733 events to digits (see the module docstring). One per call; not thread-safe."""

    def __init__(
        self, *, clock_rate: int = CLOCK_RATE, end_timeout_seconds: float = DEFAULT_END_TIMEOUT_SECONDS
    ) -> None:
        if clock_rate <= 0 or end_timeout_seconds <= 0:
            raise ValueError("clock_rate and end_timeout_seconds must be positive")
        self._clock_rate = clock_rate
        self._end_timeout = end_timeout_seconds
        self._pending: _Pending | None = None
        self._newest: dict[int, int] = {}  # ssrc -> newest event timestamp seen
        self._reported: deque[tuple[int, int]] = deque(maxlen=_REMEMBERED_EVENTS)
        self._packets = self._digits = self._duplicates = self._late = 0
        self._ignored = self._malformed = self._timed_out = 0

    @property
    def pending(self) -> bool:
        """Whether an event has begun and not been reported (a :meth:`poll` may report it)."""
        return self._pending is not None

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` would report the pending event for lack of packets (None: nothing pending)."""
        return None if self._pending is None else self._pending.last_arrival + self._end_timeout

    def feed(self, packet: TelephoneEventPacket) -> list[Digit]:
        """Take one telephone-event packet; the digits it completes, oldest first (usually none or one)."""
        self._packets += 1
        block = EventBlock.parse(packet.payload)
        if block is None:
            self._malformed += 1
            return []
        key = (packet.ssrc, packet.timestamp)
        if key in self._reported:
            self._duplicates += 1
            return []
        pending = self._pending
        if pending is not None and (pending.ssrc, pending.timestamp) == key:
            self._update(pending, block, packet.arrival)
            return self._finish() if block.end else []
        newest = self._newest.get(packet.ssrc)
        if newest is not None and not timestamp_newer(packet.timestamp, newest):
            self._late += 1
            return []
        name = digit_name(block.event)
        if name is None:
            self._ignored += 1
            return []
        done: list[Digit] = []
        if pending is not None:
            if self._continues(pending, packet, name):
                pending.timestamp = packet.timestamp
                pending.segments += 1
                pending.duration = 0  # a segment's duration counts from its own timestamp
                self._newest[packet.ssrc] = packet.timestamp
                self._update(pending, block, packet.arrival)
                return self._finish() if block.end else []
            done = self._finish()  # a newer event began: the pending one is over, its end packets lost
        self._newest[packet.ssrc] = packet.timestamp
        self._pending = _Pending(
            packet.ssrc, packet.timestamp, name, block.duration, packet.arrival, packet.arrival
        )
        if block.end:
            done += self._finish()
        return done

    def poll(self, now: float) -> list[Digit]:
        """The pending digit if no packet of it arrived for ``end_timeout_seconds`` before ``now``."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        self._timed_out += 1
        return self._finish()

    def flush(self) -> list[Digit]:
        """The pending digit, whatever its state (the call is over: a key held until the end counts)."""
        return self._finish() if self._pending is not None else []

    def statistics(self) -> DtmfStatistics:
        return DtmfStatistics(
            packets=self._packets,
            digits=self._digits,
            duplicates=self._duplicates,
            late=self._late,
            ignored=self._ignored,
            malformed=self._malformed,
            timed_out=self._timed_out,
        )

    # ------------------------------------------------------------------------------------------ internals
    @staticmethod
    def _update(pending: _Pending, block: EventBlock, arrival: float) -> None:
        pending.duration = max(pending.duration, block.duration)
        pending.first_arrival = min(pending.first_arrival, arrival)
        pending.last_arrival = max(pending.last_arrival, arrival)

    @staticmethod
    def _continues(pending: _Pending, packet: TelephoneEventPacket, name: str) -> bool:
        # RFC 4733 §2.5.1.3: a press longer than 0xFFFF ticks goes on as a new segment, same key, no marker,
        # its timestamp the previous one plus 0xFFFF.
        return (
            not packet.marker
            and name == pending.name
            and packet.ssrc == pending.ssrc
            and packet.timestamp == (pending.timestamp + _MAX_DURATION) & 0xFFFFFFFF
        )

    def _finish(self) -> list[Digit]:
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._reported.append((pending.ssrc, pending.timestamp))
        self._digits += 1
        ticks = pending.segments * _MAX_DURATION + pending.duration
        first_timestamp = (pending.timestamp - pending.segments * _MAX_DURATION) & 0xFFFFFFFF
        return [Digit(pending.name, ticks / self._clock_rate, pending.first_arrival, first_timestamp)]
