"""The simulated phone over real aiortc media: its network hook, its ears at the socket, its keypad.

The business here is a plain aiortc peer in this test. It answers the phone's Meta-shaped offer (keeping
``telephone-event/8000`` as 126, as a business that wants digits does) and taps its own decrypted RTP with the
simulator's :class:`~simulator.wiretap.InboundTap`, so the test sees every packet the business's transport
received, in arrival order, with sequence numbers and payload types.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiortc import (
    RTCConfiguration,
    RTCDtlsTransport,
    RTCIceTransport,
    RTCPeerConnection,
    RTCSessionDescription,
)

from callhook.ice import restrict_host_addresses
from simulator import dtmf
from simulator.heard import HeardLog
from simulator.net import NetProfile, parse_link
from simulator.phone import DtmfUnavailable, Phone, PhoneSettings
from simulator.sdp import business_answer, business_offer, join_lines, split_lines
from simulator.wiretap import InboundTap

pytestmark = pytest.mark.asyncio
WAIT = 20.0


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


def with_telephone_event(answer: str, pt: int = 126) -> str:
    lines = []
    for line in split_lines(answer):
        if line.startswith("m=audio "):
            line = f"{line} {pt}"
        lines.append(line)
        if line.startswith("a=rtpmap:") and "opus" in line.lower():
            lines.append(f"a=rtpmap:{pt} telephone-event/8000")
    return join_lines(lines)


class RecordingTap(InboundTap):
    """Every packet in arrival order: (sequence number, payload type, header); wakes waiters."""

    def __init__(self) -> None:
        super().__init__(HeardLog(), opus_pt=111)
        self.sequence: list[tuple[int, int, dtmf.RtpHeader]] = []
        self.changed = asyncio.Event()

    def observe(self, data: bytes, now: float) -> None:
        super().observe(data, now)
        packet = dtmf.parse_rtp(data)
        self.sequence.append((packet.sequence_number, packet.payload_type, packet))
        self.changed.set()

    async def wait_for(self, predicate: object, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def dtmf_packets(self) -> list[dtmf.RtpHeader]:
        return [p for _, pt, p in self.sequence if pt == 126]


@dataclass
class Call:
    phone: Phone
    business: RTCPeerConnection
    tap: RecordingTap
    tasks: list[asyncio.Task[str]] = field(default_factory=list)


@pytest_asyncio.fixture
async def make_call() -> AsyncIterator[object]:
    calls: list[Call] = []

    async def make(net: NetProfile, *, dtmf_pt: int | None = 126) -> Call:
        phone = Phone(
            PhoneSettings(net=net, net_seed=5, midcall_silence_seconds=60, start_silence_seconds=60)
        )
        business = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tap = RecordingTap()
        call = Call(phone, business, tap)
        calls.append(call)
        offer = await phone.create_offer()
        await business.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        transport = business.getTransceivers()[0].receiver.transport
        assert isinstance(transport, RTCDtlsTransport)
        tap.install(transport)
        await business.setLocalDescription(await business.createAnswer())
        answer = business_answer(business.localDescription.sdp)
        if dtmf_pt is not None:
            answer = with_telephone_event(answer, dtmf_pt)
        await phone.accept_answer(answer)
        assert await phone.wait_connected(WAIT)
        phone.start_talking()
        call.tasks.append(asyncio.get_running_loop().create_task(phone.run_media()))
        await tap.wait_for(lambda: len(tap.sequence) >= 10)  # the phone's audio flows
        return call

    yield make
    for call in calls:
        for task in call.tasks:
            task.cancel()
        await call.phone.close()
        await call.business.close()


def presses(events: list[dtmf.RtpHeader]) -> list[list[tuple[dtmf.RtpHeader, dtmf.TelephoneEvent]]]:
    """Packets grouped by RTP timestamp (one group per key press), in arrival order."""
    groups: dict[int, list[tuple[dtmf.RtpHeader, dtmf.TelephoneEvent]]] = {}
    for packet in events:
        groups.setdefault(packet.timestamp, []).append((packet, dtmf.parse_event(packet.payload)))
    return list(groups.values())


async def test_a_key_press_is_sent_as_a_phone_sends_it(make_call: object) -> None:
    assert callable(make_call)
    call: Call = await make_call(NetProfile())
    await call.phone.press("123#", tone_seconds=0.2, gap_seconds=0.1)
    await call.tap.wait_for(lambda: sum(1 for p in call.tap.dtmf_packets() if p.payload[1] & 0x80) == 12)
    audio_ssrc = next(p.ssrc for _, pt, p in call.tap.sequence if pt == 111)

    groups = presses(call.tap.dtmf_packets())
    assert "".join(group[0][1].digit for group in groups) == "123#"
    for group in groups:
        headers = [h for h, _ in group]
        events = [e for _, e in group]
        # Start with the marker bit, updates every 50 ms (200 ms: 4 packets), then three end packets.
        assert [h.marker for h in headers] == [True] + [False] * 6
        assert [e.end for e in events] == [False] * 4 + [True] * 3
        assert [e.duration for e in events] == [400, 800, 1200, 1600, 1600, 1600, 1600]
        assert {h.ssrc for h in headers} == {audio_ssrc}  # the audio stream's SSRC, another payload type
        assert len({e.event for e in events}) == 1
        assert all(e.volume == 10 for e in events)
    timestamps = [group[0][0].timestamp for group in groups]
    assert timestamps == sorted(timestamps)
    assert len(set(timestamps)) == 4

    # One sequence for audio and events together: no number skipped, none used twice, events between audio.
    numbers = [seq for seq, _, _ in call.tap.sequence]
    assert sorted(numbers) == list(range(numbers[0], numbers[0] + len(numbers)))  # no wrap in this short call
    kinds = [pt for _, pt, _ in sorted(call.tap.sequence, key=lambda item: item[0])]
    first_event = kinds.index(126)
    assert 111 in kinds[first_event:]  # audio kept flowing between the digits' packets


async def test_no_digit_is_lost_on_a_lossy_link(make_call: object) -> None:
    assert callable(make_call)
    call: Call = await make_call(NetProfile(up=parse_link("loss=5%,jitter=20ms")))
    await call.phone.press("1234567890*#", tone_seconds=0.15, gap_seconds=0.06)
    # The last press's end packets, some of them: wait until its timestamp was seen with the E bit or give up.
    await call.tap.wait_for(
        lambda: (
            len(presses(call.tap.dtmf_packets())) == 12 and presses(call.tap.dtmf_packets())[-1][-1][1].end
        )
    )
    assert "".join(group[0][1].digit for group in presses(call.tap.dtmf_packets())) == "1234567890*#"
    assert call.phone.net.up.stats.lost > 0  # the link did lose packets


async def test_the_phone_refuses_digits_the_business_did_not_negotiate(make_call: object) -> None:
    assert callable(make_call)
    call: Call = await make_call(NetProfile(), dtmf_pt=None)
    assert call.phone.telephone_event_pt is None
    with pytest.raises(DtmfUnavailable):
        await call.phone.press("1")
    await call.phone.press("5", payload_type=101)  # a forced payload type goes out anyway
    await call.tap.wait_for(lambda: any(pt == 101 for _, pt, _ in call.tap.sequence))


async def test_the_network_hook_sits_on_the_seams_it_names(make_call: object) -> None:
    """aiortc/aioice internals the hook wraps: if a new version moves them, this fails here, loudly."""
    assert callable(make_call)
    call: Call = await make_call(NetProfile(down=parse_link("loss=10%")))
    transceiver = call.phone._pc.getTransceivers()[0]
    ice = transceiver.sender.transport.transport
    assert isinstance(ice, RTCIceTransport)
    assert ice._send.__name__ == "sent"
    assert ice._connection.data_received.__name__ == "received"
    assert transceiver.sender.transport._send_rtp.__name__ == "outgoing"
    assert transceiver.sender.transport._handle_rtp_data.__name__ == "tapped"
    # Both directions counted datagrams; the business never sent audio, so only RTCP and DTLS came down.
    assert call.phone.net.up.stats.datagrams > 10
    assert call.phone.net.down.stats.datagrams > 0


async def test_on_a_call_the_business_placed_the_phone_answers_with_telephone_event_and_presses() -> None:
    phone = Phone(PhoneSettings(midcall_silence_seconds=60, start_silence_seconds=60))
    business = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tap = RecordingTap()
    try:
        business.addTransceiver("audio", direction="sendrecv")
        await business.setLocalDescription(await business.createOffer())
        transport = business.getTransceivers()[0].receiver.transport
        assert isinstance(transport, RTCDtlsTransport)
        tap.install(transport)
        offer = with_telephone_event(business_offer(business.localDescription.sdp), 101)
        answer = await phone.answer(offer)
        assert "a=rtpmap:101 telephone-event/8000" in answer.split("\r\n")
        await business.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert await phone.wait_connected(WAIT)
        phone.start_talking()
        await tap.wait_for(lambda: len(tap.sequence) >= 10)
        await phone.press("9*")
        await tap.wait_for(
            lambda: sum(1 for _, pt, p in tap.sequence if pt == 101 and p.payload[1] & 0x80) == 6
        )
        digits = [dtmf.parse_event(p.payload) for _, pt, p in tap.sequence if pt == 101 and p.marker]
        assert [d.digit for d in digits] == ["9", "*"]
    finally:
        await phone.close()
        await business.close()
