"""The router stage on the real RabbitMQ: raw webhooks in, per-call events and integrator events out."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry
from yarl import URL

from ingress import contract
from ingress.broker import declare_topology
from tests.support import webhooks
from tests.support.tcpproxy import TcpProxy
from worker.amqp import AmqpLink
from worker.decode import decode_webhook
from worker.events import CallConnect, CallStatus, CallTerminate, Event, call_event_decoder
from worker.metrics import WorkerMetrics
from worker.router import Router, reason_label

pytestmark = pytest.mark.integration

WAIT = 10.0


def new_id() -> str:
    return f"wacid.{uuid.uuid4().hex}"


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool]) -> None:
    """Wait, bounded, for a condition nothing notifies about (broker queue state, a Prometheus counter)."""
    async with asyncio.timeout(WAIT):
        while True:
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.02)


class Routers:
    def __init__(self, stack: AsyncExitStack, url: str) -> None:
        self._stack, self._url = stack, url

    async def start(
        self, *, url: str | None = None, decode: Callable[[bytes], list[Event]] = decode_webhook
    ) -> WorkerMetrics:
        metrics = WorkerMetrics(CollectorRegistry())
        link = await self._stack.enter_async_context(AmqpLink(url or self._url, name="test-router"))
        router = await self._stack.enter_async_context(Router(link, metrics, decode=decode))
        async with asyncio.timeout(WAIT):
            await router.wait_consuming()
        return metrics


@pytest.fixture
async def routers(amqp_url: str) -> AsyncIterator[Routers]:
    async with AsyncExitStack() as stack:
        yield Routers(stack, amqp_url)


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel)
        for name in (contract.WEBHOOKS_QUEUE, contract.UNCLAIMED_QUEUE, contract.DEAD_QUEUE):
            await (await channel.get_queue(name)).purge()
        yield channel


async def tap(channel: AbstractChannel, exchange: str, *keys: str) -> AbstractQueue:
    """A private queue bound to ``exchange`` with ``keys``: what a mailbox or an integrator would receive."""
    queue = await channel.declare_queue(exclusive=True)
    for key in keys:
        await queue.bind(exchange, key)
    return queue


async def take(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    received: list[AbstractIncomingMessage] = []
    async with asyncio.timeout(WAIT), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            received.append(message)
            if len(received) == count:
                break
    return received


def count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_call_events_go_to_the_call_with_the_receive_time(
    routers: Routers, channel: AbstractChannel
) -> None:
    metrics = await routers.start()
    call_id = new_id()
    mailbox = await tap(channel, contract.CALLS_EXCHANGE, call_id)
    await webhooks.publish(channel, webhooks.connect(call_id), received_at=1_700_000_000.25)
    await webhooks.publish(channel, webhooks.status(call_id, "RINGING"))
    await webhooks.publish(channel, webhooks.terminate(call_id))
    messages = await take(mailbox, 3)
    events = [call_event_decoder.decode(m.body) for m in messages]
    assert [type(e) for e in events] == [CallConnect, CallStatus, CallTerminate]
    assert all(e.call_id == call_id for e in events)
    assert messages[0].headers[contract.HEADER_RECEIVED_AT] == "1700000000.250000"
    assert messages[0].routing_key == call_id
    assert messages[0].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await wait_until(lambda: count(metrics, "callhook_router_webhooks_total", outcome="ok") == 3)
    assert count(metrics, "callhook_router_events_total", kind="connect") == 1
    assert count(metrics, "callhook_webhook_lag_seconds_count") == 3
    declared = await channel.declare_queue(contract.WEBHOOKS_QUEUE, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_a_batch_fans_out_per_call(routers: Routers, channel: AbstractChannel) -> None:
    await routers.start()
    ids = [new_id() for _ in range(5)]
    mailbox = await tap(channel, contract.CALLS_EXCHANGE, *ids)
    change = webhooks.calls_change(
        [webhooks.connect_item(i) for i in ids[:3]], [webhooks.status_item(i) for i in ids[3:]]
    )
    await webhooks.publish(channel, webhooks.body(change))
    messages = await take(mailbox, 5)
    assert sorted(m.routing_key or "" for m in messages) == sorted(ids)


async def test_events_of_unowned_calls_land_in_unclaimed(routers: Routers, channel: AbstractChannel) -> None:
    await routers.start()
    call_id = new_id()
    await webhooks.publish(channel, webhooks.connect(call_id))
    unclaimed = await channel.get_queue(contract.UNCLAIMED_QUEUE)
    (message,) = await take(unclaimed, 1)
    event = call_event_decoder.decode(message.body)
    assert isinstance(event, CallConnect)
    assert event.call_id == call_id


async def test_non_call_content_goes_to_the_events_exchange(
    routers: Routers, channel: AbstractChannel
) -> None:
    metrics = await routers.start()
    integrator = await tap(channel, contract.EVENTS_EXCHANGE, "#")
    await webhooks.publish(channel, webhooks.text_message("hi"))
    await webhooks.publish(channel, webhooks.permission_reply("accept"))
    await webhooks.publish(channel, webhooks.account_update())
    messages = await take(integrator, 4)
    keys = sorted(m.routing_key or "" for m in messages)
    assert keys == ["account_update", "call.permission_reply", "messages", "messages"]
    reply = next(m for m in messages if m.routing_key == "call.permission_reply")
    assert b'"response":"accept"' in reply.body
    assert count(metrics, "callhook_router_events_total", kind="passthrough") == 3


async def test_events_with_no_integrator_bound_are_still_acked(
    routers: Routers, channel: AbstractChannel
) -> None:
    metrics = await routers.start()
    await webhooks.publish(channel, webhooks.account_update())
    await wait_until(lambda: count(metrics, "callhook_router_webhooks_total", outcome="ok") == 1)


async def test_poison_is_dead_lettered_with_its_reason_and_the_rest_flows(
    routers: Routers, channel: AbstractChannel
) -> None:
    metrics = await routers.start()
    call_id = new_id()
    mailbox = await tap(channel, contract.CALLS_EXCHANGE, call_id)
    await webhooks.publish(channel, b"{not json")
    await webhooks.publish(channel, webhooks.connect(call_id))
    (dead,) = await take(await channel.get_queue(contract.DEAD_QUEUE), 1)
    assert dead.body == b"{not json"
    assert dead.headers[contract.HEADER_DEAD_SOURCE] == "router"
    assert str(dead.headers[contract.HEADER_DEAD_REASON]).startswith("not JSON")
    assert dead.message_id == contract.message_id(b"{not json")
    await take(mailbox, 1)
    assert count(metrics, "callhook_router_webhooks_total", outcome="poison") == 1
    assert count(metrics, "callhook_dead_letters_total", source="router", reason="not_json") == 1


async def test_a_decoder_failure_is_dead_lettered_not_fatal(
    routers: Routers, channel: AbstractChannel
) -> None:
    def broken(body: bytes) -> list[Event]:
        if body.startswith(b"boom"):
            raise ValueError("bug")
        return decode_webhook(body)

    await routers.start(decode=broken)
    call_id = new_id()
    mailbox = await tap(channel, contract.CALLS_EXCHANGE, call_id)
    await webhooks.publish(channel, b"boom")
    await webhooks.publish(channel, webhooks.connect(call_id))
    (dead,) = await take(await channel.get_queue(contract.DEAD_QUEUE), 1)
    assert dead.headers[contract.HEADER_DEAD_REASON] == "decoder error: ValueError"
    await take(mailbox, 1)


async def test_refused_publish_requeues_until_the_delivery_limit(
    routers: Routers, channel: AbstractChannel, amqp_url: str
) -> None:
    """The broker nacks a publish (a full queue refuses it): the webhook is never acked but requeued, and the
    queue's delivery limit dead-letters it in the end."""
    vhost = URL(amqp_url).path.lstrip("/")
    full = {"max-length": 0}  # a quorum queue still takes one message, then refuses (reject-publish)
    await rabbitmqctl("-p", vhost, "set_policy", "full", f"^{contract.UNCLAIMED_QUEUE}$", json.dumps(full))
    try:

        async def refused() -> bool:
            try:
                await channel.default_exchange.publish(
                    aio_pika.Message(b"x"), contract.UNCLAIMED_QUEUE, timeout=5
                )
            except aio_pika.exceptions.DeliveryError:
                return True
            return False

        await wait_until(refused)
        metrics = await routers.start()
        data = webhooks.connect(new_id())
        await webhooks.publish(channel, data)
        (dead,) = await take(await channel.get_queue(contract.DEAD_QUEUE), 1)
        assert dead.body == data
        assert dead.headers["x-first-death-reason"] == "delivery_limit"
        requeued = count(metrics, "callhook_router_webhooks_total", outcome="requeued")
        assert requeued >= contract.WEBHOOK_DELIVERY_LIMIT
        assert count(metrics, "callhook_router_webhooks_total", outcome="ok") == 0
    finally:
        await rabbitmqctl("-p", vhost, "clear_policy", "full")


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec("rabbitmqctl", "-q", *args)
    async with asyncio.timeout(WAIT):
        assert await process.wait() == 0


async def test_router_resumes_after_a_lost_connection(
    routers: Routers, channel: AbstractChannel, amqp_url: str
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        metrics = await routers.start(url=str(URL(amqp_url).with_port(proxy.port)))
        first, second = new_id(), new_id()
        mailbox = await tap(channel, contract.CALLS_EXCHANGE, first, second)
        await webhooks.publish(channel, webhooks.connect(first))
        await take(mailbox, 1)
        await proxy.cut()
        await webhooks.publish(channel, webhooks.connect(second))  # waits in callhook.webhooks meanwhile
        proxy.restore()
        # At-least-once: the first webhook's ack may have died with the connection, so it can be routed once
        # more before the second (owners drop such copies). Nothing is lost, nothing else shows up.
        keys: list[str] = []
        while second not in keys:
            keys += [m.routing_key or "" for m in await take(mailbox, 1)]
        assert set(keys) <= {first, second}
        assert keys.count(first) <= 1
        assert count(metrics, "callhook_router_webhooks_total", outcome="ok") == 1 + len(keys)


def test_reason_labels_are_short_and_stable() -> None:
    assert reason_label("not JSON: unexpected character at byte 3") == "not_json"
    assert (
        reason_label("invalid envelope: Expected `array`, got `object` - at `$.entry`") == "invalid_envelope"
    )
    assert reason_label("entry[0].changes[1].value: not JSON: x") == "entry_changes_value"
    assert reason_label("decoder error: ValueError") == "decoder_error"
    assert reason_label(":::") == "other"
    assert len(reason_label("x" * 500)) <= 32
