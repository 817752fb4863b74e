"""The bridge's pure parts: µ-law, both wire protocols, settings, the loader's ``ws://`` specs, the playout.

Wire messages are checked field by field against what docs/bridge.md promises (Twilio's names and string
types). The playout runs against an in-memory call whose playback the test advances by hand, so "a mark is
reported only after the audio before it has played" is checked exactly, without timing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callhook.env import ConfigError
from tests.support.voice_agent import mulaw_decode
from worker import audio
from worker.apps.api import CallInfo, Digit
from worker.apps.bridge import Apology, Bridge
from worker.apps.bridge_config import BridgeSettings, load
from worker.apps.bridge_pcm import PcmStream
from worker.apps.bridge_playout import Playout
from worker.apps.bridge_protocol import AgentAudio, AgentClear, AgentIgnored, AgentMark, StopReason
from worker.apps.bridge_twilio import TwilioStream
from worker.apps.loader import AppSpecError, load_app
from worker.audio_codecs import mulaw_to_pcm, pcm_to_mulaw

INFO = CallInfo(
    call_id="wacid.HBgLMTIxNTU1/+MDgyMDUVAgASGCA=",
    phone_number_id="106540352242922",
    direction="incoming",
    user_number="15551234567",
    user_name="Ada",
    business_number="15550001111",
    biz_opaque_callback_data="order-7",
)


def write_wav(path: Path, pcm: bytes, rate: int = 16000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


# ------------------------------------------------------------------------------------------------ µ-law
def ffmpeg_mulaw(pcm: bytes) -> bytes:
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
    codec.time_base = Fraction(1, 8000)
    frame = audio.pcm_frame(pcm, 8000)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def test_mulaw_is_ffmpegs_bit_for_bit_on_real_audio() -> None:
    rng = np.random.default_rng(7)
    speechy = np.frombuffer(audio.tone(440, 1.0, 8000, amplitude=0.6), dtype="<i2").astype(np.int32)
    noisy = np.clip(speechy + rng.integers(-3000, 3000, speechy.size), -32768, 32767).astype("<i2").tobytes()
    assert pcm_to_mulaw(noisy) == ffmpeg_mulaw(noisy)
    codes = pcm_to_mulaw(noisy)
    assert mulaw_to_pcm(codes) == mulaw_decode(codes)  # G.711's expansion formula, exactly


def test_mulaw_round_trip_keeps_the_signal() -> None:
    pcm = audio.tone(1000, 0.5, 8000, amplitude=0.5)
    back = mulaw_to_pcm(pcm_to_mulaw(pcm))
    assert len(back) == len(pcm)
    error = np.frombuffer(back, "<i2").astype(np.int32) - np.frombuffer(pcm, "<i2")
    assert np.abs(error).max() < 0.04 * 32768 * 0.5  # µ-law's step stays under ~3% of the level
    assert audio.dominant_frequency(back, 8000) == pytest.approx(1000, abs=10)
    assert pcm_to_mulaw(b"\x01\x02\x03") == pcm_to_mulaw(b"\x01\x02")  # a trailing half sample is ignored


# ----------------------------------------------------------------------------------------------- twilio
def decoded(message: bytes) -> dict[str, object]:
    value = json.loads(message)
    assert isinstance(value, dict)
    return value


def test_twilio_opening_is_connected_then_start() -> None:
    stream = TwilioStream(INFO)
    connected, start = (decoded(m) for m in stream.opening())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert re.fullmatch(r"MZ[0-9a-f]{32}", stream.stream_sid)
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "106540352242922",
            "streamSid": stream.stream_sid,
            "callSid": INFO.call_id,
            "tracks": ["inbound"],
            "customParameters": {
                "call_id": INFO.call_id,
                "phone_number_id": "106540352242922",
                "direction": "incoming",
                "from_number": "15551234567",
                "to_number": "15550001111",
                "user_number": "15551234567",
                "user_name": "Ada",
                "business_number": "15550001111",
                "biz_opaque_callback_data": "order-7",
                "caller_id": "15551234567",
            },
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": stream.stream_sid,
    }
    assert TwilioStream(INFO).stream_sid != stream.stream_sid


def test_twilio_leaves_out_unknown_facts() -> None:
    info = CallInfo(call_id="c", phone_number_id="p", direction="outgoing", user_number="1555")
    _, start = (decoded(m) for m in TwilioStream(info).opening())
    params = start["start"]["customParameters"]  # type: ignore[index]
    assert params == {
        "call_id": "c",
        "phone_number_id": "p",
        "direction": "outgoing",
        "to_number": "1555",
        "user_number": "1555",
    }


def test_twilio_media_mark_stop_count_up() -> None:
    stream = TwilioStream(INFO, stream_sid="MZ" + "0" * 32)
    stream.opening()
    frame = audio.tone(440, 0.02, 8000)
    first, second = decoded(stream.audio(frame)), decoded(stream.audio(frame))
    assert first == {
        "event": "media",
        "sequenceNumber": "2",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(pcm_to_mulaw(frame)).decode(),
        },
        "streamSid": "MZ" + "0" * 32,
    }
    assert len(base64.b64decode(first["media"]["payload"])) == 160  # type: ignore[index]
    assert (second["sequenceNumber"], second["media"]["chunk"], second["media"]["timestamp"]) == (
        "3",
        "2",
        "20",
    )  # type: ignore[index]
    assert decoded(stream.mark("greeting", cleared=True)) == {
        "event": "mark",
        "sequenceNumber": "4",
        "streamSid": "MZ" + "0" * 32,
        "mark": {"name": "greeting"},
    }
    assert decoded(stream.stop(StopReason.CALL_ENDED)) == {
        "event": "stop",
        "sequenceNumber": "5",
        "stop": {"accountSid": "106540352242922", "callSid": INFO.call_id},
        "streamSid": "MZ" + "0" * 32,
    }


def test_twilio_dtmf_is_twilios_message_numbered_with_the_others() -> None:
    stream = TwilioStream(INFO, stream_sid="MZ" + "1" * 32)
    stream.opening()  # sequence 1 is the start
    stream.audio(audio.silence(8000))  # 2
    message = stream.dtmf(Digit("5", 0.12, 3.0, 8000))
    assert message is not None
    assert json.loads(message) == {
        "event": "dtmf",
        "streamSid": "MZ" + "1" * 32,
        "sequenceNumber": "3",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert list(json.loads(message)) == ["event", "streamSid", "sequenceNumber", "dtmf"]  # Twilio's order
    for key in "0123456789*#":
        assert decoded(stream.dtmf(Digit(key, 0.1, 0.0, 0)) or b"")["dtmf"] == {  # type: ignore[index]
            "track": "inbound_track",
            "digit": key,
        }
    for key in ("A", "D", "flash"):  # not on a phone's keypad: Twilio has no message for them
        assert stream.dtmf(Digit(key, 0.3, 0.0, 0)) is None
    assert decoded(stream.stop(StopReason.CALL_ENDED))["sequenceNumber"] == "16"  # those took no number


def test_twilio_decodes_what_an_agent_sends() -> None:
    stream = TwilioStream(INFO)
    codes = pcm_to_mulaw(audio.tone(300, 0.1, 8000))
    media = {"event": "media", "streamSid": "MZx", "media": {"payload": base64.b64encode(codes).decode()}}
    assert stream.decode_text(json.dumps(media)) == AgentAudio(mulaw_to_pcm(codes))
    assert stream.decode_text(json.dumps(media).encode()) == AgentAudio(mulaw_to_pcm(codes))
    assert stream.decode_text('{"event":"mark","streamSid":"MZx","mark":{"name":"m1"}}') == AgentMark("m1")
    assert stream.decode_text('{"event":"clear","streamSid":"MZx"}') == AgentClear()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "expected shape"),
        ("[1, 2]", "expected shape"),
        ('{"event": 5}', "expected shape"),
        ('{"event": "media", "media": "x"}', "expected shape"),
        ('{"event": "media"}', "without a payload"),
        ('{"event": "media", "media": {"payload": "@@@"}}', "not base64"),
        ('{"event": "mark", "mark": {}}', "without a name"),
        ('{"event": "dtmf", "dtmf": {"digit": "1"}}', "not handled"),
        ("{}", "not handled"),
    ],
)
def test_twilio_ignores_what_it_cannot_use(text: str, reason: str) -> None:
    event = TwilioStream(INFO).decode_text(text)
    assert isinstance(event, AgentIgnored)
    assert reason in event.reason
    assert isinstance(TwilioStream(INFO).decode_binary(b"\x00\x01"), AgentIgnored)


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
def test_any_text_decodes_to_an_event_never_an_exception(text: str) -> None:
    for stream in (TwilioStream(INFO), PcmStream(INFO, 16000)):
        assert isinstance(stream.decode_text(text), AgentAudio | AgentMark | AgentClear | AgentIgnored)


# -------------------------------------------------------------------------------------------------- pcm
@pytest.mark.parametrize("rate", [16000, 24000])
def test_pcm_start_carries_the_call_and_the_format(rate: int) -> None:
    stream = PcmStream(INFO, rate, stream_id="s1")
    [start] = (decoded(m) for m in stream.opening())
    assert start == {
        "type": "start",
        "protocol": "callhook-pcm",
        "version": 1,
        "stream_id": "s1",
        "call": {
            "call_id": INFO.call_id,
            "phone_number_id": "106540352242922",
            "direction": "incoming",
            "caller": "15551234567",
            "callee": "15550001111",
            "user_number": "15551234567",
            "business_number": "15550001111",
            "user_name": "Ada",
            "biz_opaque_callback_data": "order-7",
        },
        "audio": {"encoding": "pcm_s16le", "sample_rate": rate, "channels": 1, "frame_ms": 20},
    }
    frame = audio.tone(440, 0.02, rate)
    assert stream.audio(frame) == frame
    assert not stream.audio_is_text
    assert decoded(stream.mark("m", cleared=False)) == {"type": "mark", "name": "m", "cleared": False}
    assert decoded(stream.mark("m", cleared=True)) == {"type": "mark", "name": "m", "cleared": True}
    assert decoded(stream.stop(StopReason.NOT_ANSWERED)) == {"type": "stop", "reason": "not_answered"}


def test_pcm_dtmf_is_a_text_message_with_the_duration() -> None:
    stream = PcmStream(INFO, 16000)
    assert decoded(stream.dtmf(Digit("#", 0.1234, 3.0, 8000)) or b"") == {
        "type": "dtmf",
        "digit": "#",
        "duration_ms": 123,
    }
    assert decoded(stream.dtmf(Digit("flash", 0.3, 3.0, 8000)) or b"")["digit"] == "flash"


def test_pcm_control_from_the_agent() -> None:
    stream = PcmStream(INFO, 16000)
    assert stream.decode_text('{"type": "mark", "name": "a"}') == AgentMark("a")
    assert stream.decode_text('{"type": "clear"}') == AgentClear()
    assert isinstance(stream.decode_text('{"type": "mark"}'), AgentIgnored)
    assert isinstance(stream.decode_text('{"type": "hello"}'), AgentIgnored)
    with pytest.raises(ValueError, match="16000 or 24000"):
        PcmStream(INFO, 8000)


@given(st.lists(st.binary(max_size=9), max_size=12))
def test_pcm_binary_frames_are_one_byte_stream(chunks: list[bytes]) -> None:
    stream = PcmStream(INFO, 16000)
    played = b""
    for chunk in chunks:
        event = stream.decode_binary(chunk)
        if isinstance(event, AgentAudio):
            assert len(event.pcm) % 2 == 0
            played += event.pcm
        else:
            assert isinstance(event, AgentIgnored)
    whole = b"".join(chunks)
    assert played == whole[: len(whole) // 2 * 2]


# --------------------------------------------------------------------------------------------- settings
def test_settings_defaults() -> None:
    settings = load({})
    assert settings == BridgeSettings()
    assert (settings.protocol, settings.agent_sample_rate, settings.headers) == ("twilio", 8000, ())
    assert settings.connect_timeout_seconds == 5.0
    assert settings.apology_wav is None


def test_settings_from_env(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "sorry.wav", audio.tone(500, 1.0, 16000))
    settings = load(
        {
            "CALLHOOK_BRIDGE_PROTOCOL": "PCM",
            "CALLHOOK_BRIDGE_SAMPLE_RATE": "24000",
            "CALLHOOK_BRIDGE_HEADERS": "Authorization=Bearer abc==, X-Tenant=acme",
            "CALLHOOK_BRIDGE_CONNECT_TIMEOUT_SECONDS": "2.5",
            "CALLHOOK_BRIDGE_SEND_TIMEOUT_SECONDS": "1",
            "CALLHOOK_BRIDGE_PLAYOUT_BUFFER_SECONDS": "12",
            "CALLHOOK_BRIDGE_HEARTBEAT_SECONDS": "0",
            "CALLHOOK_BRIDGE_APOLOGY_WAV": str(wav),
        }
    )
    assert settings.protocol == "pcm"
    assert settings.agent_sample_rate == 24000
    assert settings.headers == (("Authorization", "Bearer abc=="), ("X-Tenant", "acme"))
    assert (settings.connect_timeout_seconds, settings.send_timeout_seconds) == (2.5, 1.0)
    assert (settings.playout_buffer_seconds, settings.heartbeat_seconds) == (12.0, 0.0)
    assert settings.apology_wav == wav
    assert "abc" not in repr(settings)  # header values are secrets


def test_settings_list_every_problem(tmp_path: Path) -> None:
    long_wav = write_wav(tmp_path / "long.wav", bytes(2 * 8000 * 31), rate=8000)
    with pytest.raises(ConfigError) as caught:
        load(
            {
                "CALLHOOK_BRIDGE_PROTOCOL": "websocket",
                "CALLHOOK_BRIDGE_SAMPLE_RATE": "44100",
                "CALLHOOK_BRIDGE_HEADERS": "NoEquals,Bad Name=x,Sec-WebSocket-Key=y,Host=z",
                "CALLHOOK_BRIDGE_CONNECT_TIMEOUT_SECONDS": "0",
                "CALLHOOK_BRIDGE_HEARTBEAT_SECONDS": "0.5",
                "CALLHOOK_BRIDGE_APOLOGY_WAV": str(long_wav),
            }
        )
    problems = "\n".join(caught.value.problems)
    for expected in (
        "CALLHOOK_BRIDGE_PROTOCOL='websocket' must be one of twilio, pcm",
        "CALLHOOK_BRIDGE_SAMPLE_RATE=44100 must be 16000 or 24000",
        "'NoEquals' is not Name=value",
        "'Bad Name' is not Name=value",
        "Sec-WebSocket-Key belongs to the WebSocket handshake",
        "Host belongs to the WebSocket handshake",
        "CALLHOOK_BRIDGE_CONNECT_TIMEOUT_SECONDS=0.0 must be >= 0.1",
        "CALLHOOK_BRIDGE_HEARTBEAT_SECONDS=0.5 must be 0 (off) or >= 1",
        "lasts 31.0 s",
    ):
        assert expected in problems
    with pytest.raises(ConfigError, match="not a readable WAV"):
        load({"CALLHOOK_BRIDGE_APOLOGY_WAV": str(tmp_path / "missing.wav")})


# ----------------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("ws://agent.local:8080/stream", "ws://agent.local:8080/stream"),
        ("wss://agent.example/stream?token=s3cret", "wss://agent.example/stream?token=s3cret"),
        ("ws:wss://agent.example/x", "wss://agent.example/x"),
        ("  ws://agent/x  ", "ws://agent/x"),
    ],
)
def test_loader_makes_a_bridge(spec: str, url: str) -> None:
    settings = BridgeSettings(protocol="pcm", sample_rate=24000)
    app = load_app(spec, bridge_settings=settings)
    assert isinstance(app, Bridge)
    assert (app.url, app.settings) == (url, settings)
    assert asyncio.iscoroutinefunction(app.prepare)  # the session's pre-accept hook
    assert "s3cret" not in repr(app)
    assert isinstance(load_app(spec), Bridge)  # default settings when none are given


@pytest.mark.parametrize("spec", ["ws:", "ws://", "wss:///path?token=s3cret", "ws:http://agent/x"])
def test_loader_refuses_bad_agent_urls(spec: str) -> None:
    with pytest.raises(AppSpecError) as caught:
        load_app(spec)
    assert "s3cret" not in str(caught.value)


def test_loader_reads_the_apology(tmp_path: Path) -> None:
    left = audio.tone(600, 0.5, 22050)
    stereo = np.column_stack([np.frombuffer(left, "<i2")] * 2).astype("<i2").tobytes()
    wav = write_wav(tmp_path / "sorry.wav", stereo, rate=22050, channels=2)
    app = load_app("ws://agent/x", bridge_settings=BridgeSettings(apology_wav=wav))
    assert isinstance(app, Bridge)
    assert app.apology == Apology(left, 22050)
    (tmp_path / "sorry.wav").write_text("gone")
    with pytest.raises(AppSpecError, match="apology"):
        load_app("ws://agent/x", bridge_settings=BridgeSettings(apology_wav=wav))


def test_generated_apology_is_the_special_information_tone() -> None:
    apology = Apology.tones(16000)
    third = audio.frame_bytes(16000, 0.33)
    firsts = [apology.pcm[i * third : (i + 1) * third] for i in range(3)]
    assert [round(audio.dominant_frequency(p, 16000), -1) for p in firsts] == [950, 1400, 1800]


# ---------------------------------------------------------------------------------------------- playout
class PlaybackCall:
    """A call whose playback the test advances by hand (``play``); records what it was given.

    Like the real one, ``send`` waits while more than a high-water mark is queued (0.3 s here).
    """

    HIGH_WATER = audio.frame_bytes(8000, 0.3)

    def __init__(self) -> None:
        self.queued = bytearray()
        self.played = bytearray()
        self.cleared = 0
        self._empty = asyncio.Event()
        self._empty.set()
        self._space = asyncio.Event()
        self._space.set()

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        assert sample_rate == 8000
        self.queued += pcm
        self._empty.clear()
        if len(self.queued) > self.HIGH_WATER:
            self._space.clear()
            await self._space.wait()

    def clear(self) -> None:
        self.queued.clear()
        self.cleared += 1
        self._empty.set()
        self._space.set()

    async def wait_played(self) -> None:
        await self._empty.wait()

    def play(self, size: int | None = None) -> None:
        size = len(self.queued) if size is None else size
        self.played += self.queued[:size]
        del self.queued[:size]
        if not self.queued:
            self._empty.set()
        if len(self.queued) <= self.HIGH_WATER:
            self._space.set()


async def settle() -> None:
    """Let every task that can run, run (the playout reacts within a few loop turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
async def playing() -> object:
    call = PlaybackCall()
    playout = Playout(call, 8000, capacity_seconds=1.0)  # type: ignore[arg-type]
    reported: list[str] = []

    async def report(name: str) -> None:
        reported.append(name)

    task = asyncio.get_running_loop().create_task(playout.run(report))
    yield call, playout, reported
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_marks_are_reported_only_after_their_audio_played(
    playing: tuple[PlaybackCall, Playout, list[str]],
) -> None:
    call, playout, reported = playing
    first, second = b"\x01\x00" * 800, b"\x02\x00" * 800  # 0.2 s each at 8 kHz
    playout.add_audio(first)
    playout.add_mark("a")
    playout.add_audio(second)
    playout.add_mark("b")
    await settle()
    assert bytes(call.queued) == first  # what follows a mark waits for the mark
    assert reported == []
    call.play(len(first) - 2)
    await settle()
    assert reported == []  # one sample short: not played yet
    call.play()
    await settle()
    assert reported == ["a"]
    assert bytes(call.queued) == second
    call.play()
    await settle()
    assert reported == ["a", "b"]
    assert bytes(call.played) == first + second


async def test_a_mark_with_nothing_queued_comes_back_at_once(
    playing: tuple[PlaybackCall, Playout, list[str]],
) -> None:
    _, playout, reported = playing
    playout.add_mark("idle")
    await settle()
    assert reported == ["idle"]


async def test_clear_drops_audio_and_hands_back_pending_marks(
    playing: tuple[PlaybackCall, Playout, list[str]],
) -> None:
    call, playout, reported = playing
    playout.add_audio(b"\x01\x00" * 800)
    playout.add_mark("a")
    playout.add_audio(b"\x02\x00" * 800)
    playout.add_mark("b")
    await settle()
    assert playout.clear() == ["a", "b"]  # "a" was being waited for, "b" still queued
    await settle()
    assert call.queued == bytearray()
    assert call.cleared == 1
    assert reported == []  # the player does not report "a" a second time
    playout.add_audio(b"\x03\x00" * 80)
    playout.add_mark("c")
    await settle()
    call.play()
    await settle()
    assert reported == ["c"]
    assert bytes(call.played) == b"\x03\x00" * 80


async def test_the_buffer_is_bounded(playing: tuple[PlaybackCall, Playout, list[str]]) -> None:
    call, playout, _ = playing
    # The player hands 0.4 s to the call (then send waits); the other 1.2 s count against the 1 s capacity.
    playout.add_audio(bytes(audio.frame_bytes(8000, 1.6)))
    await settle()
    assert len(call.queued) == audio.frame_bytes(8000, 0.4)
    assert playout.full
    waiting = asyncio.get_running_loop().create_task(playout.wait_space())
    await settle()
    assert not waiting.done()
    call.play()
    await settle()
    assert waiting.done()
    assert not playout.full
