"""The sending leg's timeline (worker/media/forward.py): forwarded packets keep the source's timing, switches
and jumps never break the timeline, duplicates and stale packets are dropped. Pure: no loop, no sockets."""

from __future__ import annotations

import itertools

from worker.media.forward import FRAME_SAMPLES, SendTimeline, Stamp, opus_samples

OPUS_20MS = bytes([0x78, 0x01, 0x02])  # TOC: config 15 (hybrid FB 20 ms), one frame
SRC_SSRC = 0xABC


def forward(
    timeline: SendTimeline, sequence: int, timestamp: int, now: float, ssrc: int = SRC_SSRC
) -> Stamp | None:
    return timeline.forwarded(ssrc, sequence, timestamp, OPUS_20MS, now)


def test_opus_samples_reads_the_toc() -> None:
    assert opus_samples(OPUS_20MS) == 960
    assert opus_samples(bytes([0x78 | 0x01, 0])) == 1920  # two 20 ms frames
    assert opus_samples(bytes([0x18])) == 2880  # SILK 60 ms
    assert opus_samples(bytes([0x08])) == 960  # SILK 20 ms
    assert opus_samples(bytes([0xF8 | 0x03, 0x03])) == 2880  # CELT 20 ms, three frames
    assert opus_samples(b"") == FRAME_SAMPLES


def test_encoded_frames_are_contiguous_and_only_the_first_is_a_talkspurt() -> None:
    timeline = SendTimeline()
    stamps = [timeline.encoded(n * 0.020) for n in range(5)]
    assert [s.pts for s in stamps] == [0, 960, 1920, 2880, 3840]
    assert [s.talkspurt for s in stamps] == [True, False, False, False, False]


def test_forwarded_packets_keep_the_source_timing_with_a_new_origin() -> None:
    timeline = SendTimeline()
    for n in range(3):
        timeline.encoded(n * 0.020)
    first = forward(timeline, 5000, 777_000, 0.060)
    assert first == Stamp(2880, True)  # continues right after the encoded frames
    # A lost packet (5001) stays a gap of one frame (a marked one: our sequence numbers hide the loss, so to
    # the receiver it is a pause); the next ones follow the source's timestamps.
    assert forward(timeline, 5002, 777_000 + 1920, 0.100) == Stamp(2880 + 1920, True)
    assert forward(timeline, 5003, 777_000 + 2880, 0.120) == Stamp(2880 + 2880, False)
    # A talkspurt after DTX: a timestamp gap.
    assert forward(timeline, 5004, 777_000 + 2880 + 960 * 20, 0.520) == Stamp(2880 + 2880 + 960 * 20, True)
    assert timeline.forwarded_packets == 4


def test_reordered_packets_within_the_window_keep_their_own_timestamp_duplicates_are_dropped() -> None:
    timeline = SendTimeline()
    forward(timeline, 10, 0, 0.0)
    forward(timeline, 12, 1920, 0.040)
    # The first packet anchored source timestamp 0 at pts 0: pts == source timestamp from here on.
    assert forward(timeline, 11, 960, 0.045) == Stamp(960, False)  # late, but in its own place
    assert forward(timeline, 12, 1920, 0.050) is None  # duplicate
    assert forward(timeline, 2, 960 * -8 % 2**32, 0.060) is None  # far too old
    assert (timeline.reordered_packets, timeline.dropped_packets) == (1, 2)
    assert forward(timeline, 13, 2880, 0.060) == Stamp(2880, False)


def test_a_new_ssrc_or_a_timestamp_jump_continues_the_timeline_by_the_time_that_passed() -> None:
    timeline = SendTimeline()
    forward(timeline, 100, 50_000, 0.0)
    forward(timeline, 101, 50_960, 0.020)
    # The source restarted: another SSRC, any numbers. The timeline goes on from 1920, 100 ms later.
    restarted = forward(timeline, 7, 9_000_000, 0.120, ssrc=0xDEF)
    assert restarted == Stamp(960 + 5 * 960, True)
    # A timestamp leap of an hour within the same stream: re-anchored, not an hour's jump.
    leap = forward(timeline, 8, 9_000_000 + 48000 * 3600, 0.140, ssrc=0xDEF)
    assert leap == Stamp(restarted.pts + 960, True)
    # ... and backwards.
    back = forward(timeline, 9, 1_000, 0.160, ssrc=0xDEF)
    assert back == Stamp(leap.pts + 960, True)
    assert timeline.anchors == 4


def test_switching_between_encoded_and_forwarded_never_steps_back_or_leaps() -> None:
    timeline = SendTimeline()
    now, stamps = 0.0, []
    for phase in range(6):
        for _ in range(10):
            if phase % 2 == 0:
                stamp = forward(timeline, 1000 + len(stamps), 123_456 + 960 * len(stamps), now)
                assert stamp is not None
            else:
                stamp = timeline.encoded(now)
            stamps.append(stamp)
            now += 0.020
        now += 0.007  # a switch lands between ticks
    steps = [b.pts - a.pts for a, b in itertools.pairwise(stamps)]
    assert set(steps) == {960}  # continuous: the receiver sees one stream
    assert [s.talkspurt for s in stamps].count(True) == 6  # each switch starts afresh (marker)


def test_a_pause_before_a_switch_shows_as_a_gap_of_the_time_that_passed() -> None:
    timeline = SendTimeline()
    forward(timeline, 1, 0, 0.0)
    resumed = timeline.encoded(0.5)  # the source went quiet for half a second, then hold audio
    assert resumed == Stamp(25 * 960, True)


def test_wraparound_of_sequence_and_timestamp() -> None:
    timeline = SendTimeline()
    first = forward(timeline, 0xFFFF, 2**32 - 960, 0.0)
    second = forward(timeline, 0, 0, 0.020)
    assert first is not None
    assert second == Stamp((first.pts + 960) % 2**32, False)
