"""Call ownership on a real 3-node RabbitMQ cluster losing a node (``scripts/rabbitmq-cluster``).

The node a worker is connected to dies (kill -9) while it holds two incoming calls: one fenced (it may have
answered Meta), one not yet. The broker redelivers both connects (``callhook.calls.unclaimed`` is a quorum
queue) to a worker on the other nodes, which must end the fenced call and answer the other: the answer
marker, a quorum queue led by the dead node, is read through its new leader. With the classic marker of
before, the unfenced call could not be answered by anyone until the node came back, and rang out.

The cluster is started if it is not running (about 20 s) and left as it was found; the dead node is started
again afterwards. Its own virtual host keeps the test apart from anything else on the cluster.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from prometheus_client import CollectorRegistry

from ingress import contract
from ingress.broker import declare_topology
from tests.integration.test_ownership import Recorder, Worker, connect_event, new_id, send
from worker.amqp import AmqpLink
from worker.metrics import WorkerMetrics
from worker.ownership import Ownership, OwnershipSettings

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-cluster"
PORTS = {1: 5681, 2: 5682, 3: 5683}
WAIT = 60.0  # a node loss: the survivors notice it, elect new leaders, redeliver


def cluster(*args: str, timeout: float = 240.0) -> str:
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmq-cluster {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def cluster_vhost() -> Iterator[str]:
    """A vhost of its own on the 3-node cluster (started here if it was not running, stopped after)."""
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed")
    was_running = all(": running" in line for line in cluster("status").splitlines()[:3])
    cluster("start")
    vhost = f"callhook-cluster-test-{uuid.uuid4().hex[:8]}"
    cluster("ctl", "add_vhost", vhost)
    cluster("ctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield vhost
    finally:
        cluster("start")  # a node the test killed comes back (idempotent for the others)
        cluster("ctl", "delete_vhost", vhost)
        if not was_running:
            cluster("stop")


def url(vhost: str, *nodes: int) -> str:
    return ",".join(f"amqp://guest:guest@127.0.0.1:{PORTS[n]}/{quote(vhost, safe='')}" for n in nodes)


@pytest.fixture
async def workers() -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:

        async def start(amqp_url: str, **settings: Any) -> Worker:
            metrics = WorkerMetrics(CollectorRegistry())
            recorder = Recorder()
            link = await stack.enter_async_context(AmqpLink(amqp_url, name="test", connect_timeout_seconds=2))
            ownership = await stack.enter_async_context(
                Ownership(link, recorder, metrics, OwnershipSettings(capacity=10, **settings))
            )
            async with asyncio.timeout(WAIT):
                await ownership.wait_ready()
            return Worker(ownership, recorder, metrics)

        yield start


async def test_a_node_loss_neither_answers_a_fenced_call_twice_nor_strands_an_unfenced_one(
    cluster_vhost: str, workers: Any
) -> None:
    connection = await aio_pika.connect(url(cluster_vhost, 2))
    async with connection:
        bus = await connection.channel()
        await declare_topology(bus)
        # Worker A reaches the cluster through node 1 only: its mailboxes live there, and so do the leaders
        # of the answer markers it declares (quorum queues are led by the declaring client's node).
        a = await workers(url(cluster_vhost, 1))
        fenced_id, unfenced_id = new_id(), new_id()
        for call_id in (fenced_id, unfenced_id):
            await send(bus, connect_event(call_id))
        held = {}
        async with asyncio.timeout(WAIT):
            for _ in range(2):
                claim, event, _ = await a.recorder.incoming.get()
                held[event.call_id] = claim
        await held[fenced_id].fence()  # A may now send pre_accept: the call must never be answered again
        assert cluster("leader", contract.answer_marker_queue(fenced_id), cluster_vhost).strip() == "1"

        # Worker B on the other two nodes; then node 1 dies, with A's connection, mailboxes and leaders.
        b = await workers(url(cluster_vhost, 2, 3), abandon_grace_attempts=2)
        cluster("kill", "1")

        async with asyncio.timeout(WAIT):
            claim, event, _ = await b.recorder.incoming.get()
            assert event.call_id == unfenced_id  # answered elsewhere in time, not left to ring out
            await claim.fence()  # the marker (declared by A in the background) takes B's record
            abandoned = await b.recorder.abandoned.get()
        assert abandoned.call_id == fenced_id  # ended, never answered a second time
        assert b.recorder.incoming.empty()
        assert b.count("callhook_call_claims_total", outcome="abandoned") == 1
