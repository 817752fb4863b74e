"""The integrator API (``/v1/calls``) against the real RabbitMQ: what gets queued, what is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from ingress import contract
from tests.integration.test_ingress import make_config, running_ingress, via_proxy
from tests.support.tcpproxy import TcpProxy
from worker.events import HangupRequest, call_event_decoder, dial_decoder

pytestmark = pytest.mark.integration

API_TOKEN = "integrator-token-1"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PNID = "100000000000002"


async def get_one(queue: AbstractQueue) -> bytes:
    async with asyncio.timeout(10), queue.iterator(no_ack=True) as messages:
        async for message in messages:
            return message.body
    raise AssertionError("the queue closed")


async def depth(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    result = queue.declaration_result
    return int(result.message_count or 0)


async def test_dial_is_queued_for_the_workers(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    config = make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID)
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        body = {
            "to": "+15551234567",
            "app": "echo",
            "biz_opaque_callback_data": "order-7",
            "permission": "check",
        }
        async with http.post(f"{ingress.base_url}/v1/calls", json=body, headers=AUTH) as response:
            assert response.status == 202
            answer = await response.json()
    dial = dial_decoder.decode(await get_one(await channel.get_queue(contract.DIALS_QUEUE)))
    assert dial.request_id == answer["request_id"]
    assert (dial.to, dial.phone_number_id, dial.app, dial.permission) == (
        "15551234567",
        PNID,
        "echo",
        "check",
    )
    assert dial.biz_opaque_callback_data == "order-7"


async def test_hangup_reaches_the_call_key(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    owner = await channel.declare_queue(exclusive=True)  # stands in for the owning worker's mailbox
    call_id = "wacid.HBgLMTIzNDU2Nzg5MDEVAgARGCA+/w=="
    await owner.bind(contract.CALLS_EXCHANGE, routing_key=call_id)
    config = make_config(amqp_url, api_tokens=("other", API_TOKEN))
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        url = f"{ingress.base_url}/v1/calls/{call_id.replace('/', '%2F').replace('+', '%2B')}/hangup"
        async with http.post(url, headers=AUTH) as response:
            assert response.status == 202
            answer = await response.json()
    event = call_event_decoder.decode(await get_one(owner))
    assert isinstance(event, HangupRequest)
    assert (event.call_id, event.request_id) == (call_id, answer["request_id"])


BAD_DIALS: list[tuple[Any, str]] = [
    ({}, "'to' is required"),
    ({"to": "not-a-number"}, "'to' must be a phone number"),
    ({"to": 15551234567}, "'to' must be a string"),
    ({"to": "15551234567", "colour": "blue"}, "unknown field(s): 'colour'"),
    ({"to": "15551234567", "permission": "always"}, "'permission' must be one of"),
    ({"to": "15551234567", "biz_opaque_callback_data": "x" * 513}, "limited to 512"),
    ({"to": "15551234567", "app": " "}, "'app' must name one of the apps"),
    ([1, 2], "must be a JSON object"),
    ("{not json", "not JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_DIALS)
async def test_bad_dials_get_a_clear_400_and_queue_nothing(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, body: Any, message: str
) -> None:
    config = make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID)
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        data = body.encode() if isinstance(body, str) else None
        kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
        async with http.post(f"{ingress.base_url}/v1/calls", headers=AUTH, **kwargs) as response:
            assert response.status == 400
            assert message in (await response.json())["error"]
    assert await depth(channel, contract.DIALS_QUEUE) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
async def test_wrong_or_missing_token_is_401(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    config = make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID)
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        async with http.post(
            f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=headers
        ) as r:
            assert r.status == 401
        async with http.post(f"{ingress.base_url}/v1/calls/wacid.x/hangup", headers=headers) as r:
            assert r.status == 401
    assert await depth(channel, contract.DIALS_QUEUE) == 0


async def test_api_is_off_without_tokens(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    async with running_ingress(make_config(amqp_url, phone_number_id=PNID)) as ingress:
        await ingress.wait_connected()
        async with http.post(f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=AUTH) as r:
            assert r.status == 404
            assert "CALLHOOK_API_TOKENS" in (await r.json())["error"]


async def test_dial_without_broker_is_503_and_then_works(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        config = make_config(via_proxy(amqp_url, proxy), api_tokens=(API_TOKEN,), phone_number_id=PNID)
        async with running_ingress(config) as ingress:
            await ingress.wait_connected()
            await proxy.cut()
            async with asyncio.timeout(10):
                await ingress.publisher.wait_disconnected()
            async with http.post(
                f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=AUTH
            ) as r:
                assert r.status == 503
            proxy.restore()
            await ingress.wait_connected()
            async with http.post(
                f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=AUTH
            ) as r:
                assert r.status == 202
    assert await depth(channel, contract.DIALS_QUEUE) == 1
