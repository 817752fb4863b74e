"""The voice-agent bridge over a real call media path, against a real WebSocket agent, all on 127.0.0.1.

Each test answers a Meta-like phone (``tests/fixtures/meta_peer.py``: a real aiortc peer) with a real
``MediaSession`` and runs the bridge on a ``MediaCall``, as the worker's session does after accept. The agent
(``tests/support/voice_agent.py``) is an aiohttp WebSocket server speaking the protocol from its description.
Audio is checked by content (tone frequencies, how much of a tone arrived), never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaPhone
from tests.support.dtmf_packets import press
from tests.support.system import free_port
from tests.support.voice_agent import AgentSession, VoiceAgent
from worker import audio
from worker.apps.api import CallInfo, MediaCall
from worker.apps.bridge import Apology, Bridge, PreparedBridge
from worker.apps.bridge_config import BridgeSettings
from worker.apps.bridge_link import AgentUnavailable
from worker.apps.loader import load_app
from worker.media import MediaSession, MediaSettings
from worker.media.keypad import Keypad

INFO = CallInfo(
    call_id="wacid.HBgLMTIxNTU1/+MDgyMDUVAgASGCA=",
    phone_number_id="106540352242922",
    direction="incoming",
    user_number="15551234567",
    user_name="Ada",
    business_number="15550001111",
)
PHONE_RATE = 16000  # what MetaPhone.heard holds


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@dataclass
class Hangups:
    """The session's side of ``call.hangup()``: recorded, and awaitable."""

    count: int = 0
    happened: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> None:
        self.count += 1
        self.happened.set()

    async def wait(self, timeout_seconds: float = 15.0) -> None:
        async with asyncio.timeout(timeout_seconds):
            await self.happened.wait()


@dataclass
class PhoneCall:
    phone: MetaPhone
    media: MediaSession
    call: MediaCall
    hangups: Hangups


@contextlib.asynccontextmanager
async def phone_call(tone_hz: float | None = 440.0, keypad: Keypad | None = None) -> AsyncIterator[PhoneCall]:
    """A connected, accepted call: the phone sends ``tone_hz``, the business side may send audio."""
    phone = MetaPhone()
    phone.microphone.tone_hz = tone_hz
    media = MediaSession(MediaSettings(silence_timeout_seconds=30))
    try:
        await phone.accept_answer(await media.answer(await phone.offer()))
        await media.wait_connected(10)
        media.start_sending()  # what the session does once accept returned 200
        hangups = Hangups()
        yield PhoneCall(phone, media, MediaCall(INFO, media, hangups, keypad), hangups)
    finally:
        await media.close()
        await phone.close()


@contextlib.asynccontextmanager
async def running(app: object) -> AsyncIterator[asyncio.Task[None]]:
    """Run an app's coroutine as the session would (its own task); cancel it if the test leaves it running."""
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(app)  # type: ignore[arg-type]
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def finished(task: asyncio.Task[None], timeout_seconds: float = 10.0) -> None:
    async with asyncio.timeout(timeout_seconds):
        await task


def tone_seconds(pcm: bytes | bytearray, rate: int, tone_hz: float) -> float:
    """How much of ``pcm`` is ``tone_hz``: 40 ms windows that are loud and dominated by it."""
    window = audio.frame_bytes(rate, 0.04)
    count = 0
    for start in range(0, len(pcm) - window + 1, window):
        piece = pcm[start : start + window]
        if audio.level_dbfs(piece) > -40 and abs(audio.dominant_frequency(piece, rate) - tone_hz) < 30:
            count += 1
    return count * 0.04


async def wait_phone_quiet(phone: MetaPhone, timeout_seconds: float = 10.0) -> None:
    """Until the last 200 ms the phone heard are silence."""
    window = audio.frame_bytes(PHONE_RATE, 0.2)
    async with asyncio.timeout(timeout_seconds):
        while True:
            await phone.wait_frames(phone.frames_received + 5)
            if len(phone.heard) >= window and audio.level_dbfs(phone.heard[-window:]) < -50:
                return


def settings(protocol: str, **overrides: object) -> BridgeSettings:
    rate = overrides.pop("sample_rate", 16000)
    return BridgeSettings(protocol=protocol, sample_rate=rate, **overrides)  # type: ignore[arg-type]


def bridge_of(agent: VoiceAgent, **overrides: object) -> Bridge:
    app = load_app(
        agent.url, bridge_settings=settings(agent.protocol, sample_rate=agent.pcm_rate, **overrides)
    )
    assert isinstance(app, Bridge)
    return app


# ------------------------------------------------------------------------------------- audio both ways
@pytest.mark.parametrize(("protocol", "rate"), [("twilio", 8000), ("pcm", 16000), ("pcm", 24000)])
async def test_audio_flows_both_ways(protocol: str, rate: int) -> None:
    async with VoiceAgent(protocol, pcm_rate=rate) as agent, phone_call(tone_hz=440.0) as pc:
        bridge = bridge_of(agent, headers=(("Authorization", "Bearer t0ken"),))
        async with running(bridge(pc.call)) as app:
            session = await agent.next_session()
            assert session.headers["Authorization"] == "Bearer t0ken"
            assert session.sample_rate == rate
            await session.wait_heard(440.0)  # the caller's tone, at the protocol's rate
            pc.phone.microphone.tone_hz = 880.0
            await session.wait_heard(880.0)  # it follows the caller live

            await session.send_tone(1000.0, 2.0)
            await pc.phone.wait_heard(1000.0)  # the agent's voice reaches the phone
            assert not app.done()

        if protocol == "twilio":
            check_twilio_stream(session)
        else:
            [start] = session.control("start")
            assert start["call"]["call_id"] == INFO.call_id
            assert start["audio"]["sample_rate"] == rate


def check_twilio_stream(session: AgentSession) -> None:
    connected, start = session.messages[:2]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["start"]["callSid"] == INFO.call_id
    assert start["start"]["accountSid"] == INFO.phone_number_id
    assert start["start"]["customParameters"]["from_number"] == INFO.user_number
    media = [m for m in session.messages if m["event"] == "media"]
    assert len(media) > 10
    numbers = [int(m["sequenceNumber"]) for m in session.messages[1:]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [int(m["media"]["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert [int(m["media"]["timestamp"]) for m in media] == [20 * i for i in range(len(media))]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {m["streamSid"] for m in session.messages[1:]} == {session.stream_sid}


# ------------------------------------------------------------------------------------------------ keypad
@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_key_presses_reach_the_agent_as_dtmf_messages(protocol: str) -> None:
    keypad = Keypad()
    async with (
        VoiceAgent(protocol) as agent,
        phone_call(tone_hz=440.0, keypad=keypad) as pc,
        running(bridge_of(agent)(pc.call)),
    ):
        session = await agent.next_session()
        await session.wait_heard(440.0)  # audio flows; the presses come in between media messages
        codes = [1, 2, 3, 11, 16]  # 1 2 3 # flash
        for n, code in enumerate(codes):
            for packet in press(code, 8000 * (n + 1), at=asyncio.get_running_loop().time()):
                keypad.feed(packet)
        expected = "123#" if protocol == "twilio" else "123#!"  # Twilio has no flash message
        await session.wait_for(lambda: session.digits() == expected)
        heard = len(session.heard)  # and the audio goes on
        await session.wait_for(
            lambda: len(session.heard) >= heard + audio.frame_bytes(session.sample_rate, 0.3)
        )

    dtmf = session.control("dtmf")
    if protocol == "twilio":
        assert dtmf[0] == {
            "event": "dtmf",
            "streamSid": session.stream_sid,
            "sequenceNumber": dtmf[0]["sequenceNumber"],
            "dtmf": {"track": "inbound_track", "digit": "1"},
        }
        check_twilio_stream(session)  # the dtmf messages are numbered with the media
    else:
        assert dtmf[0] == {"type": "dtmf", "digit": "1", "duration_ms": 200}


# ------------------------------------------------------------------------------------ barge-in, marks
@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_clear_stops_the_agents_audio_and_returns_pending_marks(protocol: str) -> None:
    async with (
        VoiceAgent(protocol) as agent,
        phone_call(tone_hz=None) as pc,
        running(bridge_of(agent)(pc.call)),
    ):
        session = await agent.next_session()
        await session.send_tone(700.0, 8.0)  # a long answer, sent at once as TTS engines do
        await session.send_mark("answer-done")
        await pc.phone.wait_heard(700.0)

        await session.send_clear()  # the caller interrupted
        await wait_phone_quiet(pc.phone)
        await session.wait_for(lambda: session.marks() == ["answer-done"])  # flushed by the clear
        if protocol == "pcm":
            assert session.control("mark")[0]["cleared"] is True
        heard_700 = tone_seconds(pc.phone.heard, PHONE_RATE, 700.0)
        assert 0.2 < heard_700 < 5.0  # of 8 s: the rest was dropped (2 s queue + 0.2 s chunk + slack)

        await session.send_tone(500.0, 1.0)  # the conversation goes on
        await pc.phone.wait_heard(500.0)
        await wait_phone_quiet(pc.phone)
        assert tone_seconds(pc.phone.heard, PHONE_RATE, 700.0) == heard_700  # nothing old came back


@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_marks_come_back_in_order_once_played(protocol: str) -> None:
    async with (
        VoiceAgent(protocol) as agent,
        phone_call(tone_hz=None) as pc,
        running(bridge_of(agent)(pc.call)),
    ):
        session = await agent.next_session()
        heard_at_mark: dict[str, bytes] = {}

        def snapshot(message: dict[str, object]) -> None:
            if message.get("event" if protocol == "twilio" else "type") == "mark":
                heard_at_mark[_mark_name(message)] = bytes(pc.phone.heard)

        session.on_message.append(snapshot)
        await session.send_mark("before-anything")  # nothing queued: comes back at once
        await session.wait_for(lambda: session.marks() == ["before-anything"])
        await session.send_tone(500.0, 0.6)
        await session.send_mark("a")
        await session.send_tone(800.0, 0.6)
        await session.send_mark("b")
        await session.wait_for(lambda: session.marks() == ["before-anything", "a", "b"])

        # Causality, not timing: the audio after mark "a" was queued only once "a" had been reported,
        # so the phone cannot have heard any of it before the agent got "a".
        assert tone_seconds(heard_at_mark["a"], PHONE_RATE, 800.0) == 0
        await wait_phone_quiet(pc.phone)
        assert tone_seconds(pc.phone.heard, PHONE_RATE, 500.0) > 0.3
        assert tone_seconds(pc.phone.heard, PHONE_RATE, 800.0) > 0.3
        if protocol == "pcm":
            assert [m["cleared"] for m in session.control("mark")] == [False, False, False]


def _mark_name(message: dict[str, object]) -> str:
    mark = message.get("mark")
    name = mark["name"] if isinstance(mark, dict) else message["name"]
    assert isinstance(name, str)
    return name


# --------------------------------------------------------------------------------------- hang-ups
@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_agent_closing_hangs_up_after_its_last_words(protocol: str) -> None:
    async with VoiceAgent(protocol) as agent, phone_call() as pc:
        bridge = bridge_of(agent)
        prepared = await bridge.prepare(INFO)
        async with running(prepared.run(pc.call)) as app:
            session = await agent.next_session()
            await session.send_tone(600.0, 1.0)  # "goodbye"
            await session.close()
            await pc.hangups.wait()
            await finished(app)
        assert pc.hangups.count == 1
        assert tone_seconds(pc.phone.heard, PHONE_RATE, 600.0) > 0.6  # the goodbye was heard, not cut
        assert prepared.statistics().ending == "agent_closed"


@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_caller_hanging_up_sends_stop_then_closes(protocol: str) -> None:
    async with VoiceAgent(protocol) as agent, phone_call() as pc:
        async with running(bridge_of(agent)(pc.call)) as app:
            session = await agent.next_session()
            await session.wait_heard(440.0)
            await pc.phone.close()  # the caller hangs up: the media ends
            async with asyncio.timeout(10):
                await session.closed.wait()
            await finished(app)
        last = session.control()[-1]
        if protocol == "twilio":
            assert last["event"] == "stop"
            assert last["stop"] == {"accountSid": INFO.phone_number_id, "callSid": INFO.call_id}
        else:
            assert last == {"type": "stop", "reason": "call_ended"}
        assert session.close_code == 1000
        assert pc.hangups.count == 0  # the call is already over; nothing to hang up


async def test_the_app_cancelled_by_the_session_sends_stop_then_closes() -> None:
    async with VoiceAgent("pcm") as agent, phone_call() as pc:
        async with running(bridge_of(agent)(pc.call)) as app:
            session = await agent.next_session()
            await session.wait_heard(440.0)
            app.cancel()  # a terminate webhook, a drain: the session stops the app
            with pytest.raises(asyncio.CancelledError):
                await app
        async with asyncio.timeout(5):
            await session.closed.wait()
        assert session.control()[-1] == {"type": "stop", "reason": "call_ended"}


@pytest.mark.parametrize("code", [1011, 4000])
async def test_agent_closing_with_an_error_gets_the_apology(code: int) -> None:
    async with VoiceAgent("twilio") as agent, phone_call() as pc:
        prepared = await bridge_of(agent).prepare(INFO)
        async with running(prepared.run(pc.call)) as app:
            session = await agent.next_session()
            await session.close(code=code)
            await pc.phone.wait_heard(950.0)  # the special information tone
            await pc.hangups.wait()
            await finished(app)
        assert prepared.statistics().ending == "agent_failed"


# ------------------------------------------------------------------------------- before accept: prepare
@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_prepare_opens_the_stream_before_accept(protocol: str) -> None:
    async with VoiceAgent(protocol) as agent:
        agent.on_session = lambda s: asyncio.get_running_loop().create_task(s.send_tone(660.0, 1.0))
        prepared = await bridge_of(agent).prepare(INFO)
        session = await agent.next_session()
        await session.wait_for(lambda: bool(session.control("start")))
        assert session.heard == bytearray()  # no caller audio before the call is answered
        async with phone_call(tone_hz=440.0) as pc, prepared, running(prepared.run(pc.call)):
            await pc.phone.wait_heard(660.0)  # the greeting sent during setup plays on answer
            await session.wait_heard(440.0)


@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_prepared_but_never_answered_sends_stop(protocol: str) -> None:
    async with VoiceAgent(protocol) as agent:
        prepared = await bridge_of(agent).prepare(INFO)
        session = await agent.next_session()
        await prepared.aclose()  # the call was rejected or abandoned before accept
        await prepared.aclose()  # idempotent
        async with asyncio.timeout(5):
            await session.closed.wait()
    kinds = [m.get("event", m.get("type")) for m in session.control()]
    assert kinds == (["connected", "start", "stop"] if protocol == "twilio" else ["start", "stop"])
    if protocol == "pcm":
        assert session.control()[-1]["reason"] == "not_answered"
    with pytest.raises(RuntimeError, match="once"):
        await prepared.run(object())  # type: ignore[arg-type]


async def test_prepare_fails_fast_when_nobody_listens() -> None:
    bridge = load_app(f"ws://127.0.0.1:{free_port()}/agent")
    assert isinstance(bridge, Bridge)
    with pytest.raises(AgentUnavailable, match="unreachable"):
        await bridge.prepare(INFO)


async def test_prepare_fails_within_the_timeout_when_the_agent_never_answers() -> None:
    gave_up = asyncio.Event()

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the handshake, until the client gives up
        writer.close()
        await writer.wait_closed()
        gave_up.set()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        bridge = load_app(
            f"ws://127.0.0.1:{port}/agent", bridge_settings=BridgeSettings(connect_timeout_seconds=0.3)
        )
        assert isinstance(bridge, Bridge)
        with pytest.raises(AgentUnavailable, match=r"not connected within 0\.3 s"):
            await bridge.prepare(INFO)
        async with asyncio.timeout(5):
            await gave_up.wait()  # the bridge closed its half-open connection


async def test_prepare_fails_when_the_agent_refuses_the_handshake() -> None:
    async with VoiceAgent("twilio", refuse_status=401) as agent:
        with pytest.raises(AgentUnavailable, match="HTTP 401"):
            await bridge_of(agent).prepare(INFO)


# -------------------------------------------------------------------------------- after accept: apology
async def test_unreachable_after_accept_plays_the_apology_then_hangs_up() -> None:
    async with phone_call() as pc:
        app = load_app(f"ws://127.0.0.1:{free_port()}/agent")
        async with running(app(pc.call)) as task:
            await pc.hangups.wait()
            await finished(task)
            await wait_phone_quiet(pc.phone)
        assert pc.hangups.count == 1
        # The special information tone, played to its end before the hang-up: 950, 1400, 1800 Hz, twice.
        heard = pc.phone.heard
        for tone_hz in (950.0, 1400.0, 1800.0):
            assert tone_seconds(heard, PHONE_RATE, tone_hz) > 0.4
        assert first_at(heard, 950.0) < first_at(heard, 1400.0) < first_at(heard, 1800.0)


def first_at(pcm: bytes | bytearray, tone_hz: float) -> int:
    window = audio.frame_bytes(PHONE_RATE, 0.04)
    for start in range(0, len(pcm) - window + 1, window):
        if tone_seconds(pcm[start : start + window], PHONE_RATE, tone_hz):
            return start
    raise AssertionError(f"{tone_hz} Hz never heard")


async def test_the_apology_can_be_a_wav_file(tmp_path: Path) -> None:
    path = tmp_path / "sorry.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(audio.tone(520.0, 1.0, 8000))
    async with phone_call() as pc:
        app = load_app(
            f"ws://127.0.0.1:{free_port()}/agent", bridge_settings=BridgeSettings(apology_wav=path)
        )
        async with running(app(pc.call)) as task:
            await pc.phone.wait_heard(520.0)
            await pc.hangups.wait()
            await finished(task)
        assert tone_seconds(pc.phone.heard, PHONE_RATE, 520.0) > 0.7  # played to its end before hanging up


# ------------------------------------------------------------------------ an agent that stops reading
@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"heartbeat_seconds": 0.0, "send_timeout_seconds": 0.3}, "send timeout"),
        ({"heartbeat_seconds": 1.0, "send_timeout_seconds": 30.0}, "heartbeat"),
    ],
    ids=["send-timeout", "heartbeat"],
)
async def test_an_agent_that_stops_reading_ends_only_its_own_call(
    overrides: dict[str, object], why: str
) -> None:
    async with (
        VoiceAgent("pcm", pcm_rate=24000) as stuck_agent,
        VoiceAgent("twilio") as good_agent,
        phone_call(tone_hz=440.0) as stuck_call,
        phone_call(tone_hz=330.0) as good_call,
    ):
        short_apology = Apology(audio.tone(950.0, 0.4, 16000), 16000)
        stuck_bridge = Bridge(stuck_agent.url, settings("pcm", sample_rate=24000, **overrides), short_apology)
        stuck = await stuck_bridge.prepare(INFO)
        good = await bridge_of(good_agent).prepare(INFO)
        ticks = 0

        async def ticker() -> None:  # anything else the worker's loop runs
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with (
            running(stuck.run(stuck_call.call)) as stuck_app,
            running(good.run(good_call.call)),
            running(ticker()),
        ):
            stuck_session, good_session = await stuck_agent.next_session(), await good_agent.next_session()
            await stuck_session.wait_heard(440.0)
            await good_session.wait_heard(330.0)
            stuck_session.stop_reading()
            good_heard_before, ticks_before = len(good_session.heard), ticks

            await stuck_call.phone.wait_heard(950.0, timeout_seconds=30)  # the apology: the agent failed
            await stuck_call.hangups.wait()
            await finished(stuck_app)

            # Meanwhile the other call kept flowing and the loop kept turning.
            assert len(good_session.heard) - good_heard_before > audio.frame_bytes(8000, 0.5)
            assert ticks - ticks_before > 20
            await good_session.wait_heard(330.0)
            assert good_call.hangups.count == 0

        stats = stuck.statistics()
        assert stats.ending == "agent_failed"
        # What the bridge wrote towards the stuck agent stayed bounded (aiohttp's 64 KiB write limit, the
        # transport's high-water mark and a fixed kernel send buffer), far below the 4 MiB Linux would allow.
        assert stats.messages_to_agent * audio.frame_bytes(24000) < 1024 * 1024, why


async def test_cancelling_a_bridge_blocked_on_a_stuck_agent_finishes_promptly() -> None:
    async with VoiceAgent("pcm", pcm_rate=24000) as agent, phone_call() as pc:
        bridge = bridge_of(agent, heartbeat_seconds=0.0, send_timeout_seconds=60.0)
        async with running(bridge(pc.call)) as app:
            session = await agent.next_session()
            await session.wait_heard(440.0)
            session.stop_reading()
            # The uplink is blocked in a send once the call's media starts dropping the frames it cannot hand
            # over (the app reads them no more).
            async with asyncio.timeout(30):
                while pc.media.statistics().inbound_frames_dropped == 0:
                    await pc.phone.wait_frames(pc.phone.frames_received + 10)
            app.cancel()  # the session stopping the app: it must not wait on the stuck agent
            async with asyncio.timeout(3):  # the session allows a cancelled app ~2 s
                with pytest.raises(asyncio.CancelledError):
                    await app
        session.resume_reading()  # the agent wakes up: it still gets the stream's end, last
        async with asyncio.timeout(10):
            await session.closed.wait()
        assert session.control()[-1] == {"type": "stop", "reason": "call_ended"}
        assert pc.hangups.count == 0


async def test_prepared_bridge_reports_statistics() -> None:
    async with VoiceAgent("twilio") as agent, phone_call() as pc:
        prepared: PreparedBridge = await bridge_of(agent).prepare(INFO)
        assert prepared.statistics().ending is None
        async with running(prepared.run(pc.call)) as app:
            session = await agent.next_session()
            await session.send_json({"event": "dtmf", "dtmf": {"digit": "1"}})  # not for the agent to send
            await session.send_tone(600.0, 0.5)
            await session.send_clear()
            await session.wait_heard(440.0)
            await session.close()
            await finished(app)
        stats = prepared.statistics()
        await prepared.aclose()  # after run, the session's aclose() has nothing left to do
        assert prepared.statistics() == stats
        assert stats.ending == "agent_closed"
        assert stats.ignored_messages == 1
        assert stats.clears == 1
        assert stats.agent_audio_seconds == pytest.approx(0.5, abs=0.021)
        assert stats.messages_to_agent > 10
