"""Keypad digits over real aiortc media, the worker's side: telephone-event packets to the keypad, to digits.

The peer is the Meta-shaped aiortc double (``tests/fixtures/meta_peer.py``); it sends RFC 4733 packets through
its transport on an SSRC of their own: aiortc's sender keeps its audio sequence number to itself, and SRTP's
replay check drops packets that look older than those it saw on an SSRC (the simulator's phone, in the
end-to-end tests, interleaves them with its audio as a phone does). Incoming calls: the offer's 126; outgoing
calls: the 126 our offer carries, even though the callee's answer (aiortc's) leaves telephone-event out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiortc.rtp import RtpPacket

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaCallee, MetaPhone
from worker import sdp
from worker.media import MediaSession, MediaSettings
from worker.media.dtmf import EventBlock
from worker.media.keypad import Keypad

CONNECT_TIMEOUT = 10.0


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


async def press(peer: MetaPhone, payload_type: int, event: int, timestamp: int, sequence: int) -> None:
    """One key press as a phone sends it: start (marker), an update, three end packets, one timestamp."""
    sender = peer.transceiver.sender
    ssrc = (sender._ssrc + 1) & 0xFFFFFFFF  # see the module docstring
    blocks = [EventBlock(event, False, 10, 0), EventBlock(event, False, 10, 400)]
    blocks += [EventBlock(event, True, 10, 800)] * 3
    for n, block in enumerate(blocks):
        packet = RtpPacket(
            payload_type, marker=int(n == 0), sequence_number=sequence + n, timestamp=timestamp
        )
        packet.ssrc = ssrc
        packet.payload = block.encode()
        await sender.transport._send_rtp(packet.serialize())  # the test double's transport: a phone's DTMF


async def read_digits(keypad: Keypad, count: int) -> str:
    found = ""
    async with asyncio.timeout(CONNECT_TIMEOUT):
        while len(found) < count:
            digit = await keypad.next_digit()
            assert digit is not None
            found += digit.digit
    return found


async def test_an_incoming_calls_keys_reach_the_keypad_and_never_the_audio() -> None:
    phone = MetaPhone()
    phone.microphone.tone_hz = 440.0
    async with MediaSession(MediaSettings()) as media:
        keypad = Keypad()
        media.on_telephone_event = keypad.feed
        answer = await media.answer(await phone.offer())
        assert sdp.telephone_event_payload_type(answer) == 126
        await phone.accept_answer(answer)
        await media.wait_connected(CONNECT_TIMEOUT)
        for n, event in enumerate((1, 2, 3, 11)):
            await press(phone, 126, event, 8000 * (n + 1), 30000 + 10 * n)
        assert await read_digits(keypad, 4) == "123#"
    await phone.close()


async def test_an_outgoing_calls_callee_can_press_keys_on_our_offers_126() -> None:
    callee = MetaCallee()
    async with MediaSession(MediaSettings()) as media:
        keypad = Keypad()
        media.on_telephone_event = keypad.feed
        offer = await media.offer()
        assert sdp.telephone_event_payload_type(offer) == 126
        answer = await callee.answer(offer)
        assert sdp.telephone_event_payload_type(answer) is None  # aiortc's answer drops what it cannot do
        await media.apply_answer(answer)
        await callee.wait_connected(CONNECT_TIMEOUT)
        await media.wait_connected(CONNECT_TIMEOUT)
        await press(callee, 126, 10, 4000, 50000)
        await press(callee, 126, 0, 12000, 50010)
        assert await read_digits(keypad, 2) == "*0"
    await callee.close()


async def test_the_8000_hz_telephone_event_is_the_one_answered_and_routed() -> None:
    phone = MetaPhone()
    offer = await phone.offer()  # a browser-like offer: telephone-event at 48 kHz first, then at 8 kHz
    offer = offer.replace(" 111 126\r\n", " 111 110 126\r\n").replace(
        "a=rtpmap:126 telephone-event/8000\r\n",
        "a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n",
    )
    assert "a=rtpmap:110 telephone-event/48000" in offer
    async with MediaSession(MediaSettings()) as media:
        answer = await media.answer(offer)
        assert sdp.telephone_event_payload_type(answer) == 126
        assert media.telephone_event_payload_type == 126
    await phone.close()
