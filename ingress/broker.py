"""Declaring the topology of :mod:`ingress.contract` with aio-pika; shared by the ingress and the workers."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel

from ingress import contract


async def declare_topology(channel: AbstractChannel) -> None:
    """Declare every exchange and queue of the contract. Idempotent: safe for every process at start-up."""
    for ex in contract.EXCHANGES:
        await channel.declare_exchange(
            ex.name, aio_pika.ExchangeType(ex.kind), durable=True, arguments=dict(ex.arguments)
        )
    for q in contract.QUEUES:
        queue = await channel.declare_queue(q.name, durable=True, arguments=dict(q.arguments))
        if q.bind_to is not None:
            await queue.bind(q.bind_to, routing_key=q.routing_key)
