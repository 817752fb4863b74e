"""The RFC 4733 decoder as a specification: which packets make which digits, once each, in order."""

from __future__ import annotations

import random

import pytest

from tests.support.dtmf_packets import SSRC, Packet, press
from worker.media.dtmf import Digit, DtmfDecoder, EventBlock, digit_name, timestamp_newer


def feed_all(decoder: DtmfDecoder, packets: list[Packet]) -> list[Digit]:
    return [digit for packet in packets for digit in decoder.feed(packet)]


def digits(found: list[Digit]) -> str:
    return "".join(d.digit for d in found)


# --------------------------------------------------------------------------------------- the payload
def test_event_block_round_trips_and_reads_the_flags() -> None:
    block = EventBlock.parse(bytes([11, 0x80 | 0x0A, 0x03, 0x20]))
    assert block == EventBlock(event=11, end=True, volume=10, duration=800)
    assert block is not None
    assert EventBlock.parse(block.encode()) == block
    assert EventBlock.parse(b"\x01\x02\x03") is None


def test_event_codes_name_the_keys() -> None:
    names = [digit_name(code) for code in range(17)]
    assert names == [*"0123456789", "*", "#", "A", "B", "C", "D", "flash"]
    assert digit_name(17) is None
    assert digit_name(255) is None


# ------------------------------------------------------------------------------------ packet patterns
def test_a_whole_press_is_one_digit_reported_at_its_first_end_packet() -> None:
    decoder = DtmfDecoder()
    packets = press(5, 1000, at=10.0, updates=3)
    reported_after = [len(decoder.feed(p)) for p in packets]
    assert reported_after == [0, 0, 0, 0, 1, 0, 0]  # start, 3 updates, end, end again, end again
    assert decoder.statistics().duplicates == 2
    assert not decoder.pending


def test_the_digit_carries_duration_arrival_and_timestamp() -> None:
    found = feed_all(DtmfDecoder(), press(11, 123456, at=7.5, updates=3))
    assert found == [Digit("#", duration_seconds=0.2, at=7.5, timestamp=123456)]


def test_a_short_press_without_updates() -> None:
    found = feed_all(DtmfDecoder(), press(0, 500, updates=0))
    assert found == [Digit("0", 0.05, 0.0, 500)]


def test_every_key_and_flash() -> None:
    decoder = DtmfDecoder()
    packets = [p for code in range(17) for p in press(code, 1000 + code * 8000, at=float(code))]
    assert [d.digit for d in feed_all(decoder, packets)] == [*"0123456789*#ABCD", "flash"]


def test_non_key_events_are_ignored() -> None:
    decoder = DtmfDecoder()
    assert feed_all(decoder, press(32, 1000)) == []  # a modem answer tone
    assert decoder.statistics().ignored == 7


def test_malformed_payloads_are_counted_and_dropped() -> None:
    decoder = DtmfDecoder()
    assert decoder.feed(Packet(1, 1000, SSRC, True, b"\x05", 0.0)) == []
    assert decoder.statistics().malformed == 1
    assert digits(feed_all(decoder, press(5, 2000))) == "5"


# ----------------------------------------------------------------------------------------------- loss
def test_lost_start_still_counts_once() -> None:
    found = feed_all(DtmfDecoder(), press(7, 1000, at=1.0)[1:])
    assert found == [Digit("7", 0.2, 1.05, 1000)]  # "at" is the first packet that arrived


def test_only_one_end_packet_arriving_is_enough() -> None:
    packets = press(3, 1000)
    found = feed_all(DtmfDecoder(), [packets[-1]])
    assert found == [Digit("3", 0.2, packets[-1].arrival, 1000)]


def test_lost_end_is_reported_by_poll_after_the_timeout() -> None:
    decoder = DtmfDecoder(end_timeout_seconds=0.5)
    packets = press(9, 1000, at=2.0, updates=3)[:-3]  # all three end packets lost
    assert feed_all(decoder, packets) == []
    last = packets[-1].arrival
    assert decoder.deadline == pytest.approx(last + 0.5)
    assert decoder.poll(last + 0.49) == []
    assert decoder.poll(last + 0.5) == [Digit("9", 0.15, 2.0, 1000)]  # the longest duration seen
    assert decoder.poll(last + 5) == []  # once
    assert decoder.statistics().timed_out == 1


def test_lost_end_then_a_late_end_packet_is_not_a_second_digit() -> None:
    decoder = DtmfDecoder()
    packets = press(9, 1000)
    feed_all(decoder, packets[:-3])
    assert len(decoder.poll(100.0)) == 1
    assert feed_all(decoder, packets[-3:]) == []


def test_lost_end_is_reported_when_the_next_press_begins_in_order() -> None:
    decoder = DtmfDecoder()
    first = press(1, 1000, at=0.0)[:-3]
    second = press(2, 9000, at=1.0)
    assert feed_all(decoder, first) == []
    reported = [decoder.feed(p) for p in second]
    assert digits(reported[0]) == "1"  # the second press's start ends the first
    assert digits([d for batch in reported for d in batch]) == "12"


def test_a_press_whose_only_packet_is_its_end_after_a_pending_one() -> None:
    decoder = DtmfDecoder()
    feed_all(decoder, press(1, 1000)[:2])
    assert digits(decoder.feed(press(2, 9000)[-1])) == "12"


def test_random_loss_of_a_third_of_the_packets_loses_no_press_that_left_a_packet() -> None:
    rng = random.Random(13)
    for _ in range(200):
        decoder = DtmfDecoder()
        sent = ""
        arrived: list[Packet] = []
        for n, key in enumerate(rng.choices(range(12), k=8)):
            packets = [p for p in press(key, 1000 + n * 4000, at=n * 0.5) if rng.random() > 0.33]
            if packets:
                sent += digit_name(key) or ""
            arrived += packets
        found = feed_all(decoder, arrived) + decoder.poll(1e9)
        assert digits(found) == sent


# ----------------------------------------------------------------------------- duplicates and order
def test_duplicated_packets_change_nothing() -> None:
    decoder = DtmfDecoder()
    packets = [p for p in press(4, 1000) for _ in range(2)]
    assert digits(feed_all(decoder, packets)) == "4"


def test_the_same_key_twice_is_two_digits() -> None:
    decoder = DtmfDecoder()
    found = feed_all(decoder, press(5, 1000, at=0.0) + press(5, 5000, at=1.0))
    assert [(d.digit, d.timestamp) for d in found] == [("5", 1000), ("5", 5000)]


def test_the_same_key_twice_with_both_ends_lost() -> None:
    decoder = DtmfDecoder()
    found = feed_all(decoder, press(5, 1000)[:-3] + press(5, 5000, at=1.0)[:-3]) + decoder.poll(10.0)
    assert [(d.digit, d.timestamp) for d in found] == [("5", 1000), ("5", 5000)]


def test_packets_reordered_within_a_press() -> None:
    packets = press(6, 1000, at=0.0, updates=4)
    shuffled = [packets[i] for i in (2, 0, 5, 1, 3, 4, 6, 7)]
    decoder = DtmfDecoder()
    found = feed_all(decoder, shuffled)
    assert found == [Digit("6", 0.25, 0.0, 1000)]


def test_end_packets_arriving_after_the_next_press_began_are_duplicates() -> None:
    decoder = DtmfDecoder()
    first, second = press(1, 1000), press(2, 9000, at=1.0)
    arrived = first[:-3] + second[:1] + first[-3:] + second[1:]
    assert digits(feed_all(decoder, arrived)) == "12"
    assert decoder.statistics().duplicates >= 3


def test_a_press_that_arrives_after_a_newer_one_is_dropped_to_keep_the_order() -> None:
    decoder = DtmfDecoder()
    first, second = press(1, 1000), press(2, 9000, at=1.0)
    assert digits(feed_all(decoder, second + first)) == "2"
    assert decoder.statistics().late == len(first)


# ------------------------------------------------------------------------------------------------ wrap
def test_timestamp_arithmetic_wraps() -> None:
    assert timestamp_newer(5, 0xFFFFFFF0)
    assert not timestamp_newer(0xFFFFFFF0, 5)
    assert not timestamp_newer(7, 7)


def test_presses_across_the_timestamp_and_sequence_wrap_keep_their_order() -> None:
    decoder = DtmfDecoder()
    before = press(1, 0xFFFFF000, at=0.0, sequence=0xFFFC)
    after = press(2, 0x00000800, at=1.0, sequence=5)  # the timestamp wrapped between the presses
    late_duplicate = before[-1]
    found = feed_all(decoder, [*before, *after, late_duplicate])
    assert [(d.digit, d.timestamp) for d in found] == [("1", 0xFFFFF000), ("2", 0x800)]


def test_a_long_press_split_into_segments_is_one_digit() -> None:
    decoder = DtmfDecoder()
    start = 0xFFFF8000  # and the second segment's timestamp wraps
    segment_one = [
        Packet(1, start, SSRC, True, EventBlock(8, False, 10, 0).encode(), 0.0),
        Packet(2, start, SSRC, False, EventBlock(8, False, 10, 0xFFFF).encode(), 8.19),
    ]
    second = (start + 0xFFFF) & 0xFFFFFFFF
    segment_two = [
        Packet(3, second, SSRC, False, EventBlock(8, False, 10, 800).encode(), 8.3),
        Packet(4, second, SSRC, False, EventBlock(8, True, 10, 1600).encode(), 8.4),
    ]
    found = feed_all(decoder, segment_one + segment_two)
    assert found == [Digit("8", (0xFFFF + 1600) / 8000, 0.0, start)]


def test_a_new_ssrc_ends_the_pending_press() -> None:
    decoder = DtmfDecoder()
    feed_all(decoder, press(1, 1000)[:2])
    assert digits(feed_all(decoder, press(2, 50, ssrc=SSRC + 1))) == "12"


def test_flush_reports_a_press_held_until_the_call_ended() -> None:
    decoder = DtmfDecoder()
    feed_all(decoder, press(0, 1000)[:2])
    assert digits(decoder.flush()) == "0"
    assert decoder.flush() == []
