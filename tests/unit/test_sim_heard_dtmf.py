"""What the phone measures at its socket (onsets, gaps, MOS) and how it plans key presses, without a loop."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import dtmf
from simulator.heard import HeardLog, OnsetDetector, estimate_mos
from simulator.signal import SEND_RATE, TestSignal

FRAME = 960  # 20 ms at 48 kHz


def frames(signal: TestSignal, count: int) -> list[np.ndarray]:
    return [signal.render(k * FRAME, FRAME, SEND_RATE) for k in range(count)]


def test_onsets_are_dated_to_the_sample_once_per_burst() -> None:
    signal = TestSignal(seed=3)
    detector = OnsetDetector(SEND_RATE)
    for k, frame in enumerate(frames(signal, 150)):  # 3 s: bursts at 0, 0.6, ... 2.4 s
        detector.feed(frame, complete_at=(k + 1) * 0.02)
    # The first tone at 0 has no quiet before it; then one onset per 600 ms, a few ms into the fade-in.
    onsets = detector.onsets
    assert len(onsets) == 4
    for n, onset in enumerate(onsets, start=1):
        assert 0.6 * n <= onset < 0.6 * n + 0.004


def test_an_echo_with_a_delay_is_measured_burst_by_burst() -> None:
    signal = TestSignal(seed=4)
    log = HeardLog()
    played = frames(signal, 200)
    for k, frame in enumerate(played):
        log.sent.feed(frame, complete_at=10.0 + (k + 1) * 0.02)
    for k, frame in enumerate(played):
        if k == 97:
            continue  # one packet lost on the way back
        log.packet(1000 + k, frame, arrived_at=10.0 + (k + 1) * 0.02 + 0.085)
    report = log.report()
    assert report.delay_median_seconds == pytest.approx(0.085, abs=1e-6)
    assert report.packets_expected == 200
    assert report.packets_lost == 1
    assert report.gaps == 1
    assert report.longest_gap_seconds == pytest.approx(0.02)
    assert report.bursts_heard == report.bursts_sent >= 5
    assert report.mos is not None
    assert 4.0 < report.mos < 4.5


def test_a_burst_whose_onset_packet_was_lost_is_not_heard() -> None:
    signal = TestSignal(seed=4)
    log = HeardLog()
    played = frames(signal, 100)
    for k, frame in enumerate(played):
        log.sent.feed(frame, complete_at=(k + 1) * 0.02)
    onset_packet = 60  # 1.2 s: the third burst starts in this packet
    for k, frame in enumerate(played):
        if k != onset_packet:
            log.packet(k, frame, arrived_at=(k + 1) * 0.02 + 0.05)
    delays = [d for _, d in log.delays()]
    assert delays == pytest.approx([0.05, 0.05])  # bursts 2 and 4; the third would be dated 20 ms late


def test_sequence_numbers_wrap_and_late_packets_are_counted_not_heard() -> None:
    log = HeardLog()
    quiet = np.zeros(FRAME, np.float32)
    for n, seq in enumerate([65534, 65535, 1, 0, 2]):
        log.packet(seq, quiet, arrived_at=n * 0.02)
    report = log.report()
    assert report.packets_expected == 5
    assert report.packets_lost == 0
    assert report.packets_late == 1
    assert report.gaps == 0  # the late packet filled the hole it had left


def test_runs_of_missing_packets_split_when_a_late_one_arrives_and_duplicates_count_once() -> None:
    log = HeardLog()
    quiet = np.zeros(FRAME, np.float32)
    for n, seq in enumerate([10, 11, 16, 13, 13, 17, 30_000]):
        log.packet(seq, quiet, arrived_at=n * 0.02)
    report = log.report()
    assert report.packets_received == 6  # 13 twice counts once
    assert report.packets_expected == 30_000 - 10 + 1
    assert report.gaps == 3  # 12, 14-15, 18-29999
    assert report.longest_gap_seconds == pytest.approx((30_000 - 18) * 0.02)


def test_mos_falls_with_delay_and_loss() -> None:
    assert estimate_mos(0.0, 0.0) == pytest.approx(4.41, abs=0.01)
    assert estimate_mos(0.2, 0.0) < estimate_mos(0.05, 0.0)
    assert estimate_mos(0.05, 0.05) < estimate_mos(0.05, 0.01) < estimate_mos(0.05, 0.0)
    assert estimate_mos(1.0, 0.5) >= 1.0


def test_a_press_is_a_start_updates_and_three_ends() -> None:
    packets = dtmf.plan_press(dtmf.EVENTS["5"], 0.2)
    assert [p.at for p in packets] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2, 0.22, 0.24])
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [p.end for p in packets] == [False] * 4 + [True] * 3
    assert [p.duration for p in packets] == [400, 800, 1200, 1600, 1600, 1600, 1600]
    event = dtmf.parse_event(packets[-1].payload())
    assert (event.digit, event.end, event.volume, event.duration) == ("5", True, 10, 1600)
    assert dtmf.press_seconds(0.2) == pytest.approx(0.24)


def test_rtp_round_trip_and_sdp_payload_types() -> None:
    raw = dtmf.rtp_packet(126, 65535, 0xFFFFFFFF, 0x1234, True, b"\x0b\x8a\x06\x40")
    header = dtmf.parse_rtp(raw)
    assert header == dtmf.RtpHeader(126, 65535, 0xFFFFFFFF, 0x1234, True, b"\x0b\x8a\x06\x40")
    assert dtmf.parse_event(header.payload).digit == "#"
    sdp = (
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n"
    )
    assert dtmf.telephone_event_pt(sdp) == 126
    assert dtmf.codec_pt(sdp, "opus") == 111
    assert dtmf.telephone_event_pt("a=rtpmap:111 opus/48000/2\r\n") is None


@pytest.mark.parametrize("digits", ["12x", "E", "!"])
def test_only_keypad_digits_are_pressed(digits: str) -> None:
    with pytest.raises(ValueError, match="DTMF digits"):
        dtmf.parse_digits(digits)
    assert dtmf.parse_digits("12 3#*ab") == "123#*AB"


@pytest.mark.parametrize("delay", [0.03, 0.45, 0.75, 1.3])
def test_a_burst_is_recognised_by_its_tone_even_when_the_echo_is_later_than_a_period(delay: float) -> None:
    signal = TestSignal(seed=6)
    log = HeardLog()
    played = frames(signal, 400)
    for k, frame in enumerate(played):
        log.sent.feed(frame, complete_at=(k + 1) * 0.02)
        log.packet(k, frame, arrived_at=(k + 1) * 0.02 + delay)
    delays = [d for _, d in log.delays()]
    assert len(delays) >= 10
    assert delays == pytest.approx([delay] * len(delays), abs=1e-6)


def test_an_echo_of_some_other_signal_has_no_burst_heard() -> None:
    log = HeardLog()
    for k, (mine, theirs) in enumerate(
        zip(frames(TestSignal(seed=1), 300), frames(TestSignal(seed=2), 300), strict=True)
    ):
        log.sent.feed(mine, complete_at=(k + 1) * 0.02)
        log.packet(k, theirs, arrived_at=(k + 1) * 0.02 + 0.05)
    assert len(log.heard.onsets) >= 8  # its bursts were heard, but they are not the phone's
    # Tones coincide by chance (1 in 12, two neighbours at the same delay): a few, never most.
    assert len(log.delays()) <= len(log.heard.onsets) // 4


def test_a_business_adds_telephone_event_back_and_counts_one_digit_per_press() -> None:
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    with_events = dtmf.add_telephone_event(answer, 126)
    assert dtmf.telephone_event_pt(with_events) == 126
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\n" in with_events
    assert dtmf.add_telephone_event(with_events, 101) == with_events  # already there: unchanged

    collector = dtmf.DigitCollector()
    for timestamp, digit in [(1000, "1"), (5000, "2"), (9000, "#")]:
        for packet in dtmf.plan_press(dtmf.EVENTS[digit], 0.2):
            payload = packet.payload()
            collector.packet(dtmf.RtpHeader(126, 0, timestamp, 1, packet.marker, payload))
    collector.packet(dtmf.RtpHeader(126, 0, 5000, 1, False, dtmf.plan_press(2, 0.1)[-1].payload()))  # late
    assert collector.digits == "12#"


def test_the_phones_bursts_are_dated_when_their_packets_leave_not_when_the_microphone_made_them() -> None:
    log = HeardLog()
    played = frames(TestSignal(seed=8), 100)
    for k, frame in enumerate(played):
        log.microphone(k, frame)
        # The encoder takes 15 ms; the packet of frame 60 (the burst at 1.2 s) leaves 100 ms late.
        log.left_socket(k, 50.0 + (k + 1) * 0.02 + (0.1 if k == 60 else 0.015))
    log.delays()  # settles the tones of the bursts that left before their tone was known
    onsets = log.sent.onsets
    assert len(onsets) == 3  # bursts at 0.6, 1.2 and 1.8 s (the first tone has no quiet before it)
    assert onsets[0] - 50.0 == pytest.approx(0.6 + 0.015, abs=0.004)
    assert onsets[1] - 50.0 == pytest.approx(1.2 + 0.1, abs=0.004)
    assert not any(np.isnan(log.sent.tones))
