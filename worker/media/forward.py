"""One sending leg's RTP timeline: its own encoded audio and the Opus packets forwarded from another leg.

Pure (no asyncio, no aiortc): times are arguments, so a test plays a minute of a jittery source at once.

Theory of operation
-------------------
A relay can forward a leg's Opus packets to the other leg without decoding them when both negotiated
Opus/48000 (handing a call to a person, worker/handoff/relay.py). The sending leg keeps its own SSRC and its
own sequence numbers (aiortc's sender numbers every packet it sends, one by one), so only the *timestamps*
are ours to rewrite: a packet's timestamp is ``pts`` here, which aiortc adds to its random origin.

* **Forwarded packets keep the source's timing.** The first forwarded packet of a run is *anchored*: it gets
  the timestamp that continues the leg's timeline (see below) and every later packet of the same source gets
  ``its timestamp + the same offset``. So the source's own gaps stay gaps of the same length: a lost packet
  (the far end's jitter buffer conceals or rebuilds it by FEC from the next packet, both of which go by
  timestamp), a DTX pause, the numbers an RFC 4733 event used (events are never forwarded as audio: the
  media session routes them elsewhere, so they never reach :meth:`SendTimeline.forwarded`).
* **Reordering.** A packet older (by sequence number) than the newest one forwarded is still forwarded with
  its own timestamp when it is at most :data:`REORDER_WINDOW` packets late: the sequence numbers on the wire
  are in sending order, but the receivers (a browser's NetEQ, the phone) place audio by timestamp and either
  still use it or drop it as late. Older ones, and duplicates, are dropped here.
* **Jumps re-anchor.** A new SSRC, a sequence jump over :data:`MAX_DROPOUT`, or a timestamp step that
  wall-clock time cannot explain (backwards, or more than :data:`MAX_TIMESTAMP_LEAD_SECONDS` ahead of the time
  that passed since the previous packet) starts a new anchor: the receiver sees the timeline continue by the
  time that passed, never a jump of minutes or a step back.
* **Switching paths never jumps either.** When the leg goes from forwarded packets to its own encoded frames
  (hold audio, a fall-back to PCM) or back, the next packet *continues* the timeline: right after the last
  one (``next_pts``), or later by the wall-clock time that passed since it, rounded to whole 20 ms frames.
  An encoded run is contiguous (one frame per 20 ms tick), exactly as before forwarding existed.

:attr:`Stamp.talkspurt` is True where the timeline does not continue (the first packet, a pause, a switch,
a source's lost packet): the RTP marker bit as RFC 3551 means it for audio, since the sequence numbers on the
wire stay contiguous and a receiver cannot tell such a gap from a pause. (``seam.MarkerSeam`` sets the bit
by the same rule on the wire.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker.media.jitter import opus_packet_samples

CLOCK_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
REORDER_WINDOW = 5  # packets: older ones are past any receiver's playout point on a good link
MAX_DROPOUT = 3000  # sequence numbers (RFC 3550 A.1): a bigger step is a restarted source
MAX_TIMESTAMP_LEAD_SECONDS = 1.0  # a timestamp step this far ahead of the wall-clock step is a new timeline


class Origin(enum.Enum):
    ENCODED = "encoded"
    FORWARDED = "forwarded"


@dataclass(frozen=True, slots=True)
class Stamp:
    pts: int  # 48 kHz units, mod 2**32
    talkspurt: bool  # the timeline starts anew here (RTP marker)


def opus_samples(payload: bytes) -> int:
    """The 48 kHz samples an Opus packet covers (RFC 6716 3.1: TOC byte, frame count); 960 if unreadable."""
    samples = opus_packet_samples(payload)
    return FRAME_SAMPLES if samples is None else samples


def _seq_delta(new: int, old: int) -> int:
    return (new - old + 0x8000) % 0x10000 - 0x8000


def _ts_delta(new: int, old: int) -> int:
    return (new - old + 0x8000_0000) % 0x1_0000_0000 - 0x8000_0000


@dataclass(slots=True)
class _Anchor:
    ssrc: int
    offset: int  # pts = source timestamp + offset
    sequence: int  # newest source sequence number forwarded
    timestamp: int  # ... and its timestamp
    arrival: float


class SendTimeline:
    """The timestamps of one sending leg. :meth:`encoded` for each of its own frames, :meth:`forwarded` for
    each packet forwarded from another leg (None: drop it); both take the current monotonic time."""

    def __init__(self) -> None:
        self.next_pts = 0  # where the timeline continues without a gap
        self._last: Origin | None = None
        self._last_pts = 0
        self._last_sent_at = 0.0
        self._anchor: _Anchor | None = None
        self.forwarded_packets = 0
        self.dropped_packets = 0  # duplicates and packets too late to forward
        self.reordered_packets = 0  # forwarded although older than one already forwarded
        self.anchors = 0  # runs of forwarded packets (a switch, a new source, a jump)

    @property
    def last_origin(self) -> Origin | None:
        return self._last

    def encoded(self, now: float, samples: int = FRAME_SAMPLES) -> Stamp:
        """The stamp of the leg's own next frame (one per tick while encoding)."""
        talkspurt = self._last is not Origin.ENCODED
        pts = self._continue(now) if talkspurt else self.next_pts
        self._sent(Origin.ENCODED, pts, samples, now)
        return Stamp(pts, talkspurt)

    def forwarded(self, ssrc: int, sequence: int, timestamp: int, payload: bytes, now: float) -> Stamp | None:
        """The stamp of a packet from the other leg (``timestamp`` in its 48 kHz clock), None to drop it."""
        anchor = self._anchor
        samples = opus_samples(payload)
        if anchor is None or self._last is not Origin.FORWARDED or anchor.ssrc != ssrc:
            return self._anchor_at(ssrc, sequence, timestamp, samples, now)
        step = _seq_delta(sequence, anchor.sequence)
        if step <= 0:
            return self._late(anchor, step, timestamp, samples, now)
        advance = _ts_delta(timestamp, anchor.timestamp)
        lead = advance - (now - anchor.arrival) * CLOCK_RATE
        if step > MAX_DROPOUT or advance <= 0 or lead > MAX_TIMESTAMP_LEAD_SECONDS * CLOCK_RATE:
            return self._anchor_at(ssrc, sequence, timestamp, samples, now)
        pts = (timestamp + anchor.offset) % 0x1_0000_0000
        talkspurt = _ts_delta(pts, self.next_pts) > 0
        anchor.sequence, anchor.timestamp, anchor.arrival = sequence, timestamp, now
        self._sent(Origin.FORWARDED, pts, samples, now)
        self.forwarded_packets += 1
        return Stamp(pts, talkspurt)

    # ----------------------------------------------------------------------------------- internals
    def _anchor_at(self, ssrc: int, sequence: int, timestamp: int, samples: int, now: float) -> Stamp:
        pts = self._continue(now)
        self._anchor = _Anchor(ssrc, (pts - timestamp) % 0x1_0000_0000, sequence, timestamp, now)
        self.anchors += 1
        self.forwarded_packets += 1
        self._sent(Origin.FORWARDED, pts, samples, now)
        return Stamp(pts, True)

    def _late(self, anchor: _Anchor, step: int, timestamp: int, samples: int, now: float) -> Stamp | None:
        if step == 0 or -step > REORDER_WINDOW or _ts_delta(timestamp, anchor.timestamp) >= 0:
            self.dropped_packets += 1
            return None
        self.reordered_packets += 1
        self.forwarded_packets += 1
        # Not _sent(): the timeline's end stays where the newest packet put it.
        return Stamp((timestamp + anchor.offset) % 0x1_0000_0000, False)

    def _continue(self, now: float) -> int:
        """The pts that continues the timeline: right after the last packet, or by the time that passed."""
        if self._last is None:
            return self.next_pts
        elapsed_frames = round((now - self._last_sent_at) * CLOCK_RATE / FRAME_SAMPLES)
        last_pts = self._last_pts
        by_time = (last_pts + elapsed_frames * FRAME_SAMPLES) % 0x1_0000_0000
        return by_time if _ts_delta(by_time, self.next_pts) > 0 else self.next_pts

    def _sent(self, origin: Origin, pts: int, samples: int, now: float) -> None:
        self._last = origin
        self._last_pts = pts
        self._last_sent_at = now
        self.next_pts = (pts + samples) % 0x1_0000_0000
