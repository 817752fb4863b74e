"""The simulated Graph API refuses what Meta refuses, over real HTTP, with Meta's envelope and statuses.

A call is placed by the simulator's phone (a real aiortc offer); the "business" here is a plain aiortc peer
in the test that makes the answer SDP and edits it the way a business must (SHA-256 only, setup:active).
Webhooks go to the reference echo business, which checks their signatures and records them.
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

from callhook.ice import restrict_host_addresses
from simulator import sdp as sdp_edit
from simulator.business import EchoBusiness
from simulator.calls import CallState
from simulator.config import CallTiming, DeliveryConfig, SimulatorConfig
from simulator.faults import parse_fault
from simulator.sim import SimulatedCall, Simulator

TOKEN = "graph-token"
SECRET = "app-secret"
USER = "15551230001"


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


def _config(**overrides: Any) -> SimulatorConfig:
    base = SimulatorConfig(
        app_secret=SECRET,
        access_token=TOKEN,
        graph_port=0,
        timing=CallTiming(answer_window_seconds=20.0, accept_media_timeout_seconds=5.0),
        delivery=DeliveryConfig(retry_initial_seconds=0.05, max_attempts=3),
    )
    return dataclasses.replace(base, **overrides)


class Graph:
    """A bare Graph API client: posts JSON, returns (status, body) without judging either."""

    def __init__(self, session: aiohttp.ClientSession, sim: Simulator) -> None:
        self._session = session
        self._sim = sim
        self.number = sim.config.numbers[0].phone_number_id

    async def post(
        self, edge: str, body: dict[str, Any], *, token: str = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        url = f"{self._sim.graph_url}/v23.0/{self.number}/{edge}"
        headers = {"Authorization": f"Bearer {token}"}
        async with self._session.post(url, json=body, headers=headers) as response:
            return response.status, await response.json()

    async def calls(self, action: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        return await self.post("calls", {"messaging_product": "whatsapp", "action": action, **fields})

    async def get_permissions(self, user: str) -> tuple[int, dict[str, Any]]:
        url = f"{self._sim.graph_url}/v23.0/{self.number}/call_permissions"
        params = {"user_wa_id": user}
        async with self._session.get(url, params=params, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            return r.status, await r.json()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(_config(), ingress_url="http://127.0.0.1:9/unused") as simulator:
        yield simulator


@pytest.fixture
async def receiver(sim: Simulator) -> AsyncIterator[EchoBusiness]:
    """Records (and signature-checks) the simulator's webhooks; answers nothing by itself."""
    number = sim.config.numbers[0].phone_number_id
    async with EchoBusiness(
        graph_url=sim.graph_url,
        access_token=TOKEN,
        app_secret=SECRET,
        phone_number_id=number,
        answer_calls=False,
    ) as business:
        sim.webhooks.url = business.webhook_url
        yield business


@pytest.fixture
async def graph(sim: Simulator) -> AsyncIterator[Graph]:
    async with aiohttp.ClientSession() as session:
        yield Graph(session, sim)


@pytest.fixture
async def peers() -> AsyncIterator[list[RTCPeerConnection]]:
    created: list[RTCPeerConnection] = []
    yield created
    for pc in created:
        await pc.close()


async def answer_for(call: SimulatedCall, peers: list[RTCPeerConnection]) -> str:
    """The answer a business would send: aiortc's, with only the SHA-256 fingerprint and setup:active."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.append(pc)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=call.offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return sdp_edit.business_answer(pc.localDescription.sdp)


def _error(body: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) <= {
        "message",
        "type",
        "code",
        "error_subcode",
        "error_data",
        "fbtrace_id",
        "is_transient",
    }
    assert isinstance(error["message"], str)
    assert error["type"] in ("OAuthException", "GraphMethodException")
    assert isinstance(error["fbtrace_id"], str)
    return error


async def test_a_bad_or_missing_token_is_190_as_401(sim: Simulator, graph: Graph) -> None:
    call = await sim.place_call(USER)
    for token in ("wrong", ""):
        status, body = await graph.post(
            "calls",
            {"messaging_product": "whatsapp", "action": "reject", "call_id": call.call_id},
            token=token,
        )
        assert status == 401
        assert _error(body)["code"] == 190
    assert call.state is CallState.RINGING


async def test_malformed_requests_are_100(sim: Simulator, graph: Graph) -> None:
    call = await sim.place_call(USER)
    status, body = await graph.post("calls", {"action": "reject", "call_id": call.call_id})
    assert (status, _error(body)["code"]) == (400, 100)
    assert "messaging_product" in body["error"]["error_data"]["details"]
    status, body = await graph.calls("hold", call_id=call.call_id)
    assert (status, _error(body)["code"]) == (400, 100)
    status, body = await graph.calls("reject")
    assert "call_id is required" in _error(body)["error_data"]["details"]
    status, body = await graph.calls("reject", call_id="wacid.nope")
    assert (status, _error(body)["code"]) == (400, 100)
    assert "Invalid call_id" in body["error"]["error_data"]["details"]
    graph.number = "999999"
    status, body = await graph.calls("reject", call_id=call.call_id)
    error = _error(body)
    assert (status, error["code"], error["error_subcode"]) == (400, 100, 33)


async def test_accept_needs_pre_accept_and_the_same_sdp(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection]
) -> None:
    call = await sim.place_call(USER)
    answer = await answer_for(call, peers)
    session = {"sdp_type": "answer", "sdp": answer}
    status, body = await graph.calls("accept", call_id=call.call_id, session=session)
    assert (status, _error(body)["code"]) == (400, 100)
    assert "pre-accepted before accept" in body["error"]["error_data"]["details"]

    assert await graph.calls("pre_accept", call_id=call.call_id, session=session) == (
        200,
        {"messaging_product": "whatsapp", "success": True},
    )
    assert call.state is CallState.PRE_ACCEPTED
    other = {"sdp_type": "answer", "sdp": answer.replace("a=mid:0", "a=mid:0\r\na=ptime:20")}
    status, body = await graph.calls("accept", call_id=call.call_id, session=other)
    assert "same SDP" in _error(body)["error_data"]["details"]

    status, _ = await graph.calls("accept", call_id=call.call_id, session=session)
    assert status == 200
    assert call.state is CallState.ACCEPTED
    assert call.phone.connected


@pytest.mark.parametrize(
    ("edit", "details"),
    [
        (lambda s: s.replace("\r\n", "\n"), "CRLF"),
        (lambda s: s.replace("a=setup:active", "a=setup:passive"), "a=setup:active"),
        (
            lambda s: s.replace("a=fingerprint:sha-256", "a=fingerprint:sha-384"),
            "Fingerprint algo is not SHA256",
        ),
        (lambda s: s + "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\n", "exactly one media section"),
        (lambda s: s.replace("m=audio", "m=video"), "must be audio"),
        (lambda s: s.replace("opus/48000/2", "PCMU/8000"), "Opus"),
    ],
    ids=["lf", "setup", "fingerprint", "two-m-lines", "video", "no-opus"],
)
async def test_each_sdp_rule_refuses_pre_accept(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection], edit: Any, details: str
) -> None:
    call = await sim.place_call(USER)
    answer = await answer_for(call, peers)
    status, body = await graph.calls(
        "pre_accept", call_id=call.call_id, session={"sdp_type": "answer", "sdp": edit(answer)}
    )
    assert status == 400
    assert _error(body)["code"] == 100
    assert details in body["error"]["error_data"]["details"]
    assert call.state is CallState.RINGING
    status, body = await graph.calls(
        "pre_accept", call_id=call.call_id, session={"sdp_type": "offer", "sdp": answer}
    )
    assert "sdp_type must be 'answer'" in _error(body)["error_data"]["details"]


async def test_reject_after_accept_and_terminate_of_an_ended_call_are_refused(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection], receiver: EchoBusiness
) -> None:
    call = await sim.place_call(USER)
    session = {"sdp_type": "answer", "sdp": await answer_for(call, peers)}
    assert (await graph.calls("pre_accept", call_id=call.call_id, session=session))[0] == 200
    assert (await graph.calls("accept", call_id=call.call_id, session=session))[0] == 200
    status, body = await graph.calls("reject", call_id=call.call_id)
    assert (status, _error(body)["code"]) == (400, 100)
    assert call.state is CallState.ACCEPTED

    assert (await graph.calls("terminate", call_id=call.call_id))[0] == 200
    assert call.state is CallState.COMPLETED
    assert call.end_reason == "business_hangup"
    status, body = await graph.calls("terminate", call_id=call.call_id)
    assert "already ended" in _error(body)["error_data"]["details"]

    delivery = await sim.journal.wait_for_delivery("terminate", call_id=call.call_id)
    assert b'"status":"COMPLETED"' in delivery.body
    assert b'"duration":' in delivery.body
    assert all(webhook.signature_ok for webhook in receiver.webhooks)


async def test_reject_before_accept_ends_the_call(
    sim: Simulator, graph: Graph, receiver: EchoBusiness
) -> None:
    call = await sim.place_call(USER)
    assert await graph.calls("reject", call_id=call.call_id) == (
        200,
        {"messaging_product": "whatsapp", "success": True},
    )
    assert await call.wait_ended() is CallState.REJECTED
    delivery = await sim.journal.wait_for_delivery("terminate", call_id=call.call_id)
    assert b'"status":"FAILED"' in delivery.body
    assert b'"duration"' not in delivery.body


async def test_the_answer_window_ends_an_unanswered_call(
    graph: Graph, peers: list[RTCPeerConnection], receiver: EchoBusiness
) -> None:
    sim = await _fresh(receiver, timing=CallTiming(answer_window_seconds=0.3))
    async with sim, aiohttp.ClientSession() as session:
        call = await sim.place_call(USER)
        assert await call.wait_ended(timeout=5) is CallState.FAILED
        assert call.end_reason == "unanswered"
        delivery = await sim.journal.wait_for_delivery("terminate", call_id=call.call_id)
        assert b'"status":"FAILED"' in delivery.body
        late = Graph(session, sim)
        _status, body = await late.calls(
            "pre_accept",
            call_id=call.call_id,
            session={"sdp_type": "answer", "sdp": await answer_for(call, peers)},
        )
        assert "already ended" in _error(body)["error_data"]["details"]


async def test_connect_needs_permission_and_respects_the_limits(graph: Graph, receiver: EchoBusiness) -> None:
    sim = await _fresh(receiver, max_concurrent_calls=2)
    async with sim, aiohttp.ClientSession() as session:
        client = Graph(session, sim)
        offer = await _business_offer()
        session_body = {"sdp_type": "offer", "sdp": offer}

        status, body = await client.calls("connect", to="15550000001", session=session_body)
        error = _error(body)
        assert (status, error["code"]) == (401, 138006)  # 401, yet not a token problem

        for user in ("15550000001", "15550000002", "15550000003"):
            sim.set_permission(user, "temporary")
        status, body = await client.calls("connect", to="15550000001", session=session_body)
        assert status == 200
        assert body["messaging_product"] == "whatsapp"
        assert body["calls"][0]["id"].startswith("wacid.")
        status, body = await client.calls("connect", to="15550000001", session=session_body)
        assert (status, _error(body)["code"]) == (400, 138003)
        assert (await client.calls("connect", to="15550000002", session=session_body))[0] == 200
        status, body = await client.calls("connect", to="15550000003", session=session_body)
        assert (status, _error(body)["code"]) == (400, 138002)

        status, body = await client.calls(
            "connect", to="15550000003", session={"sdp_type": "answer", "sdp": offer}
        )
        assert "sdp_type must be 'offer'" in _error(body)["error_data"]["details"]
        actions = [(r.action, r.http_status, r.error_code) for r in sim.journal.graph_requests("connect")]
        assert actions == [
            ("connect", 401, 138006),
            ("connect", 200, None),
            ("connect", 400, 138003),
            ("connect", 200, None),
            ("connect", 400, 138002),
            ("connect", 400, 100),
        ]


async def test_permission_requests_are_counted_and_answered(graph: Graph, receiver: EchoBusiness) -> None:
    sim = await _fresh(receiver)
    async with sim, aiohttp.ClientSession() as session:
        client = Graph(session, sim)
        request = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "interactive",
            "interactive": {
                "type": "call_permission_request",
                "action": {"name": "call_permission_request"},
                "body": {"text": "May we call you?"},
            },
        }
        status, body = await client.post("messages", request)
        assert status == 200
        assert body["contacts"] == [{"input": USER, "wa_id": USER}]
        request_id = body["messages"][0]["id"]
        status, body = await client.post("messages", request)
        assert (status, _error(body)["code"]) == (400, 138009)

        delivery = await sim.journal.wait_for_delivery("message")
        assert b'"call_permission_reply"' in delivery.body
        reply = json.loads(delivery.body)["entry"][0]["changes"][0]["value"]["messages"][0]
        assert reply["context"]["id"] == request_id
        status, body = await client.get_permissions(USER)
        assert status == 200
        assert body["permission"]["status"] == "temporary"
        assert body["actions"][0]["can_perform_action"] is False
        status, body = await client.calls(
            "connect", to=USER, session={"sdp_type": "offer", "sdp": await _business_offer()}
        )
        assert status == 200


async def test_graph_faults_fire_as_configured_and_are_journalled(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection]
) -> None:
    call = await sim.place_call(USER)
    session = {"sdp_type": "answer", "sdp": await answer_for(call, peers)}
    sim.graph_faults.add(parse_fault("pre_accept:503:next=2"))
    sim.graph_faults.add(parse_fault("accept:429=4:next=1"))
    sim.graph_faults.add(parse_fault("terminate:error=138004:next=1"))

    for _ in range(2):
        status, body = await graph.calls("pre_accept", call_id=call.call_id, session=session)
        assert (status, _error(body)["code"], body["error"]["is_transient"]) == (503, 2, True)
    assert call.state is CallState.RINGING
    assert (await graph.calls("pre_accept", call_id=call.call_id, session=session))[0] == 200
    status, body = await graph.calls("accept", call_id=call.call_id, session=session)
    assert (status, _error(body)["code"]) == (429, 4)
    assert (await graph.calls("accept", call_id=call.call_id, session=session))[0] == 200
    status, body = await graph.calls("terminate", call_id=call.call_id)
    assert (status, _error(body)["code"]) == (500, 138004)
    assert call.state is CallState.ACCEPTED

    records = sim.journal.graph_requests(call_id=call.call_id)
    assert [(r.action, r.http_status, r.fault) for r in records] == [
        ("pre_accept", 503, "pre_accept:503"),
        ("pre_accept", 503, "pre_accept:503"),
        ("pre_accept", 200, None),
        ("accept", 429, "accept:429/4"),
        ("accept", 200, None),
        ("terminate", 500, "terminate:error 138004"),
    ]
    assert all(r.received_at <= (r.responded_at or 0) for r in records)
    assert sim.statistics().faults_fired == {
        "pre_accept:503": 2,
        "accept:429/4": 1,
        "terminate:error 138004": 1,
    }


async def test_a_throttle_fault_can_carry_a_retry_after_hint(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection]
) -> None:
    call = await sim.place_call(USER)
    session = {"sdp_type": "answer", "sdp": await answer_for(call, peers)}
    sim.graph_faults.add(parse_fault("pre_accept:429:retry_after=3:next=1"))
    url = f"{sim.graph_url}/v23.0/{graph.number}/calls"
    body = {
        "messaging_product": "whatsapp",
        "action": "pre_accept",
        "call_id": call.call_id,
        "session": session,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert (response.status, response.headers.get("Retry-After")) == (429, "3")
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert (response.status, response.headers.get("Retry-After")) == (200, None)
    assert sim.graph_faults.fired == {"pre_accept:429/130429 retry-after 3s": 1}


async def test_timeout_and_delay_faults_hold_the_request(
    sim: Simulator, graph: Graph, peers: list[RTCPeerConnection]
) -> None:
    call = await sim.place_call(USER)
    session = {"sdp_type": "answer", "sdp": await answer_for(call, peers)}
    sim.graph_faults.add(parse_fault("pre_accept:timeout=30:apply:next=1"))
    request = asyncio.create_task(graph.calls("pre_accept", call_id=call.call_id, session=session))
    # The action was applied although the response is held: the business cannot know (outcome unknown).
    await call.wait_state(CallState.PRE_ACCEPTED, timeout=5)
    assert not request.done()
    request.cancel()
    sim.graph_faults.add(parse_fault("accept:delay=0.2:next=1"))
    status, _ = await graph.calls("accept", call_id=call.call_id, session=session)
    assert status == 200
    record = sim.journal.graph_requests("accept")[0]
    assert record.fault == "accept:delay 0.2s"
    assert record.responded_at is not None
    assert record.responded_at - record.received_at >= 0.2


async def _business_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        return sdp_edit.business_offer(pc.localDescription.sdp)
    finally:
        await pc.close()


async def _fresh(receiver: EchoBusiness, **overrides: Any) -> Simulator:
    """A second simulator with other settings, delivering to the same receiver."""
    return Simulator(_config(**overrides), ingress_url=receiver.webhook_url)
