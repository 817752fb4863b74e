"""The handoff relay over real aiortc media: Opus forwarded between the legs, or transcoded; hold and back.

The caller's side is the Meta-shaped aiortc phone (``tests/fixtures/meta_peer.py``) answered by a
:class:`MediaSession`, as the worker answers Meta; the agent's side is a second MediaSession answering
an offer made by a third one standing in for the browser (so the test can read, at the agent's ear, every RTP
packet's sequence number and timestamp as they arrive, and the receiver's loss figures). All on 127.0.0.1.

What is checked: each side hears the other's tone; the codec of the relaying legs is not invoked for forwarded
packets (encode/decode counts, against the transcoded relay where they grow); hold switches the legs to their
own encoded audio (the caller hears the hold tone) and back, with the agent's ear seeing one continuous
timeline; telephone events from the phone reach the caller leg's event callback and never the agent.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaPhone
from tests.integration.test_dtmf_media import press
from worker import audio
from worker.handoff.opus_params import carry_opus_limits
from worker.handoff.relay import Relay, RelayMode, choose_mode
from worker.media import MediaSession, MediaSettings
from worker.media.dtmf import EventBlock
from worker.media.jitter import Packet
from worker.media.keypad import Keypad

CONNECT_TIMEOUT = 10.0
# The fill-in silence a forwarding leg sends when its source stops would be encoded: put it far out of the
# test's way, so any encode during forwarding is a bug.
SETTINGS = MediaSettings(silence_timeout_seconds=30.0, forward_fill_after_seconds=30.0)
CALLER_HZ, AGENT_HZ, HOLD_HZ = 440.0, 1000.0, 660.0
META_LIMITS = {"maxplaybackrate": "16000", "maxaveragebitrate": "20000"}


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@dataclass
class Ear:
    """The agent's browser: what it receives, as PCM and as RTP packets (sequence, timestamp, payload)."""

    media: MediaSession
    packets: list[Packet] = field(default_factory=list)
    heard: bytearray = field(default_factory=bytearray)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_packet(self, packet: Packet) -> None:
        self.packets.append(packet)
        self.arrived.set()

    async def wait_packets(self, more: int) -> None:
        """Until ``more`` packets more than now have reached the browser (bounded)."""
        target = len(self.packets) + more
        async with asyncio.timeout(10):
            while len(self.packets) < target:
                self.arrived.clear()
                await self.arrived.wait()

    async def listen(self) -> None:
        async for frame in self.media.frames(16000):
            self.heard += frame
            self.changed.set()

    async def wait_heard(self, tone_hz: float, timeout_seconds: float = 10.0) -> None:
        window = audio.frame_bytes(16000, 0.2)
        async with asyncio.timeout(timeout_seconds):
            while True:
                recent = self.heard[-window:]
                if len(recent) == window and abs(audio.dominant_frequency(recent, 16000) - tone_hz) < 20:
                    return
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Legs:
    phone: MetaPhone
    caller: MediaSession
    agent: MediaSession
    browser: Ear


@pytest.fixture
async def legs() -> AsyncIterator[Legs]:
    phone = MetaPhone()
    phone.microphone.tone_hz = CALLER_HZ
    caller = MediaSession(SETTINGS)
    await phone.accept_answer(await caller.answer(await phone.offer()))
    browser = MediaSession(SETTINGS)
    agent = MediaSession(SETTINGS)
    answer = await agent.answer(await browser.offer())
    # As the worker answers the browser when it forwards: with Meta's Opus receive limits (the test phone's
    # offer has none of its own).
    await browser.apply_answer(carry_opus_limits(answer, META_LIMITS))
    ear = Ear(browser)
    browser.on_audio_packet = ear.on_packet
    for media in (caller, agent, browser):
        await media.wait_connected(CONNECT_TIMEOUT)
        media.start_sending()
    listening = asyncio.ensure_future(ear.listen())
    talking = asyncio.ensure_future(browser.send(audio.tone(AGENT_HZ, 60.0, 16000)))
    try:
        yield Legs(phone, caller, agent, ear)
    finally:
        for task in (listening, talking):
            task.cancel()
        for media in (caller, agent, browser):
            await media.close()
        await phone.close()
        await asyncio.gather(listening, talking, return_exceptions=True)


async def relaying(legs: Legs, mode: RelayMode) -> tuple[Relay, asyncio.Task[None]]:
    relay = Relay(legs.caller, legs.agent, mode, audio.tone(HOLD_HZ, 1.0, 16000))
    return relay, asyncio.ensure_future(relay.run())


async def heard_both_ways(legs: Legs) -> None:
    await legs.browser.wait_heard(CALLER_HZ)
    await legs.phone.wait_heard(AGENT_HZ)


def codec_calls(*sessions: MediaSession) -> int:
    return sum(s.statistics().frames_encoded + s.statistics().frames_decoded for s in sessions)


def assert_one_timeline(packets: list[Packet]) -> None:
    """What the browser's jitter buffer needs: one SSRC, sequence numbers one by one, timestamps forward."""
    assert len({p.ssrc for p in packets}) == 1
    for before, after in itertools.pairwise(packets):
        assert (after.sequence - before.sequence) % 0x10000 == 1, (before, after)
        step = (after.timestamp - before.timestamp) % 0x1_0000_0000
        assert 0 < step <= 48000, (before.timestamp, after.timestamp)  # forward, never a jump of > 1 s
        # The marker bit only where the timeline does not continue (20 ms packets here), not on every
        # packet as aiortc's sender would have it.
        assert after.marker == (step != 960), (before, after)


async def test_both_legs_opus_48k_are_forwarded_without_the_codec(legs: Legs) -> None:
    assert legs.caller.opus_48k
    assert legs.agent.opus_48k
    mode = choose_mode(legs.caller, legs.agent, forward_opus=True)
    assert mode is RelayMode.FORWARDED
    _relay, running = await relaying(legs, mode)
    await heard_both_ways(legs)
    before_calls = codec_calls(legs.caller, legs.agent)
    forwarded_before = legs.agent.statistics().frames_forwarded + legs.caller.statistics().frames_forwarded
    await legs.browser.wait_packets(50)
    await legs.phone.wait_heard(AGENT_HZ)
    assert codec_calls(legs.caller, legs.agent) == before_calls  # not one encode or decode
    forwarded = legs.agent.statistics().frames_forwarded + legs.caller.statistics().frames_forwarded
    assert forwarded - forwarded_before >= 50
    # Each leg's own inbound figures stay live (the console's quality): the jitter buffer is still fed.
    for leg in (legs.caller, legs.agent):
        stats = leg.statistics()
        assert stats.packets_received > 50
        assert stats.quality() is not None
    assert_one_timeline(legs.browser.packets)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert not legs.caller.forwarding
    assert not legs.agent.forwarding


async def test_the_transcoded_relay_uses_the_codec(legs: Legs) -> None:
    mode = choose_mode(legs.caller, legs.agent, forward_opus=False)
    assert mode is RelayMode.TRANSCODED
    _relay, running = await relaying(legs, mode)
    await heard_both_ways(legs)
    before_calls = codec_calls(legs.caller, legs.agent)
    await legs.browser.wait_packets(25)
    assert codec_calls(legs.caller, legs.agent) > before_calls + 25  # the counters do count
    assert legs.agent.statistics().frames_forwarded == 0
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_hold_switches_to_pcm_and_back_without_a_break_in_the_timeline(legs: Legs) -> None:
    relay, running = await relaying(legs, RelayMode.FORWARDED)
    await heard_both_ways(legs)
    relay.set_hold(True)
    await legs.phone.wait_heard(HOLD_HZ)  # the caller hears the hold audio, encoded by its leg
    assert not legs.caller.forwarding
    assert not legs.agent.forwarding
    encoded = legs.agent.statistics().frames_encoded
    await legs.browser.wait_packets(10)
    assert legs.agent.statistics().frames_encoded > encoded  # the agent hears the leg's own silence
    relay.set_hold(False)
    await heard_both_ways(legs)  # forwarded again, both ways
    assert legs.caller.forwarding
    assert legs.agent.forwarding
    forwarded = legs.agent.statistics().frames_forwarded
    await legs.browser.wait_packets(10)
    assert legs.agent.statistics().frames_forwarded > forwarded
    assert_one_timeline(legs.browser.packets)  # across forwarded -> encoded -> forwarded
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_telephone_events_are_not_forwarded_as_audio(legs: Legs) -> None:
    keypad = Keypad()
    legs.caller.on_telephone_event = keypad.feed
    relay, running = await relaying(legs, RelayMode.FORWARDED)
    await heard_both_ways(legs)
    sent = {
        EventBlock(5, end, 10, duration).encode() for end in (False, True) for duration in range(0, 801, 400)
    }
    await press(legs.phone, 126, 5, 8000, 40000)
    async with asyncio.timeout(CONNECT_TIMEOUT):
        digit = await keypad.next_digit()
    assert digit is not None
    assert digit.digit == "5"
    await legs.browser.wait_packets(10)
    assert not any(p.payload in sent for p in legs.browser.packets)
    await legs.browser.wait_heard(CALLER_HZ)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    del relay


async def test_a_leg_without_opus_48k_in_its_description_is_transcoded(legs: Legs) -> None:
    unanswered = MediaSession(SETTINGS)  # no remote description: nothing says its peer sends Opus/48000
    try:
        assert not unanswered.opus_48k
        assert choose_mode(legs.caller, unanswered, forward_opus=True) is RelayMode.TRANSCODED
        assert choose_mode(unanswered, legs.agent, forward_opus=True) is RelayMode.TRANSCODED
    finally:
        await unanswered.close()


async def test_a_burst_of_forwarded_packets_reaches_the_far_end_whole(legs: Legs) -> None:
    """A stalled link delivers a dozen packets at once, and aiortc's DTLS task hands them over without
    yielding: the sending leg keeps the burst for the far end's jitter buffer instead of dropping it."""
    captured: list[Packet] = []
    enough = asyncio.Event()

    def capture(packet: Packet) -> None:
        captured.append(packet)
        if len(captured) == 10:
            enough.set()

    legs.caller.on_audio_packet = capture
    async with asyncio.timeout(10):
        await enough.wait()
    legs.caller.on_audio_packet = None
    legs.agent.set_forwarding(True)
    for packet in captured[:10]:  # one burst: no await in between, as aiortc's DTLS task does
        legs.agent.forward(packet)
    burst = [p.payload for p in captured[:10]]

    def arrived() -> bool:
        payloads = [p.payload for p in legs.browser.packets]
        return any(payloads[n : n + 10] == burst for n in range(len(payloads)))

    async with asyncio.timeout(10):
        while not arrived():
            await legs.browser.wait_packets(1)
    assert legs.agent.statistics().send_backlog_dropped == 0
    assert legs.agent.statistics().frames_forwarded == 10


async def test_the_sources_losses_stay_gaps_on_the_forwarded_timeline(legs: Legs) -> None:
    """Every 7th packet of the phone is lost before the caller's leg: the agent's leg forwards the rest with
    their own timestamps (a gap of one frame, marked, where one is missing) and the tone is still heard."""
    legs.caller.drop_inbound = lambda sequence: sequence % 7 == 0
    relay, running = await relaying(legs, RelayMode.FORWARDED)
    await heard_both_ways(legs)
    start = len(legs.browser.packets)
    await legs.browser.wait_packets(60)
    forwarded = legs.browser.packets[start:]
    steps = {(b.timestamp - a.timestamp) % 2**32 for a, b in itertools.pairwise(forwarded)}
    assert 1920 in steps  # a lost packet: one frame's gap
    assert steps <= {960, 1920}  # nothing else: no jumps, no steps back
    assert_one_timeline(forwarded)
    await legs.browser.wait_heard(CALLER_HZ)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    del relay
