"""The keypad an app reads: buffered digits, once each, the lost-end timer, and collect_digits' rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.dtmf_packets import Packet, press
from worker.apps.api import CallInfo, Digit, MediaCall, collect_digits
from worker.media.keypad import Keypad

INFO = CallInfo(
    call_id="wacid.keypad", phone_number_id="106540352242922", direction="incoming", user_number="1"
)
BOUND = 10.0  # every wait here is bounded; none of them is a timing assertion


def pressed(keys: str, *, start: int = 1000, at: float | None = None) -> list[Packet]:
    """Whole presses of ``keys`` (event codes by name), 0.5 s and 4000 ticks apart, arriving now."""
    codes = {k: i for i, k in enumerate("0123456789*#ABCD")}
    now = asyncio.get_running_loop().time() if at is None else at
    return [p for n, key in enumerate(keys) for p in press(codes[key], start + n * 4000, at=now + n * 0.5)]


class FakePort:
    ended_reason = None

    async def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        yield b""

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        pass

    def clear(self) -> None:
        pass

    async def wait_played(self) -> None:
        pass


async def no_hangup() -> None:
    pass


def call_with(keypad: Keypad | None) -> MediaCall:
    return MediaCall(INFO, FakePort(), no_hangup, keypad)


# ------------------------------------------------------------------------------------------- Keypad
async def test_digits_are_buffered_until_read_and_read_once() -> None:
    counted: list[Digit] = []
    keypad = Keypad(on_digit=counted.append)
    for packet in pressed("12#"):
        keypad.feed(packet)
    assert len(counted) == 3
    call = call_with(keypad)
    async with asyncio.timeout(BOUND):
        first = await anext(aiter(call.dtmf()))
        rest = await call.collect_digits(max=None, end="#")
    assert (first.digit, rest) == ("1", "2")
    keypad.close()
    assert [d async for d in call.dtmf()] == []


async def test_a_press_whose_end_packets_were_lost_arrives_by_the_timer() -> None:
    keypad = Keypad(end_timeout_seconds=0.05)
    for packet in pressed("7")[:-3]:
        keypad.feed(packet)
    async with asyncio.timeout(BOUND):
        digit = await keypad.next_digit()
    assert digit is not None
    assert digit.digit == "7"
    assert keypad.statistics().timed_out == 1


async def test_close_reports_a_held_key_then_ends_the_readers() -> None:
    keypad = Keypad()
    reader = asyncio.create_task(collect_digits(keypad.next_digit, max=None, end=None, timeout=None))
    for packet in pressed("45")[:-3]:  # "5" still held when the call ends
        keypad.feed(packet)
    keypad.close()
    keypad.feed(pressed("9", start=99000)[0])  # nothing after the end
    async with asyncio.timeout(BOUND):
        assert await reader == "45"


async def test_the_oldest_digits_are_dropped_past_the_capacity() -> None:
    keypad = Keypad(capacity=2)
    for packet in pressed("123"):
        keypad.feed(packet)
    keypad.close()
    assert keypad.dropped == 1
    assert await collect_digits(keypad.next_digit, max=None, end=None) == "23"


async def test_a_call_without_a_keypad_has_no_digits() -> None:
    call = call_with(None)
    assert [d async for d in call.dtmf()] == []
    assert await call.collect_digits() == ""


# ------------------------------------------------------------------------------------ collect_digits
def script(keys: str | list[str], *, then_wait: bool = True) -> asyncio.Queue[Digit | None]:
    """Digits already pressed; then the call goes on (``then_wait``) or ends (None)."""
    queue: asyncio.Queue[Digit | None] = asyncio.Queue()
    for n, key in enumerate(keys):
        queue.put_nowait(Digit(key, 0.1, float(n), n * 1000))
    if not then_wait:
        queue.put_nowait(None)
    return queue


@pytest.mark.parametrize(
    ("keys", "kwargs", "expected"),
    [
        ("1234#9", {"max": 6, "end": "#"}, "1234"),  # the terminator ends it and is left out
        ("#", {"end": "#"}, ""),  # a lone terminator: the caller skipped
        ("12345678", {"max": 6}, "123456"),  # max reached
        ("12#4", {"max": 2}, "12"),  # max reached before the terminator was read
        ("1*2", {"end": "*"}, "1"),  # any key can terminate
        ("12#3", {"end": None, "max": 4}, "12#3"),  # no terminator: # is a digit
        (["1", "flash", "2", "#"], {}, "12"),  # a flash is not a digit
    ],
)
async def test_collect_digits_stops_where_documented(
    keys: str, kwargs: dict[str, object], expected: str
) -> None:
    queue = script(keys)
    async with asyncio.timeout(BOUND):
        assert await collect_digits(queue.get, **kwargs, timeout=None) == expected  # type: ignore[arg-type]


async def test_collect_digits_leaves_what_follows_for_the_next_read() -> None:
    queue = script("12#34#")
    assert await collect_digits(queue.get, timeout=None) == "12"
    assert await collect_digits(queue.get, timeout=None) == "34"


async def test_the_timeout_is_between_digits_and_returns_what_was_collected() -> None:
    queue = script("42")  # then nothing more is pressed
    async with asyncio.timeout(BOUND):
        assert await collect_digits(queue.get, max=6, end="#", timeout=0.05) == "42"
        assert await collect_digits(queue.get, timeout=0.05) == ""  # nobody pressed anything


async def test_collect_digits_returns_what_it_has_when_the_call_ends() -> None:
    queue = script("98", then_wait=False)
    assert await collect_digits(queue.get, timeout=None) == "98"


@pytest.mark.parametrize("kwargs", [{"max": 0}, {"end": "##"}, {"end": ""}])
async def test_collect_digits_refuses_nonsense(kwargs: dict[str, object]) -> None:
    queue = script("1")
    with pytest.raises(ValueError, match=r"max|end"):
        await collect_digits(queue.get, **kwargs)  # type: ignore[arg-type]
