"""Reliability: what the drill (bench/drill.py, docs/reliability.md) found, each as a test of its own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp
import pytest

from simulator import payloads
from simulator.calls import CallState
from simulator.config import SimulatorConfig
from simulator.sim import Simulator
from tests.e2e.harness import ACTIVE, poll
from tests.support import rabbit
from tests.support.system import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, scrape, wait_ready
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.e2e]


def log_lines(process: Process, call_id: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in process.log().splitlines() if call_id in line]


@pytest.mark.timeout(120)
async def test_a_copy_of_the_connect_while_the_owner_is_cut_off_does_not_end_the_call(
    amqp_url: str, tmp_path: Path
) -> None:
    """Found by the drill: the owner's broker link drops (its claim goes with it), Meta delivers the call's
    connect once more, another worker claims the copy and tries to answer it (Meta refuses: the call has an
    answer); when the owner is back its re-claim is refused, and it used to hang up the live call."""
    vhost = unquote(urlparse(amqp_url).path.removeprefix("/"))
    graph_port = free_port()
    config = SimulatorConfig(
        app_secret=APP_SECRET, access_token=ACCESS_TOKEN, ice_host_addresses=("127.0.0.1",), random_seed=3
    )
    system = System(
        amqp_url=amqp_url, graph_url=f"http://127.0.0.1:{graph_port}", log_dir=tmp_path, workers=0
    )
    ACTIVE.append(system)
    try:
        async with TcpProxy(rabbit.BROKER_HOST, rabbit.BROKER_PORT) as link, aiohttp.ClientSession() as http:
            system.start_ingress()
            owner = system.start_worker(CALLHOOK_AMQP_URL=rabbit.amqp_url(vhost, port=link.port))
            await system.wait_ready()
            async with Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
                try:
                    call = await sim.place_call("15557770001")
                    await call.wait_state(CallState.ACCEPTED, timeout=20)
                    other = system.start_worker()
                    async with asyncio.timeout(30):
                        await wait_ready(http, other)

                    await link.cut()
                    [connect] = sim.journal.deliveries_of("connect", call.call_id)
                    headers = {"X-Hub-Signature-256": payloads.signature(connect.body, APP_SECRET)}
                    async with http.post(system.webhook_url, data=connect.body, headers=headers) as response:
                        assert response.status == 200  # Meta's copy, stored
                    # The other worker took the copy: Meta refused its answer (the call has one).
                    await sim.journal.changes.wait_for(
                        lambda: len(sim.journal.graph_requests("pre_accept", call.call_id)) == 2, 20
                    )
                    link.restore()
                    async with asyncio.timeout(30):
                        await wait_ready(http, owner)
                    await poll(
                        lambda: asyncio.sleep(0, log_lines(owner, call.call_id)),
                        lambda lines: call.ended or any("taken over" in str(r.get("msg")) for r in lines),
                    )

                    assert call.state is CallState.ACCEPTED, (call.end_reason, log_lines(owner, call.call_id))
                    await call.wait_heard(call.phone.seconds_heard + 1.0, timeout=10)  # the echo goes on
                    await call.hangup()
                    await poll(lambda: scrape(http, owner), lambda m: m["callhook_calls_active"] == 0)
                    ends = sim.journal.graph_requests("terminate", call.call_id)
                    assert all(not r.ok for r in ends), "the business never ended the live call"
                finally:
                    await system.stop()
    finally:
        ACTIVE.remove(system)
