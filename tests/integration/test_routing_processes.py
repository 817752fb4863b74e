"""Routing and ownership across real worker processes on the real RabbitMQ.

Each worker is ``python -m tests.support.routing_worker``: the production router and ownership with a handler
that records what it claimed and received (stdout JSON lines). Webhooks are published raw to
``callhook.webhooks`` as the ingress does. Waits follow the workers' output lines; only conditions that
nothing announces (queue depths, counters) are re-checked on a short interval, always bounded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel

from ingress import contract
from ingress.broker import declare_topology
from tests.support import rabbit, webhooks
from tests.support.routing_worker import WorkerProcess, until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WAIT = 20.0
MAX_ATTEMPTS = 4  # retry rounds before an unowned status becomes an orphan (kept short for the test)


def new_id() -> str:
    return f"wacid.{uuid.uuid4().hex}"


async def poll(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Bounded wait for a condition nothing announces (a queue depth, a counter in another process)."""
    async with asyncio.timeout(WAIT):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)


async def total(workers: tuple[WorkerProcess, ...], sample: str) -> float:
    snapshots = await asyncio.gather(*(w.metrics() for w in workers))
    return sum(s.get(sample, 0.0) for s in snapshots)


async def publish_all(channel: AbstractChannel, bodies: list[bytes]) -> None:
    """Publish concurrently, each confirmed, like many ingress requests at once."""
    await asyncio.gather(*(webhooks.publish(channel, body) for body in bodies))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel)
        yield channel


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(amqp_url: str, channel: AbstractChannel) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    workers = await asyncio.gather(
        *(WorkerProcess.start(amqp_url, name=name, max_attempts=MAX_ATTEMPTS) for name in ("a", "b"))
    )
    try:
        yield workers[0], workers[1]
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


@pytest_asyncio.fixture(loop_scope="module")
async def private_url() -> AsyncIterator[str]:
    """A vhost of its own, for tests that must control which workers exist."""
    vhost = await asyncio.to_thread(rabbit.create_vhost)
    try:
        yield rabbit.amqp_url(vhost)
    finally:
        await asyncio.to_thread(rabbit.delete_vhost, vhost)


async def test_200_calls_are_each_claimed_once_and_get_their_events(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    a, b = pair
    ids = [new_id() for _ in range(200)]
    await publish_all(channel, [webhooks.connect(i) for i in ids])
    await until(lambda: len((a.claimed() | b.claimed()) & set(ids)) == 200, a, b)

    claims = [r["claimed"] for w in pair for r in w.records if r.get("claimed") in set(ids)]
    assert len(claims) == 200  # exactly once each: no call claimed twice, in one worker or across both
    assert not a.claimed() & b.claimed()
    assert a.claimed() & set(ids)
    assert b.claimed() & set(ids)  # both workers took a share

    # Later events reach the owner only. Statuses first, then terminates: two webhooks of one call are not
    # ordered relative to each other (the router handles many webhooks at once, as Meta sends them).
    await publish_all(channel, [webhooks.status(i, "ACCEPTED") for i in ids])
    await until(lambda: all(len(owner(i, a, b).events(i)) == 1 for i in ids), a, b)
    await publish_all(channel, [webhooks.terminate(i) for i in ids])
    await until(lambda: all(len(owner(i, a, b).events(i)) == 2 for i in ids), a, b)
    for call_id in ids:
        mine, other = (a, b) if call_id in a.claimed() else (b, a)
        assert [e["event"] for e in mine.events(call_id)] == ["status", "terminate"]
        assert other.events(call_id) == []
    await until(lambda: sum(1 for w in pair for r in w.records if r.get("released") in set(ids)) == 200, a, b)


def owner(call_id: str, a: WorkerProcess, b: WorkerProcess) -> WorkerProcess:
    return a if call_id in a.claimed() else b


async def test_a_connect_delivered_three_times_is_claimed_once(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    duplicates = "callhook_call_events_dropped_total{reason=duplicate}"
    before = await total(pair, duplicates)
    call_id = new_id()
    body = webhooks.connect(call_id)
    await publish_all(channel, [body, body, body])

    async def both_dropped() -> bool:
        return await total(pair, duplicates) == before + 2

    await poll(both_dropped)
    assert sum(1 for w in pair for r in w.records if r.get("claimed") == call_id) == 1
    assert [e for w in pair for e in w.events(call_id)] == []  # no copy reached the owner's handler either


async def test_a_terminate_before_its_connect_stops_the_answer(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    tombstones = "callhook_call_claims_total{outcome=tombstone}"
    swallowed = "callhook_call_events_dropped_total{reason=tombstoned}"
    before_tombstones, before_swallowed = await total(pair, tombstones), await total(pair, swallowed)
    call_id = new_id()
    await webhooks.publish(channel, webhooks.terminate(call_id))

    async def tombstoned() -> bool:
        return await total(pair, tombstones) == before_tombstones + 1

    await poll(tombstoned)
    await webhooks.publish(channel, webhooks.connect(call_id))  # Meta's late delivery of the connect

    async def swallowed_once() -> bool:
        return await total(pair, swallowed) == before_swallowed + 1

    await poll(swallowed_once)
    assert all(call_id not in w.claimed() for w in pair)


async def test_non_call_webhooks_come_out_on_the_events_exchange(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    integrator = await channel.declare_queue(exclusive=True)
    await integrator.bind(contract.EVENTS_EXCHANGE, "#")
    await publish_all(channel, [webhooks.text_message("hello"), webhooks.permission_reply("reject")])
    keys: list[str] = []
    async with asyncio.timeout(WAIT), integrator.iterator() as messages:
        async for message in messages:
            await message.ack()
            keys.append(message.routing_key or "")
            if len(keys) == 3:
                break
    assert sorted(keys) == ["call.permission_reply", "messages", "messages"]


async def test_a_poison_webhook_is_dead_lettered_while_the_rest_flows(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    dead = await channel.get_queue(contract.DEAD_QUEUE)
    await dead.purge()
    call_id = new_id()
    await webhooks.publish(channel, b'{"object": "page", "entry": []}')
    await webhooks.publish(channel, webhooks.connect(call_id))
    a, b = pair
    await until(lambda: call_id in a.claimed() | b.claimed(), a, b)
    async with asyncio.timeout(WAIT), dead.iterator() as messages:
        async for message in messages:
            await message.ack()
            break
    assert message.body == b'{"object": "page", "entry": []}'
    assert message.headers[contract.HEADER_DEAD_SOURCE] == "router"
    assert "whatsapp_business_account" in str(message.headers[contract.HEADER_DEAD_REASON])


async def test_an_event_before_its_claim_arrives_through_the_retry_loop(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    """An outgoing call's status can beat the connect response that tells the dialer the call id."""
    a, b = pair
    routed = "callhook_router_events_total{kind=status}"
    before = await total(pair, routed)
    call_id = new_id()
    await webhooks.publish(channel, webhooks.status(call_id, "RINGING"))

    async def published() -> bool:  # the status went out to callhook.calls while nobody owned the call
        return await total(pair, routed) == before + 1

    await poll(published)
    assert await a.claim(call_id)  # the dialer learns the id and claims it
    (record,) = await a.wait_for(lambda r: r.get("call_id") == call_id and r.get("event") == "status")
    assert record["attempt"] >= 1  # it came back from callhook.calls.retry
    assert b.events(call_id) == []


async def test_an_unowned_event_becomes_an_orphan_after_its_retries(
    pair: tuple[WorkerProcess, WorkerProcess], channel: AbstractChannel
) -> None:
    a, b = pair
    call_id = new_id()
    await webhooks.publish(
        channel, webhooks.connect(call_id, outgoing=True)
    )  # an answer nobody is waiting for
    await until(
        lambda: any(r.get("orphan") and r["call_id"] == call_id for w in pair for r in w.records), a, b
    )
    orphan = next(r for w in pair for r in w.records if r.get("orphan") and r["call_id"] == call_id)
    assert orphan["orphan"] == "connect_outgoing"
    assert await total(pair, "callhook_orphan_events_total{kind=connect_outgoing}") >= 1


async def test_a_full_worker_takes_no_unclaimed_work_until_a_call_ends(private_url: str) -> None:
    worker = await WorkerProcess.start(private_url, name="small", capacity=1)
    try:
        connection = await aio_pika.connect(private_url)
        async with connection:
            channel = await connection.channel()
            first, second = new_id(), new_id()
            await webhooks.publish(channel, webhooks.connect(first))
            await worker.wait_for(lambda r: r.get("claimed") == first)
            await webhooks.publish(channel, webhooks.connect(second))

            async def parked() -> bool:
                declared = await channel.declare_queue(contract.UNCLAIMED_QUEUE, passive=True)
                result = declared.declaration_result
                return result.message_count == 1 and result.consumer_count == 0

            await poll(parked)  # the connect waits in the queue, and nobody consumes it
            assert second not in worker.claimed()
            await webhooks.publish(channel, webhooks.terminate(first))
            await worker.wait_for(lambda r: r.get("released") == first)
            await worker.wait_for(lambda r: r.get("claimed") == second)
    finally:
        await worker.stop()


async def test_a_killed_owners_answered_calls_are_never_answered_again(private_url: str) -> None:
    """SIGKILL after the fence: the mailboxes outlive the victim, and the worker that takes one over finds
    the answer marker and gives the call up (ends it) instead of answering it a second time."""
    victim = await WorkerProcess.start(private_url, name="victim")
    heir = await WorkerProcess.start(private_url, name="heir", capacity=0)  # routes, takes no unclaimed work
    abandoned = "callhook_call_claims_total{outcome=abandoned}"
    try:
        connection = await aio_pika.connect(private_url)
        async with connection:
            channel = await connection.channel()
            ids = [new_id() for _ in range(5)]
            await publish_all(channel, [webhooks.connect(i) for i in ids])
            # Killed once every call is fenced (its pre_accept may be out): "claimed" comes before the
            # fence, and a call killed between the two is rightly answered by the heir (nothing reached Meta).
            await until(lambda: set(ids) <= victim.fenced(), victim)
            assert not await heir.claim(ids[0])  # held by the victim
            assert await total((heir,), abandoned) == 0  # refused: the victim's consumer is there
            await victim.kill()
            await webhooks.publish(channel, webhooks.status(ids[1], "ACCEPTED"))  # waits in the mailbox
            for call_id in ids:

                async def taken_over(call_id: str = call_id) -> bool:  # once the broker saw the death
                    before = await total((heir,), abandoned)
                    assert not await heir.claim(call_id)  # never a claim to answer with
                    return await total((heir,), abandoned) == before + 1

                await poll(taken_over)
            assert heir.events(ids[1]) == []  # a claim given up reads nothing
            assert not heir.claimed()
    finally:
        await victim.stop()
        await heir.stop()
