"""Keypad presses as a phone sends them: RFC 4733 telephone-event packets, planned in time. Pure.

For each digit the phone sends, on the audio stream's SSRC with the telephone-event payload type negotiated in
the SDP (126 in Meta's offer, clock 8000 Hz):

* a **start** packet with the RTP marker bit, then an **update** every 50 ms, each with the duration so far
  (the duration covers up to the next update, so the first packet says 50 ms), all with the *same RTP
  timestamp*: the event's start;
* when the key is released, **three end packets** (E bit set, the final duration), 20 ms apart so one short
  loss burst cannot take all three;
* then a silent **gap** before the next digit, which gets a new timestamp (the audio clock moved on).

Sequence numbers are not planned here: the packets go into the audio stream's sequence, interleaved with the
audio packets, by the phone's RTP stream (:mod:`simulator.wiretap`). Timestamps are in the audio stream's
units (the event starts at the audio's current RTP timestamp), durations in the telephone-event clock's.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15, "!": 16}
DIGITS = {code: digit for digit, code in EVENTS.items()}
EVENT_CLOCK = 8000
UPDATE_SECONDS = 0.05
END_PACKETS = 3
END_SPACING_SECONDS = 0.02
VOLUME = 10  # -10 dBm0
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One telephone-event packet of a planned press, ``at`` seconds after the digit's key went down."""

    at: float
    event: int
    end: bool
    duration: int  # in EVENT_CLOCK units
    marker: bool

    def payload(self) -> bytes:
        """The 4-byte RFC 4733 payload: event, E|R|volume, duration."""
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | VOLUME, min(self.duration, 0xFFFF))


def parse_digits(text: str) -> str:
    """Validate a digit string (``0-9 * # A-D``, spaces ignored); ValueError on anything else."""
    digits = text.replace(" ", "").upper()
    bad = sorted({d for d in digits if d not in EVENTS or d == "!"})
    if bad:
        raise ValueError(f"DTMF digits are 0-9 * # A-D, not {''.join(bad)!r}")
    return digits


def plan_press(event: int, tone_seconds: float) -> list[EventPacket]:
    """The packets of one key press held ``tone_seconds`` (at least one update interval)."""
    if not 0 <= event <= 255:
        raise ValueError(f"event {event} out of range")
    tone = max(tone_seconds, UPDATE_SECONDS)
    total = round(tone * EVENT_CLOCK)
    packets: list[EventPacket] = []
    k = 0
    while k * UPDATE_SECONDS < tone - 1e-9:
        at = k * UPDATE_SECONDS
        duration = min(total, round((at + UPDATE_SECONDS) * EVENT_CLOCK))
        packets.append(EventPacket(at, event, end=False, duration=duration, marker=k == 0))
        k += 1
    packets += [
        EventPacket(tone + i * END_SPACING_SECONDS, event, end=True, duration=total, marker=False)
        for i in range(END_PACKETS)
    ]
    return packets


def press_seconds(tone_seconds: float) -> float:
    """How long one press takes on the wire, from the start packet to the last end packet."""
    return max(tone_seconds, UPDATE_SECONDS) + (END_PACKETS - 1) * END_SPACING_SECONDS


def telephone_event_pt(sdp: str, clock: int = EVENT_CLOCK) -> int | None:
    """The payload type of ``telephone-event/<clock>`` in ``sdp``, or None."""
    for pt, name, rate in _RTPMAP.findall(sdp):
        if name.lower() == "telephone-event" and int(rate) == clock:
            return int(pt)
    return None


def codec_pt(sdp: str, name: str) -> int | None:
    """The first payload type of codec ``name`` (e.g. ``opus``) in ``sdp``, or None."""
    for pt, codec, _ in _RTPMAP.findall(sdp):
        if codec.lower() == name.lower():
            return int(pt)
    return None


# ----------------------------------------------------------------------------------- RTP, minimal
@dataclass(frozen=True, slots=True)
class RtpHeader:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def rtp_packet(
    payload_type: int, sequence_number: int, timestamp: int, ssrc: int, marker: bool, payload: bytes
) -> bytes:
    """A plain RTP packet (version 2, no CSRC, no extension)."""
    return (
        struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            sequence_number & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
        )
        + payload
    )


def parse_rtp(data: bytes) -> RtpHeader:
    """The header fields and payload of an RTP packet (CSRCs, extension and padding skipped)."""
    if len(data) < 12 or data[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < offset + 4:
            raise ValueError("truncated RTP extension")
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data) - (data[-1] if first & 0x20 else 0)
    if offset > end:
        raise ValueError("truncated RTP packet")
    return RtpHeader(second & 0x7F, seq, ts, ssrc, bool(second & 0x80), data[offset:end])


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str:
        return DIGITS.get(self.event, f"event {self.event}")


def parse_event(payload: bytes) -> TelephoneEvent:
    if len(payload) < 4:
        raise ValueError("a telephone-event payload has 4 bytes")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def add_telephone_event(sdp: str, pt: int) -> str:
    """``sdp`` (one audio section) with ``telephone-event/8000`` as ``pt`` added after Opus, CRLF. aiortc's
    own SDP never has it: a business that wants digits adds it back to its answer or offer."""
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if telephone_event_pt(sdp) is not None:
        return "".join(f"{line}\r\n" for line in lines)
    out: list[str] = []
    for line in lines:
        out.append(f"{line} {pt}" if line.startswith("m=audio ") else line)
        if line.lower().startswith("a=rtpmap:") and " opus/" in line.lower():
            out.append(f"a=rtpmap:{pt} telephone-event/8000")
    return "".join(f"{line}\r\n" for line in out)


class DigitCollector:
    """The receiving end, minimal: one digit per RTP timestamp, in the order the presses began (enough for
    the simulator's reference business; callhook's own decoder is in the worker)."""

    def __init__(self) -> None:
        self.digits = ""
        self._seen: set[int] = set()

    def packet(self, header: RtpHeader) -> None:
        if header.timestamp in self._seen:
            return
        try:
            event = parse_event(header.payload)
        except ValueError:
            return
        self._seen.add(header.timestamp)
        self.digits += event.digit if event.event in DIGITS else "?"
