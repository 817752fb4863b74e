"""Router throughput and the latency it adds: ingress receipt -> the owning call's mailbox, against a bare
RabbitMQ round trip measured in the same run.

Setup (a private vhost, torn down at the end):
- this process publishes webhooks like the ingress (persistent, publisher confirms, the receive-time header
  set at publish) and owns ``--calls`` calls through :class:`worker.ownership.Ownership`, reading their
  mailboxes; the latency of an event is its mailbox arrival time minus the receive-time header;
- the router runs in its own process (``tests/support/routing_worker.py`` with capacity 0: router only).

Phases:
1. baseline: the same webhook bodies published to ``callhook.webhooks`` and consumed straight from it by this
   process (no router): latency at ``--rate`` webhooks/s, then the peak messages/s of publish -> consume.
2. router: status webhooks for the owned calls at ``--rate``/s -> router -> ``callhook.calls`` -> mailbox;
   then the peak events/s with one event per webhook and with ``--batch`` events per webhook.

    ./run bench route                     # or: uv run --frozen python bench/route.py
    uv run --frozen python bench/route.py --seconds 2 --peak 1000     # a quick smoke run

Goal: p99 added latency < 20 ms at 100 webhooks/s on the reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support (vhosts, webhook bodies, the router process)

from ingress import contract  # noqa: E402
from ingress.broker import declare_topology  # noqa: E402
from tests.support import rabbit, webhooks  # noqa: E402
from tests.support.routing_worker import WorkerProcess  # noqa: E402
from worker.amqp import AmqpLink, header_float  # noqa: E402
from worker.events import CallConnect, CallEvent  # noqa: E402
from worker.metrics import WorkerMetrics  # noqa: E402
from worker.ownership import Claim, Ownership, OwnershipSettings  # noqa: E402

WINDOW = 300  # publishes in flight during peak phases (confirms pipelined)


class Sink:
    """Collects (arrival - receipt) latencies and counts arrivals; ``done`` fires at ``expected``."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.expected = 0
        self.first_sent = 0.0
        self.last_arrival = 0.0
        self.done = asyncio.Event()

    def reset(self, expected: int) -> None:
        self.latencies, self.expected, self.last_arrival = [], expected, 0.0
        self.first_sent = time.time()
        self.done.clear()

    def arrived(self, received_at: float | None) -> None:
        now = time.time()
        if received_at is not None:
            self.latencies.append(now - received_at)
        self.last_arrival = now
        if len(self.latencies) >= self.expected:
            self.done.set()


class NoCalls:
    """The bench owns its calls through :meth:`Ownership.claim`; nothing else should reach it."""

    async def on_incoming(self, claim: Claim, event: CallConnect, received_at: float) -> None:
        raise RuntimeError("unexpected incoming call")

    async def on_stale(self, event: CallConnect) -> None:
        pass

    async def on_overflow(self, event: CallConnect) -> None:
        pass

    async def on_orphan(self, event: CallEvent) -> None:
        pass

    async def on_abandoned(self, event: CallConnect) -> None:
        pass


async def paced(rate: float, count: int, send: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``send(i)`` at ``rate`` per second (a pacing timer; each send waits for its own confirm)."""
    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(send(i))


async def flooded(count: int, send: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``send(i)`` for every i with at most WINDOW in flight."""
    window = asyncio.Semaphore(WINDOW)

    async def one(i: int) -> None:
        try:
            await send(i)
        finally:
            window.release()

    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            await window.acquire()
            tg.create_task(one(i))


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


async def measure(
    sink: Sink,
    args: argparse.Namespace,
    send: Callable[[int, int], Coroutine[Any, Any, None]],
    *,
    batches: bool,
) -> dict[str, float]:
    """Latency at ``--rate``, then peak throughput; ``send(i, n)`` publishes webhook i carrying n events."""
    out: dict[str, float] = {}
    count = max(20, int(args.rate * args.seconds))
    sink.reset(count)
    await paced(args.rate, count, lambda i: send(i, 1))
    async with asyncio.timeout(60):
        await sink.done.wait()
    out["p50_ms"], out["p99_ms"] = percentiles(sink.latencies)
    for events, key in ((1, "peak_single"), (args.batch, "peak_batch"))[: 2 if batches else 1]:
        webhooks_count = max(1, args.peak // events)
        sink.reset(webhooks_count * events)
        await flooded(webhooks_count, lambda i, e=events: send(i, e))  # type: ignore[misc]
        async with asyncio.timeout(120):
            await sink.done.wait()
        out[key] = webhooks_count * events / (sink.last_arrival - sink.first_sent)
    return out


async def baseline(
    channel: AbstractChannel, args: argparse.Namespace, bodies: list[bytes]
) -> dict[str, float]:
    sink = Sink()
    queue = await channel.get_queue(contract.WEBHOOKS_QUEUE)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        sink.arrived(header_float(message.headers, contract.HEADER_RECEIVED_AT))

    consumer = await queue.consume(on_message)

    async def send(i: int, events: int) -> None:
        await publish(channel, bodies[i % len(bodies)])

    try:
        return await measure(sink, args, send, batches=False)
    finally:
        await queue.cancel(consumer)


async def publish(channel: AbstractChannel, body: bytes) -> None:
    headers: dict[str, Any] = {contract.HEADER_RECEIVED_AT: f"{time.time():.6f}"}
    message = aio_pika.Message(
        body,
        content_type=contract.WEBHOOK_CONTENT_TYPE,
        message_id=contract.message_id(body),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )
    await channel.default_exchange.publish(message, contract.WEBHOOKS_QUEUE, timeout=30)


async def routed(
    url: str, channel: AbstractChannel, args: argparse.Namespace, stack: AsyncExitStack
) -> dict[str, float]:
    sink = Sink()
    link = await stack.enter_async_context(AmqpLink(url, name="bench-owner"))
    metrics = WorkerMetrics(CollectorRegistry())
    settings = OwnershipSettings(capacity=args.calls, mailbox_prefetch=256)
    ownership = await stack.enter_async_context(Ownership(link, NoCalls(), metrics, settings))
    async with asyncio.timeout(30):
        await ownership.wait_ready()
    tg = await stack.enter_async_context(asyncio.TaskGroup())
    ids = [f"wacid.bench{i:05d}" for i in range(args.calls)]
    for call_id in ids:
        claim = await ownership.claim(call_id)
        assert claim is not None
        tg.create_task(read(claim, sink))
    single = [webhooks.status(call_id, "RINGING") for call_id in ids]
    batched = [
        webhooks.body(
            webhooks.calls_change(
                statuses=[webhooks.status_item(ids[(i + k) % len(ids)]) for k in range(args.batch)]
            )
        )
        for i in range(len(ids))
    ]
    router = await WorkerProcess.start(url, name="bench-router", capacity=0)
    stack.push_async_callback(router.stop)

    async def send(i: int, events: int) -> None:
        await publish(channel, (single if events == 1 else batched)[i % len(ids)])

    return await measure(sink, args, send, batches=True)


async def read(claim: Claim, sink: Sink) -> None:
    async for item in claim:
        sink.arrived(item.received_at or None)
        await item.ack()


async def main(args: argparse.Namespace) -> None:
    vhost = rabbit.create_vhost("callhook-bench")
    url = rabbit.amqp_url(vhost)
    try:
        async with AsyncExitStack() as stack:
            connection = await aio_pika.connect(url)
            stack.push_async_callback(connection.close)
            channel = await connection.channel()
            await declare_topology(channel)
            ids = [f"wacid.base{i:05d}" for i in range(args.calls)]
            bodies = [webhooks.status(call_id, "RINGING") for call_id in ids]
            base = await baseline(channel, args, bodies)
            route = await routed(url, channel, args, stack)
            report(args, base, route)
    finally:
        rabbit.delete_vhost(vhost)


def report(args: argparse.Namespace, base: dict[str, float], route: dict[str, float]) -> None:
    def latency(m: dict[str, float]) -> str:
        return f"p50 {m['p50_ms']:6.2f} ms  p99 {m['p99_ms']:6.2f} ms"

    print(f"route bench: python {platform.python_version()}, {args.seconds:g} s at {args.rate:g} webhooks/s, "
          f"peak over {args.peak} events, {args.calls} owned calls")  # fmt: skip
    print(
        f"  baseline  publish -> consume, no router : {latency(base)}   peak {base['peak_single']:6.0f} msg/s"
    )
    print(f"  router    ingress -> owner's mailbox    : {latency(route)}   peak {route['peak_single']:6.0f} "
          f"events/s (1/webhook), {route['peak_batch']:.0f} events/s ({args.batch}/webhook)")  # fmt: skip
    added50, added99 = route["p50_ms"] - base["p50_ms"], route["p99_ms"] - base["p99_ms"]
    print(f"  added by the router: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms")
    ratios = (route["p50_ms"] / base["p50_ms"], route["p99_ms"] / base["p99_ms"])
    peak_ratio = route["peak_single"] / base["peak_single"]
    print(f"  ratio router/baseline: p50 {ratios[0]:.2f}x, p99 {ratios[1]:.2f}x, peak {peak_ratio:.2f}x")
    verdict = "met" if route["p99_ms"] < 20 else "NOT met"
    print(f"  goal p99 ingress -> mailbox < 20 ms at {args.rate:g}/s: {verdict}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second in the latency phases")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency phase")
    parser.add_argument("--peak", type=int, default=5000, help="events per peak phase")
    parser.add_argument("--batch", type=int, default=20, help="events per webhook in the batched peak phase")
    parser.add_argument("--calls", type=int, default=100, help="calls owned by this process")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
