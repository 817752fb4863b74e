"""A dial while every worker is full waits in ``callhook.dials`` and is taken as soon as a call ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest

from ingress import contract
from ingress.commands import Dial
from simulator.config import SimulatorConfig
from simulator.permissions import PermissionStatus
from simulator.sim import Simulator
from tests.support.system import ACCESS_TOKEN, APP_SECRET, System, free_port

pytestmark = pytest.mark.e2e


async def wait_dials_queue(channel: aio_pika.abc.AbstractChannel, *, messages: int, consumers: int) -> None:
    """Until ``callhook.dials`` shows this many ready messages and consumers (the broker's own counts)."""
    async with asyncio.timeout(15):
        while True:
            queue = await channel.declare_queue(contract.DIALS_QUEUE, passive=True)
            result = queue.declaration_result
            if (result.message_count, result.consumer_count) == (messages, consumers):
                return
            await asyncio.sleep(0.05)  # the broker offers no push notification of queue counts


async def test_dial_waits_for_room_then_is_taken(amqp_url: str, tmp_path: Path) -> None:
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=tmp_path,
        workers=2,
        worker_env={"CALLHOOK_MAX_CALLS": "1"},
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        ice_host_addresses=("127.0.0.1",),
        default_permission=PermissionStatus.TEMPORARY,
    )
    async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
        busy = [await sim.place_call(from_=f"1555020000{i}") for i in range(2)]
        for call in busy:
            await call.wait_state("accepted", timeout=15)
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await wait_dials_queue(channel, messages=0, consumers=0)  # both full: nobody takes dials
            dial = Dial(to="15550209999", phone_number_id=config.numbers[0].phone_number_id).validated()
            message = aio_pika.Message(dial.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True)
            await wait_dials_queue(channel, messages=1, consumers=0)  # it waits in the queue
            assert not [c for c in sim.calls if c.user.wa_id == "15550209999"]

            await busy[0].hangup()  # room frees on one worker: it consumes dials again and takes this one
            outgoing = await sim.wait_for_call(user="15550209999", timeout=15)
            await outgoing.wait_state("accepted", timeout=15)
            await outgoing.wait_heard(1.0, timeout=15)
            assert outgoing.audio_report().matched
            await wait_dials_queue(channel, messages=0, consumers=0)  # taken, and that worker is full again
            await outgoing.hangup()
            await busy[1].hangup()
            await outgoing.wait_ended(timeout=10)
