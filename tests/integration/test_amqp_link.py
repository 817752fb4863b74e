"""AmqpLink with several broker addresses: tried in turn, on the first connect and on every reconnect.

Two TCP proxies in front of the real broker stand for two nodes of a cluster; cutting one is that node
going away (tests/support/tcpproxy.py).
"""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from ingress.publisher import Publisher
from tests.support.system import free_port
from tests.support.tcpproxy import TcpProxy
from worker.amqp import AmqpLink

pytestmark = pytest.mark.integration

WAIT = 10.0


async def test_a_dead_first_broker_is_skipped(amqp_url: str) -> None:
    dead = str(URL(amqp_url).with_port(free_port()))
    async with AmqpLink(f"{dead},{amqp_url}", name="test", retry_max_seconds=0.2) as link:
        async with asyncio.timeout(WAIT):
            session = await link.wait_session()
        assert not session.is_lost
        assert link.connects == 1
        assert link.failed_connects == 0  # one attempt tried both brokers


async def test_a_reconnect_goes_to_the_other_broker_when_one_is_gone(amqp_url: str) -> None:
    async with TcpProxy("127.0.0.1", 5672) as one, TcpProxy("127.0.0.1", 5672) as two:
        urls = ",".join(str(URL(amqp_url).with_port(p.port)) for p in (one, two))
        async with AmqpLink(urls, name="test", retry_max_seconds=0.2) as link:
            async with asyncio.timeout(WAIT):
                first = await link.wait_session()
            assert (one.active_connections, two.active_connections) == (1, 0)
            await one.cut()  # node one dies and stays away
            async with asyncio.timeout(WAIT):
                second = await link.wait_session(after=first)
            assert first.is_lost
            assert not second.is_lost
            assert two.active_connections == 1
            one.restore()
            await two.cut()  # and back: the list wraps around
            async with asyncio.timeout(WAIT):
                await link.wait_session(after=second)
            assert one.active_connections == 1


async def test_the_ingress_publisher_goes_to_the_other_broker_too(amqp_url: str) -> None:
    """The ingress's publisher takes the same list: a webhook is stored through the node that is left."""
    async with TcpProxy("127.0.0.1", 5672) as one, TcpProxy("127.0.0.1", 5672) as two:
        urls = ",".join(str(URL(amqp_url).with_port(p.port)) for p in (one, two))
        async with Publisher(urls, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2) as publisher:
            async with asyncio.timeout(WAIT):
                await publisher.wait_connected()
            assert (one.active_connections, two.active_connections) == (1, 0)
            await one.cut()
            async with asyncio.timeout(WAIT):
                await publisher.wait_disconnected()
                await publisher.wait_connected()
            assert two.active_connections == 1
            await publisher.publish(b"{}", received_at=0.0, secret_id="test")
