"""``call.transfer`` as an app sees it (worker/apps/api.py), and the ivr's ``transfer:<queue>`` route."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_keypad import BOUND, INFO, FakePort, pressed
from worker.apps.api import CallEnded, MediaCall
from worker.apps.ivr import IvrSpecError, Menu, Route
from worker.errors import CallhookError
from worker.handoff.wire import TransferRequest
from worker.media.keypad import Keypad


class Port(FakePort):
    def __init__(self) -> None:
        self.cleared = 0

    def clear(self) -> None:
        self.cleared += 1


async def test_transfer_carries_the_digits_collected_and_ends_the_apps_part() -> None:
    """The queue shows what the bot collected ("42"), not the keys with the terminator ("42#")."""
    requests: list[TransferRequest] = []
    hangups: list[str] = []

    async def hangup() -> None:
        hangups.append("hangup")

    keypad = Keypad()
    for packet in pressed("42#"):
        keypad.feed(packet)
    port = Port()
    call = MediaCall(INFO, port, hangup, keypad, transfer=requests.append)
    async with asyncio.timeout(BOUND):
        assert await call.collect_digits(max=4, end="#") == "42"
    await call.transfer("support", reason="asked for a person", context={"order": "A-42"})
    assert requests == [
        TransferRequest(queue="support", reason="asked for a person", context={"order": "A-42"}, digits="42")
    ]
    assert port.cleared == 1  # what the app had queued is not played over the hold audio
    with pytest.raises(CallEnded):
        await call.send(b"\x00\x00" * 320)
    await call.hangup()  # ignored: the call goes on, with a person
    assert hangups == []
    with pytest.raises(CallEnded):
        await call.transfer("support")


async def test_transfer_needs_a_queue_and_a_worker_that_can_hand_off() -> None:
    call = MediaCall(INFO, Port(), FakePortHangup.none)
    with pytest.raises(CallhookError, match="not available"):
        await call.transfer("support")
    call = MediaCall(INFO, Port(), FakePortHangup.none, transfer=lambda request: None)
    with pytest.raises(ValueError, match="queue"):
        await call.transfer("")


class FakePortHangup:
    @staticmethod
    async def none() -> None:
        pass


def test_ivr_routes_a_key_to_a_queue() -> None:
    menu = Menu.parse("1=echo,0=transfer:support")
    assert menu.routes["0"] == Route("transfer", queue="support")
    with pytest.raises(IvrSpecError, match="transfer:<queue>"):
        Menu.parse("0=transfer")
