"""MediaSession against a real aiortc peer shaped like Meta's side, all on 127.0.0.1 (no broker needed).

Audio is checked by content (the dominant frequency of what arrived), states by events with bounded waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from aiortc.rtp import RtpPacket
from prometheus_client import CollectorRegistry

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaCallee, MetaPhone
from worker import audio, sdp
from worker.media import (
    EndReason,
    MediaConnectTimeout,
    MediaSession,
    MediaSettings,
    UnusableSdp,
    ice_servers,
)
from worker.media.jitter import Packet
from worker.metrics import WorkerMetrics

CONNECT_TIMEOUT = 10.0
FAST = MediaSettings(silence_timeout_seconds=30.0, stats_interval_seconds=0.2)


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.fixture
async def baseline() -> AsyncIterator[set[asyncio.Task[object]]]:
    """The tasks alive before the test; after it, every task the test's media started must be gone."""
    before = asyncio.all_tasks()
    yield before
    await assert_no_leftovers(before)


async def assert_no_leftovers(before: set[asyncio.Task[object]]) -> None:
    # aiortc finishes a few internal tasks shortly after close(): wait on them (bounded), then check.
    for _ in range(5):
        extra = asyncio.all_tasks() - before - {asyncio.current_task()}
        if not extra:
            break
        await asyncio.wait(extra, timeout=5)
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    assert [t.name for t in threading.enumerate() if t.name.endswith("-decoder")] == []


async def connected_call(
    settings: MediaSettings = FAST, metrics: WorkerMetrics | None = None
) -> tuple[MetaPhone, MediaSession]:
    phone = MetaPhone()
    media = MediaSession(settings, metrics=metrics)
    answer = await media.answer(await phone.offer())
    await phone.accept_answer(answer)
    await media.wait_connected(CONNECT_TIMEOUT)
    return phone, media


async def read_frames(media: MediaSession, count: int, sample_rate: int = 16000) -> bytes:
    heard = bytearray()
    async with asyncio.timeout(10):
        async for frame in media.frames(sample_rate):
            assert len(frame) == audio.frame_bytes(sample_rate)
            heard += frame
            if len(heard) >= count * audio.frame_bytes(sample_rate):
                break
    return bytes(heard)


def sample(metrics: WorkerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


# ------------------------------------------------------------------------------------------------ tests
async def test_answer_is_what_whatsapp_accepts(baseline: object) -> None:
    phone = MetaPhone()
    async with MediaSession(FAST) as media:
        answer = await media.answer(await phone.offer())
    await phone.close()
    facts = sdp.read_facts(answer)
    assert facts.fingerprint_algorithms == {"sha-256"}
    assert facts.setups() == {"active"}
    assert facts.crlf
    assert [c.name for c in facts.audio[0].codecs] == ["opus", "telephone-event"]
    assert facts.audio[0].codecs[0].payload_type == 111
    assert sdp.telephone_event_payload_type(answer) == 126  # keypad digits, as Meta offered them
    assert facts.audio[0].candidate_addresses == ("127.0.0.1",)
    assert sdp.answer_problems(answer) == ()


async def test_audio_flows_both_ways_and_only_after_start_sending(baseline: object) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    phone, media = await connected_call(metrics=metrics)
    phone.microphone.tone_hz = 440.0

    # The caller's tone reaches the app at 16 kHz, in 20 ms frames.
    heard = await read_frames(media, 50)
    assert abs(audio.dominant_frequency(heard[-audio.frame_bytes(16000, 0.2) :], 16000) - 440) < 20

    # A second of media time has passed since connecting, and the phone got no RTP audio at all.
    assert phone.frames_received == 0
    assert await phone.rtp_packets_received() == 0

    media.start_sending()
    await media.send(audio.tone(1000.0, 2.0, 16000))
    await phone.wait_heard(1000.0)

    stats = media.statistics()
    assert stats.sending
    assert stats.frames_in >= 50
    assert stats.frames_out > 0
    await media.close()
    await phone.close()
    assert sample(metrics, "callhook_media_frames_total", {"direction": "in"}) == stats.frames_in
    assert sample(metrics, "callhook_media_frames_total", {"direction": "out"}) >= stats.frames_out


async def test_send_resamples_other_rates(baseline: object) -> None:
    phone, media = await connected_call()
    media.start_sending()
    await media.send(audio.tone(700.0, 2.0, 44100), sample_rate=44100)
    await phone.wait_heard(700.0)
    await media.close()
    await phone.close()


async def test_silence_is_sent_when_the_app_has_nothing(baseline: object) -> None:
    phone, media = await connected_call()
    media.start_sending()
    await phone.wait_frames(25)
    assert audio.level_dbfs(phone.heard) < -60
    await media.close()
    await phone.close()


async def test_watchdog_ends_media_when_the_caller_goes_quiet(baseline: object) -> None:
    reasons: list[EndReason] = []
    phone = MetaPhone()
    media = MediaSession(
        MediaSettings(silence_timeout_seconds=1.5, stats_interval_seconds=0.2), on_ended=reasons.append
    )
    await phone.accept_answer(await media.answer(await phone.offer()))
    await media.wait_connected(CONNECT_TIMEOUT)
    await read_frames(media, 5)  # audio is flowing, so the watchdog has not fired
    assert media.ended_reason is None

    phone.microphone.hold()
    async with asyncio.timeout(10):
        assert await media.wait_ended() is EndReason.INBOUND_SILENCE
    assert reasons == [EndReason.INBOUND_SILENCE]
    await media.close()
    assert reasons == [EndReason.INBOUND_SILENCE]  # closing afterwards does not report again
    await phone.close()


async def test_remote_hangup_ends_media(baseline: object) -> None:
    phone, media = await connected_call()
    frames = media.frames()
    await phone.close()
    async with asyncio.timeout(10):
        assert await media.wait_ended() is EndReason.REMOTE_ENDED
        assert [f async for f in frames] == []  # the app's iterator ends with the media
    await media.close()


async def test_wait_connected_times_out_when_the_peer_never_answers(baseline: object) -> None:
    phone = MetaPhone()
    offer = await phone.offer()
    await phone.close()  # its ICE port is gone: checks go nowhere
    media = MediaSession(FAST)
    await media.answer(offer)
    with pytest.raises(MediaConnectTimeout):
        await media.wait_connected(0.3)
    assert media.ended_reason is None
    await media.close()
    assert media.ended_reason is EndReason.CLOSED


async def test_outgoing_offer_then_answer(baseline: object) -> None:
    callee = MetaCallee()
    callee.microphone.tone_hz = 600.0
    async with MediaSession(FAST) as media:
        offer = await media.offer()
        facts = sdp.read_facts(offer)
        assert facts.fingerprint_algorithms == {"sha-256"}
        assert facts.setups() == {"actpass"}
        assert [c.name for c in facts.audio[0].codecs] == ["opus", "telephone-event"]
        await media.apply_answer(await callee.answer(offer))
        await callee.wait_connected(CONNECT_TIMEOUT)
        await media.wait_connected(CONNECT_TIMEOUT)
        heard = await read_frames(media, 30)
        assert abs(audio.dominant_frequency(heard[-audio.frame_bytes(16000, 0.2) :], 16000) - 600) < 20
        media.start_sending()
        await media.send(audio.tone(900.0, 2.0, 16000))
        await callee.wait_heard(900.0)
    await callee.close()


async def test_backpressure_clear_and_wait_played(baseline: object) -> None:
    phone, media = await connected_call(MediaSettings(send_buffer_seconds=0.5))
    # Not started: nothing drains, so a send of 3 s waits while more than 0.5 s is queued.
    sending = asyncio.get_running_loop().create_task(media.send(audio.tone(1000.0, 3.0, 16000)))
    await read_frames(media, 10)  # let time pass on something real
    assert not sending.done()
    assert media.statistics().queued_seconds == pytest.approx(3.0)

    media.clear()  # barge-in: the queue is dropped and the sender released
    async with asyncio.timeout(5):
        await sending
        await media.wait_played()
    assert media.statistics().queued_seconds == 0

    media.start_sending()
    await media.send(audio.tone(1000.0, 0.3, 16000))
    async with asyncio.timeout(5):
        await media.wait_played()
    await phone.wait_heard(1000.0)
    await media.close()
    await phone.close()


async def test_close_is_idempotent_and_concurrent(baseline: object) -> None:
    phone, media = await connected_call()
    media.start_sending()
    await read_frames(media, 5)
    await asyncio.gather(media.close(), media.close())
    await media.close()
    assert media.ended_reason is EndReason.CLOSED
    assert await media.wait_ended() is EndReason.CLOSED
    await media.send(audio.tone(1000.0, 0.1, 16000))  # dropped, not an error
    await media.wait_played()
    assert [f async for f in media.frames()] == []
    await phone.close()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda offer: offer.replace("a=rtpmap:111 opus/48000/2\r\n", "").replace(" 111 126", " 126"),
        lambda offer: offer.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"),
        lambda offer: "v=0\r\n",
    ],
)
async def test_unusable_offers_are_refused(baseline: object, mangle: object) -> None:
    phone = MetaPhone()
    offer = await phone.offer()
    await phone.close()
    async with MediaSession(FAST) as media:
        with pytest.raises(UnusableSdp):
            await media.answer(mangle(offer))  # type: ignore[operator]


async def test_many_sessions_open_and_close_without_leaks(baseline: object) -> None:
    for _ in range(3):
        phone, media = await connected_call()
        media.start_sending()
        await read_frames(media, 3)
        await media.close()
        await phone.close()
    await assert_no_leftovers(baseline)  # type: ignore[arg-type]


def test_ice_servers_come_from_configuration_only() -> None:
    assert ice_servers(MediaSettings()) == []  # never aiortc's default Google STUN server
    settings = MediaSettings(
        ice_servers=("stun:stun.example.net:3478", "turn:turn.example.net:3478?transport=udp"),
        turn_username="user",
        turn_credential="s3cret",
    )
    stun, turn = ice_servers(settings)
    assert (stun.urls, stun.username, stun.credential) == ("stun:stun.example.net:3478", None, None)
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.net:3478?transport=udp",
        "user",
        "s3cret",
    )
    assert "s3cret" not in repr(settings)


async def test_telephone_events_go_to_their_callback_not_the_audio_buffer() -> None:
    phone = MetaPhone()
    async with MediaSession(MediaSettings()) as media:
        events: list[Packet] = []
        got = asyncio.Event()

        def on_event(packet: Packet) -> None:
            events.append(packet)
            got.set()

        media.on_telephone_event = on_event
        answer = await media.answer(await phone.offer())
        assert media.telephone_event_payload_type == 126
        await phone.accept_answer(answer)
        await media.wait_connected(CONNECT_TIMEOUT)
        sender = phone.transceiver.sender
        # RFC 4733 digit "5", end bit set, 800 samples long, on the phone's own SSRC (as a phone sends it).
        event = RtpPacket(payload_type=126, sequence_number=40000, timestamp=123456, ssrc=sender._ssrc)
        event.payload = bytes([5, 0x80 | 10, 0x03, 0x20])
        await sender.transport._send_rtp(event.serialize())  # the test double's transport: Meta's DTMF
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await got.wait()
        assert [(e.sequence, e.timestamp, e.payload) for e in events] == [
            (40000, 123456, bytes([5, 0x80 | 10, 0x03, 0x20]))
        ]
    await phone.close()


# ------------------------------------------------------------------------------------ the audio path
async def test_the_callers_audio_stays_intact_and_its_delay_bounded_through_losses(baseline: object) -> None:
    """A 440 Hz tone through the seam, the jitter buffer and the playout tick, with 1 packet in 8 lost (at
    the session's public fault-injection hook): every tick still yields a 20 ms frame, the losses are
    concealed rather than skipped, the tone survives, and the buffer's delay stays within its bound."""
    metrics = WorkerMetrics(CollectorRegistry())
    phone, media = await connected_call(metrics=metrics)
    phone.microphone.tone_hz = 440.0
    dropped: list[int] = []

    def lose_one_in_eight(sequence: int) -> bool:
        if sequence % 8 == 0:
            dropped.append(sequence)
            return True
        return False

    media.drop_inbound = lose_one_in_eight
    heard = await read_frames(media, 150)  # 3 s of the caller, read as the app reads it
    window = audio.frame_bytes(16000, 0.2)
    tones = [
        audio.dominant_frequency(heard[i : i + window], 16000) for i in range(window, len(heard), window)
    ]
    assert all(abs(hz - 440) < 20 for hz in tones[1:]), tones  # intact: no 200 ms stretch lost its tone

    stats = media.statistics()
    assert len(dropped) >= 10
    assert stats.packets_lost >= len(dropped) - 2  # the last drops may not have been noticed yet
    assert stats.frames_concealed + stats.frames_fec >= stats.packets_lost - 2  # each loss concealed
    assert stats.packets_received >= 100
    assert 0 < stats.loss_ratio < 0.3
    bound = MediaSettings().jitter.max_target_delay + 0.020  # the buffer's own ceiling plus one tick
    assert stats.mean_buffer_delay_seconds <= bound, stats
    await media.close()
    await phone.close()
    final = media.statistics()
    assert final.quality() is not None
    assert sample(metrics, "callhook_media_loss_ratio_count") == 1  # one observation per call, at its end
    assert sample(metrics, "callhook_media_mos_count") == 1
    assert final.mos is not None
    assert 1.0 <= final.mos < 4.4  # an eighth of the audio concealed costs quality
    assert (
        sample(metrics, "callhook_media_concealed_frames_total", {"method": "plc"})
        + sample(metrics, "callhook_media_concealed_frames_total", {"method": "fec"})
        == final.frames_concealed + final.frames_fec
    )
