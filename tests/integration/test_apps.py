"""The built-in apps against an in-memory call (the app API is the boundary), and echo over real media."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaPhone
from worker import audio
from worker.apps.api import CallEnded, CallInfo, MediaCall
from worker.apps.echo import echo
from worker.apps.loader import load_app
from worker.apps.record import file_name
from worker.events import CallConnect
from worker.media import EndReason, MediaSession, MediaSettings

INFO = CallInfo(
    call_id="wacid.HBgLMTIxNTU1/+MDgyMDUVAgASGCA=",
    phone_number_id="106540352242922",
    direction="incoming",
    user_number="15551234567",
    user_name="Ada",
    business_number="15550001111",
)


class FakeCall:
    """An in-memory :class:`worker.apps.api.Call`: scripted inbound frames, recorded outbound audio."""

    def __init__(self, inbound: list[bytes], *, stay_open: bool = False) -> None:
        self.info = INFO
        self.inbound = inbound
        self.stay_open = stay_open
        self.inbound_done = asyncio.Event()
        self.sent: list[tuple[bytes, int]] = []
        self.log: list[str] = []
        self.hung_up = False

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        assert sample_rate == 16000
        for frame in self.inbound:
            yield frame
        self.inbound_done.set()
        if self.stay_open:
            await asyncio.Event().wait()  # the call goes on until the test cancels the app

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        if self.hung_up:
            raise CallEnded("hung up")
        self.sent.append((pcm, sample_rate))
        self.log.append("send")

    def clear(self) -> None:
        self.log.append("clear")

    async def wait_played(self) -> None:
        self.log.append("wait_played")

    async def hangup(self) -> None:
        self.hung_up = True
        self.log.append("hangup")


def tone_frames(frequency_hz: float, seconds: float) -> list[bytes]:
    pcm = audio.tone(frequency_hz, seconds, 16000)
    size = audio.frame_bytes(16000)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# --------------------------------------------------------------------------------------------- echo
async def test_echo_sends_back_every_frame_unchanged() -> None:
    inbound = tone_frames(440.0, 0.5)
    call = FakeCall(inbound)
    await echo(call)
    assert call.sent == [(frame, 16000) for frame in inbound]
    assert not call.hung_up  # the app ends with the call's audio; the session hangs up


# --------------------------------------------------------------------------------------------- play
async def test_play_sends_the_whole_file_then_waits_and_hangs_up(tmp_path: Path) -> None:
    rate, seconds = 44100, 1.3
    left = np.frombuffer(audio.tone(500.0, seconds, rate, amplitude=0.4), dtype="<i2")
    right = np.frombuffer(audio.tone(500.0, seconds, rate, amplitude=0.2), dtype="<i2")
    path = tmp_path / "prompt.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())

    call = FakeCall([])
    await load_app(f"play:{path}")(call)

    assert {r for _, r in call.sent} == {rate}
    played = b"".join(pcm for pcm, _ in call.sent)
    assert len(played) == left.size * 2  # every frame, mixed down to mono
    assert abs(audio.dominant_frequency(played, rate) - 500) < 5
    mixed = np.frombuffer(played, dtype="<i2")
    assert np.abs(mixed.astype(np.int32) - (left.astype(np.int32) + right) // 2).max() <= 1
    assert call.log[-2:] == ["wait_played", "hangup"]


# ------------------------------------------------------------------------------------------- record
def only_file(directory: Path) -> Path:
    [path] = list(directory.iterdir())
    return path


def read_wav(path: Path) -> tuple[int, int, bytes]:
    with wave.open(str(path), "rb") as r:
        return r.getframerate(), r.getnchannels(), r.readframes(r.getnframes())


async def test_record_writes_one_file_per_call(tmp_path: Path) -> None:
    inbound = tone_frames(300.0, 2.5)  # more than one flush
    call = FakeCall(inbound)
    await load_app(f"record:{tmp_path}")(call)
    path = only_file(tmp_path)
    assert path.name == file_name(INFO.call_id) + ".wav" == "wacid.HBgLMTIxNTU1__MDgyMDUVAgASGCA_.wav"
    assert read_wav(path) == (16000, 1, b"".join(inbound))
    assert call.sent == []  # the caller hears the session's silence


async def test_record_finishes_the_file_when_cancelled(tmp_path: Path) -> None:
    inbound = tone_frames(300.0, 1.5)
    call = FakeCall(inbound, stay_open=True)
    task = asyncio.get_running_loop().create_task(load_app(f"record:{tmp_path}")(call))
    async with asyncio.timeout(5):
        await call.inbound_done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path = only_file(tmp_path)
    assert path.suffix == ".wav"
    assert read_wav(path) == (16000, 1, b"".join(inbound))


def test_file_names_are_safe() -> None:
    assert file_name("../../etc/passwd") == "_.._etc_passwd"
    assert file_name("...") == "call"


# ------------------------------------------------------------------------------------- MediaCall, info
class FakePort:
    def __init__(self) -> None:
        self.ended_reason: EndReason | None = None
        self.sent: list[bytes] = []

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        yield b""

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        self.sent.append(pcm)

    def clear(self) -> None:
        pass

    async def wait_played(self) -> None:
        pass


async def test_media_call_refuses_audio_after_the_end() -> None:
    hangups: list[str] = []

    async def hangup() -> None:
        hangups.append("hangup")

    port = FakePort()
    call = MediaCall(INFO, port, hangup)
    await call.send(b"\x00\x00")
    port.ended_reason = EndReason.REMOTE_ENDED
    with pytest.raises(CallEnded):
        await call.send(b"\x00\x00")

    port.ended_reason = None
    await call.hangup()
    await call.hangup()
    assert hangups == ["hangup"]
    with pytest.raises(CallEnded):
        await call.send(b"\x00\x00")
    assert port.sent == [b"\x00\x00"]


def test_call_info_from_connect_events() -> None:
    common = {"call_id": "wacid.1", "phone_number_id": "PN", "timestamp": 1, "sdp": "v=0\r\n"}
    incoming = CallConnect(
        direction="incoming", caller="1555", callee="1999", sdp_type="offer", contact_name="Ada", **common
    )
    info = CallInfo.from_connect(incoming)
    assert (info.user_number, info.business_number, info.caller, info.callee) == (
        "1555",
        "1999",
        "1555",
        "1999",
    )
    assert info.user_name == "Ada"
    outgoing = CallConnect(
        direction="outgoing",
        caller="1999",
        callee="1555",
        sdp_type="answer",
        biz_opaque_callback_data="order-7",
        **common,
    )
    info = CallInfo.from_connect(outgoing)
    assert (info.user_number, info.caller, info.callee) == ("1555", "1999", "1555")
    assert info.biz_opaque_callback_data == "order-7"


# ------------------------------------------------------------------------------- echo over real media
@pytest.fixture
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.mark.usefixtures("_loopback_only")
async def test_echo_over_real_media_returns_the_callers_tone() -> None:
    phone = MetaPhone()
    phone.microphone.tone_hz = 440.0
    hangups: list[str] = []

    async def hangup() -> None:
        hangups.append("hangup")

    async with MediaSession(MediaSettings(silence_timeout_seconds=30)) as media:
        await phone.accept_answer(await media.answer(await phone.offer()))
        await media.wait_connected(10)
        media.start_sending()  # what the session does once accept returned 200
        app = asyncio.get_running_loop().create_task(echo(MediaCall(INFO, media, hangup)))

        await phone.wait_heard(440.0)
        phone.microphone.tone_hz = 880.0  # it is the caller's own audio coming back, not a coincidence
        await phone.wait_heard(880.0)
        assert not app.done()
    # Closing the media ends the app's frames, so echo returns by itself.
    async with asyncio.timeout(5):
        await app
    assert hangups == []
    await phone.close()
