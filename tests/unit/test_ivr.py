"""The ``ivr:`` example app: its spec, and what the caller hears for each key, against an in-memory call."""

from __future__ import annotations

import asyncio
import functools
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker import audio
from worker.apps import ivr as ivr_module
from worker.apps.api import CallEnded, CallInfo, Digit, collect_digits
from worker.apps.ivr import GOODBYE, INVALID, MELODY, MENU, Menu, Route, Sound, ivr
from worker.apps.loader import AppSpecError, load_app

INFO = CallInfo(call_id="wacid.ivr", phone_number_id="1", direction="incoming", user_number="2")
BOUND = 10.0


def write_wav(path: Path, pcm: bytes, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


class KeypadCall:
    """An in-memory call: the caller presses ``answers``' next key each time the menu has started playing (or
    ``ahead``, typed before anything was heard); what the app sent is recorded, sound by sound."""

    def __init__(self, answers: str = "", *, ahead: str = "", inbound: list[bytes] | None = None) -> None:
        self.info = INFO
        self.keys: asyncio.Queue[Digit | None] = asyncio.Queue()
        self.answers = list(answers)
        for key in ahead:
            self.press(key)
        self.inbound = inbound or []
        self.heard: list[bytes] = []
        self.log: list[str] = []
        self.hung_up = False

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        for frame in self.inbound:
            yield frame

    def press(self, key: str) -> None:
        self.keys.put_nowait(Digit(key, 0.1, 0.0, self.keys.qsize()))

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        if self.hung_up:
            raise CallEnded("hung up")
        self.heard.append(pcm)
        if pcm == MENU.pcm and self.answers:
            self.press(self.answers.pop(0))

    def clear(self) -> None:
        self.log.append("clear")

    async def wait_played(self) -> None:
        pass

    async def dtmf(self) -> AsyncIterator[Digit]:
        while (digit := await self.keys.get()) is not None:
            yield digit

    async def collect_digits(
        self,
        max: int | None = 6,
        end: str | None = "#",
        timeout: float | None = 5,  # noqa: ASYNC109  # the Call API's
    ) -> str:
        return await collect_digits(self.keys.get, max, end, timeout)

    async def hangup(self) -> None:
        self.hung_up = True
        self.log.append("hangup")


async def run(call: KeypadCall, menu: Menu) -> None:
    async with asyncio.timeout(BOUND):
        await ivr(call, menu)  # type: ignore[arg-type]


QUICK = 0.05  # seconds the menu waits for a key after the prompt, in these tests


# ------------------------------------------------------------------------------------------- the spec
def test_ivr_alone_is_echo_play_hangup_with_the_generated_menu() -> None:
    app = load_app("ivr")
    assert isinstance(app, functools.partial)
    assert app.func is ivr
    menu = app.keywords["menu"]
    assert menu.routes == {"1": Route("echo"), "2": Route("play", MELODY), "9": Route("hangup")}
    assert menu.prompt == MENU
    assert load_app("ivr:").keywords["menu"] == menu  # type: ignore[attr-defined]
    assert load_app("ivr:,").keywords["menu"] == menu  # type: ignore[attr-defined]


def test_a_menu_file_alone_keeps_the_default_keys(tmp_path: Path) -> None:
    prompt = write_wav(tmp_path / "menu.wav", audio.tone(500, 0.5, 8000))
    menu = load_app(f"ivr:menu={prompt}").keywords["menu"]  # type: ignore[attr-defined]
    assert menu.prompt == Sound(audio.tone(500, 0.5, 8000), 8000)
    assert menu.routes == Menu.parse("").routes


def test_ivr_spec_with_files_and_other_keys(tmp_path: Path) -> None:
    prompt = write_wav(tmp_path / "menu.wav", audio.tone(500, 0.5, 8000))
    hours = write_wav(tmp_path / "hours.wav", audio.tone(700, 1.0, 8000))
    app = load_app(f"ivr:menu={prompt}, 3=play:{hours},#=hangup,0=echo")
    menu = app.keywords["menu"]  # type: ignore[attr-defined]
    assert menu.prompt == Sound(audio.tone(500, 0.5, 8000), 8000)
    assert menu.routes == {
        "3": Route("play", Sound(audio.tone(700, 1.0, 8000), 8000)),
        "#": Route("hangup"),
        "0": Route("echo"),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ivr:1", "not key=route"),
        ("ivr:1=", "not key=route"),
        ("ivr:x=echo", "not a key"),
        ("ivr:1=dance", "not echo, play"),
        ("ivr:1=echo:loud", "not echo, play"),
        ("ivr:1=play:/nowhere.wav", "not a readable WAV"),
        ("ivr:menu=/nowhere.wav,1=echo", "not a readable WAV"),
    ],
)
def test_bad_ivr_specs_fail_at_load(spec: str, message: str) -> None:
    with pytest.raises(AppSpecError, match=message):
        load_app(spec)


# ------------------------------------------------------------------------------------- the behaviour
def default_menu() -> Menu:
    return Menu(dict(Menu.parse("").routes), MENU, no_input_seconds=QUICK)


async def test_9_says_goodbye_and_hangs_up() -> None:
    call = KeypadCall("9")
    await run(call, default_menu())
    assert call.heard[-1] == GOODBYE.pcm
    assert call.log[-1] == "hangup"


async def test_a_key_stops_the_menu_at_once() -> None:
    call = KeypadCall("9")
    await run(call, default_menu())
    assert call.heard[0] == MENU.pcm
    assert call.log[0] == "clear"  # barge-in: the menu's rest is dropped when the key comes


async def test_keys_typed_ahead_skip_the_menus() -> None:
    call = KeypadCall(ahead="29")
    await run(call, default_menu())
    assert call.heard == [MELODY.pcm, GOODBYE.pcm]


async def test_2_plays_then_the_menu_comes_back() -> None:
    call = KeypadCall("29")
    await run(call, default_menu())
    assert call.heard == [MENU.pcm, MELODY.pcm, MENU.pcm, GOODBYE.pcm]


async def test_1_echoes_the_caller_until_the_call_ends() -> None:
    voice = [audio.tone(440, 0.02, 16000)] * 5
    call = KeypadCall("1", inbound=voice)
    await run(call, default_menu())
    assert call.heard == [MENU.pcm, *voice]  # the caller's audio ended: the app returned (the call ends)


async def test_an_unknown_key_buzzes_and_asks_again() -> None:
    call = KeypadCall("59")
    await run(call, default_menu())
    assert call.heard == [MENU.pcm, INVALID.pcm, MENU.pcm, GOODBYE.pcm]


async def test_no_key_three_times_ends_the_call() -> None:
    call = KeypadCall("")
    await run(call, Menu({"1": Route("echo")}, Sound(audio.silence(16000)), no_input_seconds=QUICK))
    assert call.heard.count(INVALID.pcm) == ivr_module.ATTEMPTS
    assert call.heard[-1] == GOODBYE.pcm
    assert call.log[-1] == "hangup"


async def test_the_caller_hanging_up_ends_the_app_quietly() -> None:
    call = KeypadCall("2")
    call.hung_up = True  # every send now raises CallEnded
    await run(call, default_menu())
