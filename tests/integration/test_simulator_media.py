"""Phone-to-business calls through the simulator carry real audio both ways (aiortc on 127.0.0.1).

The business here is written in this test on plain aiortc + aiohttp: it reads the offer from the exact
webhook bytes the simulator sent, answers through the Graph API with aiortc's answer reduced to the SHA-256
fingerprint and ``a=setup:active``, and echoes what it hears. The phone's recording must match what it
played, within codec tolerance. Webhooks land on a signature-checking receiver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from callhook.ice import restrict_host_addresses
from simulator.business import EchoBusiness
from simulator.calls import CallState
from simulator.config import AnswerWebhook, CalleeAction, CalleeBehaviour, CallTiming, SimulatorConfig
from simulator.sdp import business_answer, business_offer
from simulator.sim import Simulator

TOKEN = "graph-token"
SECRET = "app-secret"
USER = "15551230001"
TAG = "crm/42"
Json = dict[str, Any]


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


def _config(**timing: float) -> SimulatorConfig:
    return SimulatorConfig(
        app_secret=SECRET,
        access_token=TOKEN,
        graph_port=0,
        timing=dataclasses.replace(CallTiming(answer_window_seconds=20.0), **timing),
        callee=CalleeBehaviour(ring_seconds=0.1),
    )


class Echo(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.source: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        return await (await self.source).recv()


class TestBusiness:
    """A business on plain aiortc, written for this test: one peer connection per call, echoing audio."""

    __test__ = False

    def __init__(self, session: aiohttp.ClientSession, sim: Simulator) -> None:
        self._session = session
        self._sim = sim
        self.pcs: list[RTCPeerConnection] = []

    def new_peer(self, *, echo: bool = True) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        if echo:
            track = Echo()
            pc.addTrack(track)

            @pc.on("track")
            def on_track(remote: MediaStreamTrack) -> None:
                track.source.set_result(remote)

        return pc

    async def calls(self, **body: Any) -> tuple[int, Json]:
        number = self._sim.config.numbers[0].phone_number_id
        url = f"{self._sim.graph_url}/v23.0/{number}/calls"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        request = {"messaging_product": "whatsapp", **body}
        async with self._session.post(url, json=request, headers=headers) as response:
            return response.status, await response.json()

    async def answer(self, call_id: str, offer: str, *, echo: bool = True) -> RTCPeerConnection:
        pc = self.new_peer(echo=echo)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        session = {"sdp_type": "answer", "sdp": business_answer(pc.localDescription.sdp)}
        assert await self.calls(action="pre_accept", call_id=call_id, session=session) == (200, SUCCESS)
        assert await self.calls(action="accept", call_id=call_id, session=session) == (200, SUCCESS)
        return pc

    async def dial(self, to: str) -> tuple[str, RTCPeerConnection]:
        pc = self.new_peer()
        await pc.setLocalDescription(await pc.createOffer())
        session = {"sdp_type": "offer", "sdp": business_offer(pc.localDescription.sdp)}
        status, body = await self.calls(
            action="connect", to=to, session=session, biz_opaque_callback_data="crm/42"
        )
        assert status == 200, body
        call_id: str = body["calls"][0]["id"]
        return call_id, pc

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


SUCCESS = {"messaging_product": "whatsapp", "success": True}


def ice_role(pc: RTCPeerConnection) -> str:
    role: str = pc.getTransceivers()[0].sender.transport.transport.role
    return role


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(_config(), ingress_url="http://127.0.0.1:9/unused") as simulator:
        yield simulator


@pytest.fixture
async def receiver(sim: Simulator) -> AsyncIterator[EchoBusiness]:
    number = sim.config.numbers[0].phone_number_id
    business = EchoBusiness(
        graph_url=sim.graph_url,
        access_token=TOKEN,
        app_secret=SECRET,
        phone_number_id=number,
        answer_calls=False,
    )
    async with business:
        sim.webhooks.url = business.webhook_url
        yield business


@pytest.fixture
async def business(sim: Simulator) -> AsyncIterator[TestBusiness]:
    async with aiohttp.ClientSession() as session:
        test_business = TestBusiness(session, sim)
        yield test_business
        await test_business.close()


def _item(body: bytes) -> Json:
    item: Json = json.loads(body)["entry"][0]["changes"][0]["value"]["calls"][0]
    return item


async def test_an_incoming_call_carries_audio_both_ways(
    sim: Simulator, receiver: EchoBusiness, business: TestBusiness
) -> None:
    call = await sim.place_call(USER, name="Ada")
    connect = await sim.journal.wait_for_delivery("connect", call_id=call.call_id)
    offer = _item(connect.body)["session"]["sdp"]
    assert "a=ice-lite\r\n" in offer
    assert "m=audio" in offer
    assert " UDP/TLS/RTP/SAVPF 111 126\r\n" in offer
    assert "a=fingerprint:sha-384" not in offer

    pc = await business.answer(call.call_id, offer)
    assert await call.wait_state(CallState.ACCEPTED) is CallState.ACCEPTED
    assert ice_role(pc) == "controlling"  # the business, seeing ice-lite
    assert call.phone.ice_role == "controlled"  # Meta's side, through the documented seam
    await call.wait_heard(2.0, timeout=15)
    await call.hangup()

    report = call.audio_report()
    assert report.matched, report
    assert report.match_ratio >= 0.9
    assert report.round_trip_seconds is not None
    assert report.round_trip_seconds > 0

    terminate = await sim.journal.wait_for_delivery("terminate", call_id=call.call_id)
    item = _item(terminate.body)
    assert item["status"] == "COMPLETED"
    assert item["direction"] == "USER_INITIATED"
    assert int(item["end_time"]) - int(item["start_time"]) == item["duration"]
    assert call.end_reason == "phone_hangup"
    assert all(webhook.signature_ok for webhook in receiver.webhooks)


async def test_an_outgoing_call_is_answered_by_the_phone_with_audio_both_ways(
    sim: Simulator, receiver: EchoBusiness, business: TestBusiness
) -> None:
    sim.set_permission(USER, "permanent")
    call_id, pc = await business.dial(USER)
    call = sim.call(call_id)
    answer_delivery = await sim.journal.wait_for_delivery("connect", call_id=call_id)
    item = _item(answer_delivery.body)
    assert item["direction"] == "BUSINESS_INITIATED"
    assert item["session"]["sdp_type"] == "answer"
    assert item["biz_opaque_callback_data"] == TAG
    answer = item["session"]["sdp"]
    assert "a=setup:active\r\n" in answer
    assert "a=ice-lite\r\n" in answer
    assert answer.count("a=fingerprint:") == 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    assert await call.wait_state(CallState.ACCEPTED) is CallState.ACCEPTED
    assert call.phone.ice_role == "controlled"
    await call.wait_heard(2.0, timeout=15)
    assert await business.calls(action="terminate", call_id=call_id) == (200, SUCCESS)
    assert call.state is CallState.COMPLETED

    report = call.audio_report()
    assert report.matched, report
    statuses = [
        json.loads(d.body)["entry"][0]["changes"][0]["value"]["statuses"][0]["status"]
        for d in sim.journal.deliveries_of(call_id=call_id)
        if d.kinds[0].startswith("status:")
    ]
    assert statuses == ["RINGING", "ACCEPTED"]
    terminate = await sim.journal.wait_for_delivery("terminate", call_id=call_id)
    assert _item(terminate.body)["status"] == "COMPLETED"
    assert _item(terminate.body)["biz_opaque_callback_data"] == TAG


async def test_the_answer_webhook_can_arrive_before_the_connect_response(
    sim: Simulator, receiver: EchoBusiness, business: TestBusiness
) -> None:
    sim.set_permission(USER, "temporary")
    sim.set_callee(USER, CalleeBehaviour(ring_seconds=0.1, answer_webhook=AnswerWebhook.BEFORE_RESPONSE))
    call_id, _pc = await business.dial(USER)
    connect_request = sim.journal.graph_requests("connect")[0]
    delivery = sim.journal.deliveries_of("connect", call_id)[0]
    # The receiver had answered the webhook before the Graph API sent its response.
    assert delivery.attempts[0].finished_at is not None
    assert connect_request.responded_at is not None
    assert delivery.attempts[0].finished_at <= connect_request.responded_at
    assert any(call_id.encode() in w.body for w in receiver.webhooks)


async def test_a_callee_can_reject_or_let_it_ring_out(receiver: EchoBusiness) -> None:
    config = _config(answer_window_seconds=0.5)
    async with Simulator(config, ingress_url=receiver.webhook_url) as sim, aiohttp.ClientSession() as session:
        business = TestBusiness(session, sim)
        try:
            for user, action in (
                ("15550000001", CalleeAction.REJECT),
                ("15550000002", CalleeAction.NO_ANSWER),
            ):
                sim.set_permission(user, "temporary")
                sim.set_callee(user, CalleeBehaviour(action=action, ring_seconds=0.05))
            rejected_id, _ = await business.dial("15550000001")
            silent_id, _ = await business.dial("15550000002")
            assert await sim.call(rejected_id).wait_ended() is CallState.REJECTED
            assert await sim.call(silent_id).wait_ended() is CallState.FAILED
            assert sim.call(silent_id).end_reason == "unanswered"
            for call_id, expected in ((rejected_id, ["RINGING", "REJECTED"]), (silent_id, ["RINGING"])):
                terminate = await sim.journal.wait_for_delivery("terminate", call_id=call_id)
                assert _item(terminate.body)["status"] == "FAILED"
                kinds = [d.kinds[0] for d in sim.journal.deliveries_of(call_id=call_id)]
                assert [k.split(":")[1] for k in kinds if k.startswith("status:")] == expected
                assert "connect" not in kinds  # nobody picked up: no answer was sent
        finally:
            await business.close()


async def test_the_phone_hangs_up_on_a_business_that_sends_no_audio(receiver: EchoBusiness) -> None:
    config = _config(start_silence_seconds=0.5, midcall_silence_seconds=0.5)
    async with Simulator(config, ingress_url=receiver.webhook_url) as sim, aiohttp.ClientSession() as session:
        business = TestBusiness(session, sim)
        try:
            mute = await sim.place_call("15550000001")
            await business.answer(mute.call_id, mute.offer_sdp, echo=False)
            assert await mute.wait_ended(timeout=10) is CallState.FAILED
            assert mute.end_reason == "no_media"
            terminate = await sim.journal.wait_for_delivery("terminate", call_id=mute.call_id)
            value = json.loads(terminate.body)["entry"][0]["changes"][0]["value"]
            assert value["calls"][0]["status"] == "FAILED"
            assert value["errors"][0]["code"] == 138023

            gone = await sim.place_call("15550000002")
            pc = await business.answer(gone.call_id, gone.offer_sdp)
            await gone.wait_heard(0.5, timeout=10)
            await pc.close()  # the business vanishes without a terminate
            assert await gone.wait_ended(timeout=10) is CallState.FAILED
            assert gone.end_reason == "media_timeout"
        finally:
            await business.close()
