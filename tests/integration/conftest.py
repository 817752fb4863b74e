from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from ingress import contract
from ingress.broker import declare_topology


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A channel of our own to look into the vhost; the queues the ingress publishes to start empty."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        ch = await connection.channel()
        await declare_topology(ch)
        for name in (contract.WEBHOOKS_QUEUE, contract.DIALS_QUEUE):
            await (await ch.get_queue(name)).purge()
        yield ch


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
