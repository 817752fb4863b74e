"""Call ownership on the real RabbitMQ: claims as exclusive queues, mailboxes, the unclaimed, expired and
retry loops.

Each test runs one or two :class:`Ownership` instances in this process, each on its own connection (two
connections behave like two worker processes towards the broker; tests/integration/test_routing_processes.py
does it with real processes). Events are published to ``callhook.calls`` as the router does.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import unquote

import aio_pika
import msgspec
import pytest
from aiormq.exceptions import ChannelPreconditionFailed
from prometheus_client import CollectorRegistry
from yarl import URL

from ingress import contract
from ingress.broker import declare_topology
from tests.support.tcpproxy import TcpProxy
from worker.amqp import AmqpLink
from worker.events import CallConnect, CallEvent, CallStatus, CallTerminate, call_event_encoder
from worker.metrics import WorkerMetrics
from worker.ownership import (
    Claim,
    ClaimLost,
    Ownership,
    OwnershipSettings,
    Verdict,
    judge,
    read_marker,
)

pytestmark = pytest.mark.integration

WAIT = 10.0  # bound of every wait in these tests


class Recorder:
    """A CallHandler that records what Ownership hands it."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[tuple[Claim, CallConnect, float]] = asyncio.Queue()
        self.stale: asyncio.Queue[CallConnect] = asyncio.Queue()
        self.overflow: asyncio.Queue[CallConnect] = asyncio.Queue()
        self.orphans: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.abandoned: asyncio.Queue[CallConnect] = asyncio.Queue()

    async def on_incoming(self, claim: Claim, event: CallConnect, received_at: float) -> None:
        self.incoming.put_nowait((claim, event, received_at))

    async def on_stale(self, event: CallConnect) -> None:
        self.stale.put_nowait(event)

    async def on_overflow(self, event: CallConnect) -> None:
        self.overflow.put_nowait(event)

    async def on_orphan(self, event: CallEvent) -> None:
        self.orphans.put_nowait(event)

    async def on_abandoned(self, event: CallConnect) -> None:
        self.abandoned.put_nowait(event)


class Worker:
    def __init__(self, ownership: Ownership, recorder: Recorder, metrics: WorkerMetrics) -> None:
        self.ownership = ownership
        self.recorder = recorder
        self.metrics = metrics

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


def new_id() -> str:
    return f"wacid.{uuid.uuid4().hex}"


def connect_event(call_id: str, *, age_seconds: float = 0, direction: str = "incoming") -> CallConnect:
    return CallConnect(
        call_id=call_id,
        phone_number_id="106540352242922",
        direction="incoming" if direction == "incoming" else "outgoing",
        caller="13175551234",
        callee="15550783881",
        timestamp=int(time.time() - age_seconds),
        sdp_type="offer" if direction == "incoming" else "answer",
        sdp="v=0\r\n",
    )


def terminate_event(call_id: str) -> CallTerminate:
    return CallTerminate(
        call_id=call_id, phone_number_id="106540352242922", timestamp=int(time.time()), status="completed"
    )


def status_event(call_id: str, status: str = "ringing") -> CallStatus:
    return CallStatus(
        call_id=call_id, phone_number_id="106540352242922", timestamp=int(time.time()), status=status
    )


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool]) -> None:
    """Wait, bounded, for a condition nothing notifies about (broker queue state, a Prometheus counter)."""
    async with asyncio.timeout(WAIT):
        while True:
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A publishing channel, with the topology declared and the shared queues purged (tests share a vhost)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel)
        for name in (
            contract.UNCLAIMED_QUEUE,
            contract.EXPIRED_QUEUE,
            contract.RETRY_QUEUE,
            contract.DEAD_QUEUE,
        ):
            await (await channel.get_queue(name)).purge()
        yield channel


async def send(
    channel: aio_pika.abc.AbstractChannel, event: CallEvent, *, received_at: float | None = None
) -> None:
    """Publish a call event the way the router does."""
    headers: dict[str, Any] = (
        {} if received_at is None else {contract.HEADER_RECEIVED_AT: f"{received_at:.6f}"}
    )
    exchange = await channel.get_exchange(contract.CALLS_EXCHANGE)
    message = aio_pika.Message(
        call_event_encoder.encode(event), headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )
    await exchange.publish(message, event.call_id, mandatory=False)


@pytest.fixture
async def workers(amqp_url: str) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    async with AsyncExitStack() as stack:

        async def start(url: str = amqp_url, **settings: Any) -> Worker:
            settings.setdefault("capacity", 10)
            metrics = WorkerMetrics(CollectorRegistry())
            recorder = Recorder()
            link = await stack.enter_async_context(AmqpLink(url, name="test", connect_timeout_seconds=2))
            ownership = await stack.enter_async_context(
                Ownership(link, recorder, metrics, OwnershipSettings(**settings))
            )
            async with asyncio.timeout(WAIT):
                await ownership.wait_ready()
            return Worker(ownership, recorder, metrics)

        yield start


async def next_item(claim: Claim) -> CallEvent:
    async with asyncio.timeout(WAIT):
        item = await anext(claim)
    await item.ack()
    return item.event


# --- the pure rule --------------------------------------------------------------------------------------


def test_judge_table() -> None:
    s = OwnershipSettings(
        capacity=1, answer_deadline_seconds=30, meta_answer_window_seconds=60, max_attempts=3
    )
    now = time.time()

    def verdict(event: CallEvent, source: str = "unclaimed", attempt: int = 0) -> Verdict:
        return judge(event, source=source, now=now, attempt=attempt, settings=s)  # type: ignore[arg-type]

    assert verdict(connect_event("a")) is Verdict.ANSWER
    assert verdict(connect_event("a", age_seconds=45)) is Verdict.REJECT_STALE
    assert verdict(connect_event("a", age_seconds=90)) is Verdict.DROP_STALE
    assert verdict(connect_event("a"), "expired") is Verdict.OVERFLOW
    assert verdict(connect_event("a", age_seconds=90), "expired") is Verdict.DROP_STALE
    assert verdict(terminate_event("a")) is Verdict.TOMBSTONE
    assert verdict(terminate_event("a"), "expired") is Verdict.TOMBSTONE
    assert verdict(status_event("a"), attempt=2) is Verdict.RETRY
    assert verdict(status_event("a"), attempt=3) is Verdict.ORPHAN
    assert verdict(connect_event("a", direction="outgoing"), attempt=0) is Verdict.RETRY
    assert verdict(connect_event("a", direction="outgoing"), "expired", attempt=3) is Verdict.ORPHAN


# --- claims ---------------------------------------------------------------------------------------------


async def test_a_claim_is_exclusive_until_released(workers: Callable[..., Awaitable[Worker]]) -> None:
    a, b = await workers(), await workers()
    call_id = new_id()
    claim = await a.ownership.claim(call_id)
    assert claim is not None
    assert await b.ownership.claim(call_id) is None
    assert await a.ownership.claim(call_id) is None  # not even twice in one process
    assert a.ownership.room == 9
    await claim.release(tombstone=False)
    await claim.release(tombstone=False)  # idempotent
    assert a.ownership.room == 10
    again = await b.ownership.claim(call_id)
    assert again is not None
    assert b.count("callhook_call_claims_total", outcome="duplicate") == 1


async def test_mailbox_delivers_in_order_with_receive_time(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers()
    call_id = new_id()
    claim = await a.ownership.claim(call_id)
    assert claim is not None
    for status in ("ringing", "accepted"):
        await send(bus, status_event(call_id, status), received_at=1234.5)
    await send(bus, terminate_event(call_id))
    async with asyncio.timeout(WAIT):
        first = await anext(claim)
    assert isinstance(first.event, CallStatus)
    assert first.event.status == "ringing"
    assert first.received_at == 1234.5
    await first.ack()
    await first.ack()  # idempotent
    second, third = await next_item(claim), await next_item(claim)
    assert isinstance(second, CallStatus)
    assert second.status == "accepted"
    assert isinstance(third, CallTerminate)
    await claim.release()


async def test_retried_connect_in_the_mailbox_is_dropped(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers()
    call_id = new_id()
    await send(bus, connect_event(call_id))
    claim, event, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
    assert event.call_id == call_id
    await send(bus, connect_event(call_id))  # Meta's retry: routed to the owner's mailbox now
    await send(bus, terminate_event(call_id))
    assert isinstance(await next_item(claim), CallTerminate)  # the connect never showed up
    assert a.count("callhook_call_events_dropped_total", reason="duplicate") == 1
    await claim.release()


async def test_released_call_becomes_a_tombstone(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a, b = await workers(tombstone_seconds=0.5), await workers()
    call_id = new_id()
    claim = await a.ownership.claim(call_id)
    assert claim is not None
    await claim.release()
    assert a.ownership.room == 10  # a tombstone holds no capacity
    assert a.ownership.statistics().tombstones == 1
    assert await b.ownership.claim(call_id) is None
    await send(bus, connect_event(call_id))  # a late retried connect: swallowed by the tombstone
    await wait_until(lambda: a.count("callhook_call_events_dropped_total", reason="tombstoned") >= 1)
    assert a.recorder.incoming.empty()
    assert b.recorder.incoming.empty()

    async def claimable() -> bool:
        c = await b.ownership.claim(call_id)
        return c is not None

    await wait_until(claimable)  # the tombstone ended after tombstone_seconds
    assert a.ownership.statistics().tombstones == 0


# --- unowned events -------------------------------------------------------------------------------------


async def test_unclaimed_connect_is_claimed_and_handed_over(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers()
    call_id = new_id()
    await send(bus, connect_event(call_id), received_at=99.0)
    claim, event, received_at = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
    assert (claim.call_id, event.call_id, received_at) == (call_id, call_id, 99.0)
    assert a.ownership.room == 9
    await send(bus, status_event(call_id))
    assert isinstance(await next_item(claim), CallStatus)
    await claim.release()
    assert a.count("callhook_call_claims_total", outcome="claimed") == 1


async def test_full_worker_takes_no_unclaimed_work_until_room_frees(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers(capacity=1)
    first, second = new_id(), new_id()
    await send(bus, connect_event(first))
    claim, _, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
    assert a.ownership.room == 0
    await send(bus, connect_event(second))
    unclaimed = await bus.get_queue(contract.UNCLAIMED_QUEUE)

    async def parked() -> bool:
        # Ready, not delivered. (The quorum queue still lists the cancelled consumer while the first connect,
        # held unacked until its call is settled, is outstanding: the consumer count says nothing here.)
        declared = await bus.declare_queue(contract.UNCLAIMED_QUEUE, passive=True)
        return declared.declaration_result.message_count == 1

    await wait_until(parked)  # nobody consumes: the connect waits in the queue
    assert a.recorder.incoming.empty()
    assert not a.ownership.statistics().consuming_unclaimed
    await claim.release()
    claim2, event2, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
    assert event2.call_id == second
    await claim2.release()
    assert unclaimed.name == contract.UNCLAIMED_QUEUE


async def test_terminate_before_connect_leaves_a_tombstone(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a, b = await workers(), await workers()
    call_id = new_id()
    await send(bus, terminate_event(call_id))

    async def tombstoned() -> bool:
        return a.ownership.statistics().tombstones + b.ownership.statistics().tombstones == 1

    await wait_until(tombstoned)
    await send(bus, connect_event(call_id))
    await wait_until(
        lambda: sum(w.count("callhook_call_events_dropped_total", reason="tombstoned") for w in (a, b)) >= 1
    )
    assert a.recorder.incoming.empty()
    assert b.recorder.incoming.empty()


async def test_terminate_for_a_call_being_claimed_reaches_the_owner(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    """A terminate that went to unclaimed while the owner held the id is published again and arrives."""
    a = await workers()
    owner = await workers(capacity=0)  # takes no unclaimed work itself
    call_id = new_id()
    claim = await owner.ownership.claim(call_id)
    assert claim is not None
    # As if routed before the owner's binding existed: straight into the unclaimed queue.
    body = call_event_encoder.encode(terminate_event(call_id))
    await bus.default_exchange.publish(aio_pika.Message(body), contract.UNCLAIMED_QUEUE)
    assert isinstance(await next_item(claim), CallTerminate)
    assert a.count("callhook_call_claims_total", outcome="busy") == 1
    await claim.release()


async def test_event_before_its_claim_arrives_through_the_retry_loop(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers()
    dialer = await workers(capacity=0)
    call_id = new_id()
    await send(bus, status_event(call_id, "ringing"))  # the outgoing call's id is not claimed yet
    await send(bus, connect_event(call_id, direction="outgoing"))

    async def retried() -> bool:
        return a.count("callhook_call_claims_total", outcome="claimed") == 0 and (
            (await bus.declare_queue(contract.RETRY_QUEUE, passive=True)).declaration_result.message_count > 0
        )

    await wait_until(retried)
    claim = await dialer.ownership.claim(call_id)  # the connect response arrived
    assert claim is not None
    events = [await next_item(claim), await next_item(claim)]
    assert {type(e) for e in events} == {CallStatus, CallConnect}
    assert all(msgspec.structs.asdict(e)["call_id"] == call_id for e in events)
    await claim.release()


async def test_unowned_event_becomes_an_orphan_after_its_retries(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers(max_attempts=2)
    call_id = new_id()
    await send(bus, connect_event(call_id, direction="outgoing"))
    orphan = await asyncio.wait_for(a.recorder.orphans.get(), WAIT)
    assert isinstance(orphan, CallConnect)
    assert orphan.call_id == call_id
    assert a.count("callhook_orphan_events_total", kind="connect_outgoing") == 1


async def test_stale_connect_is_rejected_and_an_ancient_one_dropped(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers(answer_deadline_seconds=30, meta_answer_window_seconds=60)
    stale, ancient = new_id(), new_id()
    await send(bus, connect_event(stale, age_seconds=40))
    rejected = await asyncio.wait_for(a.recorder.stale.get(), WAIT)
    assert rejected.call_id == stale
    assert await a.ownership.claim(stale) is None  # tombstoned: a retry of it will not be answered either
    await send(bus, connect_event(ancient, age_seconds=600))
    await wait_until(lambda: a.count("callhook_call_events_dropped_total", reason="stale") >= 2)
    assert a.recorder.incoming.empty()
    assert a.recorder.stale.empty()
    assert a.ownership.room == 10


async def test_expired_connect_is_overflow_even_when_full(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers(capacity=1)
    hold = await a.ownership.claim(new_id())
    assert hold is not None
    assert a.ownership.room == 0
    call_id = new_id()
    body = call_event_encoder.encode(connect_event(call_id))
    await bus.default_exchange.publish(aio_pika.Message(body), contract.EXPIRED_QUEUE)
    overflow = await asyncio.wait_for(a.recorder.overflow.get(), WAIT)
    assert overflow.call_id == call_id
    assert a.count("callhook_calls_overflow_total") == 1
    await hold.release()


async def test_undecodable_call_event_is_dead_lettered(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    await workers()
    exchange = await bus.get_exchange(contract.CALLS_EXCHANGE)
    await exchange.publish(aio_pika.Message(b'{"type":"nonsense"}'), new_id(), mandatory=False)
    dead = await bus.get_queue(contract.DEAD_QUEUE)
    async with asyncio.timeout(WAIT):
        async with dead.iterator() as messages:
            async for message in messages:
                await message.ack()
                break
    assert message.body == b'{"type":"nonsense"}'
    assert message.headers[contract.HEADER_DEAD_SOURCE] == "ownership"
    assert str(message.headers[contract.HEADER_DEAD_REASON]).startswith("undecodable call event")


async def test_drain_stops_taking_unclaimed_work(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel
) -> None:
    a = await workers()
    a.ownership.drain()
    assert a.ownership.reserve() is None
    await send(bus, connect_event(new_id()))

    async def parked() -> bool:
        result = (await bus.declare_queue(contract.UNCLAIMED_QUEUE, passive=True)).declaration_result
        return result.message_count == 1 and result.consumer_count == 0

    await wait_until(parked)
    assert a.recorder.incoming.empty()


async def test_reservation_holds_capacity_and_passes_to_the_claim(
    workers: Callable[..., Awaitable[Worker]],
) -> None:
    a = await workers(capacity=1)
    rooms: list[int] = []
    a.ownership.watch_room(lambda: rooms.append(a.ownership.room))
    reservation = a.ownership.reserve()
    assert reservation is not None
    assert rooms == [0]
    assert a.ownership.room == 0
    assert a.ownership.reserve() is None
    claim = await a.ownership.claim(new_id(), reservation=reservation)
    assert claim is not None
    assert a.ownership.room == 0
    reservation.release()  # taken over: no effect
    assert a.ownership.room == 0
    await claim.release()
    assert a.ownership.room == 1
    assert rooms[-1] == 1  # a capacity-gated consumer (dials) hears about every change


# --- connection loss ------------------------------------------------------------------------------------


async def test_lost_connection_loses_claims_and_ownership_recovers(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        other = await workers()
        call_id = new_id()
        claim = await a.ownership.claim(call_id)
        assert claim is not None
        await proxy.cut()
        async with asyncio.timeout(WAIT):
            await claim.wait_lost()
        with pytest.raises(ClaimLost):
            await anext(claim)
        assert a.ownership.room == 9  # the service still runs the call until it releases it
        await claim.release()
        assert a.ownership.room == 10

        async def claimable() -> bool:  # the broker dropped the exclusive queue with the connection
            c = await other.ownership.claim(call_id)
            return c is not None

        await wait_until(claimable)
        proxy.restore()
        async with asyncio.timeout(WAIT):
            await a.ownership.wait_ready()
        again = await a.ownership.claim(new_id())
        assert again is not None
        await send(bus, status_event(again.call_id))
        assert isinstance(await next_item(again), CallStatus)


# --- the mailbox outlives its owner's connection ------------------------------------------------------


async def mailbox_depth(bus: aio_pika.abc.AbstractChannel, call_id: str) -> tuple[int, int]:
    """(ready messages, consumers) of a call's mailbox, as the broker sees them."""
    queue = await bus.declare_queue(contract.mailbox_queue(call_id), passive=True)
    result = queue.declaration_result
    return result.message_count or 0, result.consumer_count or 0


def took_nothing(worker: Worker) -> bool:
    """No hook of ``worker`` was called: it would have sent Meta a Graph request for any of them."""
    r = worker.recorder
    return all(q.empty() for q in (r.incoming, r.stale, r.overflow, r.orphans, r.abandoned))


async def test_a_cut_owner_keeps_its_call_and_finds_what_arrived_meanwhile(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """An answered call's owner is cut off: Meta's retried connect and the call's later events wait in the
    mailbox; the other worker, with room, gets none of them; the owner reclaims and reads them."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        call_id = new_id()
        await send(bus, connect_event(call_id))
        claim, _, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
        await claim.fence()  # as the service does before pre_accept ...
        await claim.settle()  # ... and after accept
        b = await workers()  # another worker with room, consuming unclaimed work
        await proxy.cut()
        async with asyncio.timeout(WAIT):
            await claim.wait_lost()
        await send(bus, connect_event(call_id))  # Meta's retry of the connect
        await send(bus, status_event(call_id, "ringing"))
        await send(bus, terminate_event(call_id))

        async def waiting() -> bool:
            return (await mailbox_depth(bus, call_id)) == (3, 0)

        await wait_until(waiting)
        unclaimed = await bus.declare_queue(contract.UNCLAIMED_QUEUE, passive=True)
        assert unclaimed.declaration_result.message_count == 0
        assert took_nothing(b)
        assert b.count("callhook_call_claims_total", outcome="claimed") == 0

        proxy.restore()
        async with asyncio.timeout(WAIT):
            await a.ownership.wait_ready()
        again = await a.ownership.reclaim(claim)
        assert again is not None
        assert again.fenced
        assert isinstance(await next_item(again), CallStatus)
        assert isinstance(await next_item(again), CallTerminate)  # the retried connect was dropped
        assert a.count("callhook_call_events_dropped_total", reason="duplicate") == 1
        assert a.ownership.room == 9
        await again.release()
        assert a.ownership.room == 10
        assert took_nothing(b)


async def test_an_owner_cut_before_its_fence_leaves_the_call_to_another_worker(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """Cut after the claim, before anything was sent to Meta: the connect (not settled) is redelivered, the
    other worker takes the mailbox over and answers; the cut owner can neither fence nor reclaim."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        b = await workers(capacity=0)  # no room yet: the connect is surely A's first
        call_id = new_id()
        await send(bus, connect_event(call_id))
        claim, _, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
        b = await workers()
        await proxy.cut()
        with pytest.raises(ClaimLost):
            await claim.fence()
        taken, event, _ = await asyncio.wait_for(b.recorder.incoming.get(), WAIT)
        assert (taken.call_id, event.call_id) == (call_id, call_id)
        assert not taken.answered_before
        await taken.fence()
        await taken.settle()
        proxy.restore()
        async with asyncio.timeout(WAIT):
            await a.ownership.wait_ready()
        assert await a.ownership.reclaim(claim) is None  # B holds the mailbox now
        assert a.ownership.room == 10
        assert b.recorder.abandoned.empty()
        await taken.release()


async def test_a_takeover_after_the_fence_ends_the_call_instead_of_answering_it(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """Cut after the fence (pre_accept may have gone out) but before the connect was settled, for good: the
    worker that gets the redelivered connect finds the answer marker, waits its grace for the owner to come
    back, then hands the call to ``on_abandoned``."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        call_id = new_id()
        await send(bus, connect_event(call_id))
        claim, _, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
        await claim.fence()
        b = await workers(abandon_grace_attempts=2)
        await proxy.cut()
        abandoned = await asyncio.wait_for(b.recorder.abandoned.get(), WAIT)
        assert abandoned.call_id == call_id
        assert b.recorder.incoming.empty()
        assert b.count("callhook_call_claims_total", outcome="owner_awaited") == 2
        assert b.count("callhook_call_claims_total", outcome="abandoned") == 1
        assert b.ownership.room == 10  # a call given up holds no capacity
        assert await b.ownership.claim(call_id) is None  # kept as a tombstone


async def test_the_answer_marker_is_a_quorum_queue_whose_record_a_read_leaves_in_place(
    workers: Callable[..., Awaitable[Worker]], amqp_url: str
) -> None:
    """A claim reads the marker with a basic.get given back at once: a second takeover reads the record
    too. The marker is a quorum queue (a classic declare of its name is refused), so it outlives a node."""
    a = await workers()
    b = await workers()
    call_id = new_id()
    claim = await a.ownership.claim(call_id)
    assert claim is not None
    claim.prepare_fence()  # declared, no record yet: nothing was sent to Meta
    await claim._write_marker()  # the fence's own write, without the claim bookkeeping
    link = a.ownership._marker_link
    async with asyncio.timeout(WAIT):
        session = await link.wait_session()
    assert await read_marker(session, call_id)
    assert await read_marker(session, call_id)  # still there
    assert not await read_marker(session, new_id())  # no marker queue at all
    await claim.release(tombstone=False)
    assert await b.ownership.claim(call_id) is not None  # deleted with the mailbox: a fresh call id again
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            contract.answer_marker_queue(call_id),
            durable=True,
            arguments=dict(contract.answer_marker_arguments()),
        )
        channel = await connection.channel()
        with pytest.raises(ChannelPreconditionFailed):
            await channel.declare_queue(
                contract.answer_marker_queue(call_id),
                durable=True,
                arguments=dict(contract.mailbox_arguments()),
            )


async def test_a_fenced_owner_back_within_the_grace_keeps_its_call(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """Cut after the fence, before the settle, and back soon: the worker with the redelivered connect finds
    the marker and waits; the owner consumes its mailbox again; the copy then meets a refused claim and is
    dropped. Nobody but the owner does anything with the call."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        call_id = new_id()
        await send(bus, connect_event(call_id))
        claim, _, _ = await asyncio.wait_for(a.recorder.incoming.get(), WAIT)
        await claim.fence()
        b = await workers()
        await proxy.cut()
        await wait_until(lambda: b.count("callhook_call_claims_total", outcome="owner_awaited") >= 1)
        proxy.restore()
        async with asyncio.timeout(WAIT):
            await a.ownership.wait_ready()
        again = await a.ownership.reclaim(claim)
        assert again is not None
        await wait_until(lambda: b.count("callhook_call_events_dropped_total", reason="duplicate") >= 1)
        assert took_nothing(b)
        await send(bus, terminate_event(call_id))
        assert isinstance(await next_item(again), CallTerminate)
        await again.release()


async def test_a_stale_copy_of_an_answered_call_is_not_rejected(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """A stale copy of a connect that reaches ``unclaimed`` (its mailbox was lost with a broker node) while
    the call's owner is away: the marker says the call may be answered, so it is not rejected."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)))
        call_id = new_id()
        claim = await a.ownership.claim(call_id)
        assert claim is not None
        await claim.fence()
        await proxy.cut()
        async with asyncio.timeout(WAIT):
            await claim.wait_lost()
        b = await workers()
        body = call_event_encoder.encode(connect_event(call_id, age_seconds=40))
        await bus.default_exchange.publish(aio_pika.Message(body), contract.UNCLAIMED_QUEUE)
        await wait_until(lambda: b.count("callhook_call_events_dropped_total", reason="duplicate") >= 1)
        assert took_nothing(b)


async def test_the_mailbox_of_an_owner_gone_for_good_expires(
    workers: Callable[..., Awaitable[Worker]], bus: aio_pika.abc.AbstractChannel, amqp_url: str
) -> None:
    """``x-expires``: consumed, a mailbox lives on; without a consumer for that long, the broker deletes it
    (and its marker), so a worker that never comes back leaves nothing behind."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        a = await workers(str(URL(amqp_url).with_port(proxy.port)), mailbox_expires_ms=500)
        call_id = new_id()
        claim = await a.ownership.claim(call_id)
        assert claim is not None
        await claim.fence()
        await send(bus, status_event(call_id))
        assert isinstance(await next_item(claim), CallStatus)
        await proxy.cut()

        vhost = unquote(URL(amqp_url).path.lstrip("/"))

        async def gone(name: str) -> bool:
            # Asked of rabbitmqctl: a passive declare would count as a use and renew the queue's lease.
            listing = await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"],
                capture_output=True,
                text=True,
                check=True,
            )
            return name not in listing.stdout.split()

        await wait_until(lambda: gone(contract.mailbox_queue(call_id)))
        await wait_until(lambda: gone(contract.answer_marker_queue(call_id)))
