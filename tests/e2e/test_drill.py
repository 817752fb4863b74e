"""Reliability: the drill, short, and what it found, each as a test of its own.

``bench/drill.py`` runs for ten minutes with every fault (docs/reliability.md); the first test here runs it
for about a minute with the faults that matter most and never touches the shared broker itself: two workers
(each behind its own TCP proxy to RabbitMQ), incoming calls with real media and ``messages`` webhooks
delivered with duplicates, reordering, batching and stale stamps, a side stream of signed poison and unsigned
bodies, and on a schedule a Graph API 5xx window, a worker SIGKILLed (and replaced) and a worker's broker
connections cut (while Meta delivers its calls' connects again). The verdict is the drill's own: every
invariant 0. The test also checks that the load and the faults really happened, so a drill that silently
skipped them cannot pass. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import aio_pika
import aiohttp
import pytest

from bench.drill import DrillSettings, run_drill
from bench.drill_plan import SHORT_SEQUENCE, schedule
from ingress import contract
from simulator import payloads
from simulator.calls import CallState
from simulator.config import CallTiming, SimulatorConfig
from simulator.sim import Simulator
from tests.e2e.harness import ACTIVE, poll
from tests.support import rabbit
from tests.support.system import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, scrape, wait_ready
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.e2e]

LOAD_SECONDS = 45.0


@pytest.mark.timeout(240)
async def test_short_drill_loses_nothing_answers_once_and_leaves_nothing_half_open(
    amqp_url: str, tmp_path: Path
) -> None:
    settings = DrillSettings(
        load_seconds=LOAD_SECONDS,
        workers=2,
        call_rate=0.5,
        hold_seconds=8.0,
        message_rate=5.0,
        junk_rate=1.0,
        faults=tuple(schedule(LOAD_SECONDS, SHORT_SEQUENCE, restart_broker=False)),
        # A killed worker's calls go silent: the phones hang up 5 s later, not 10.
        timing=CallTiming(start_silence_seconds=5.0, midcall_silence_seconds=5.0),
        log_dir=tmp_path / "logs",
        seed=7,
        settle_timeout_seconds=90.0,
    )
    vhost = unquote(urlparse(amqp_url).path.removeprefix("/"))

    report = await run_drill(settings, vhost)

    text = report.format()
    assert report.invariants() == {
        "lost": 0,
        "answered_twice": 0,
        "answered_by_second_worker": 0,
        "half_open": 0,
        "unsigned_published": 0,
        "dropped": 0,
        "api_abuse": 0,
    }, text
    data = report.data
    # The load and the faults happened as scheduled, or the verdict means nothing.
    assert sum(c.outcome.answered for c in report.calls) >= 10, text
    assert {w.window.kind for w in data.windows if w.started_at and w.ended_at} == {
        "graph_5xx",
        "sigkill",
        "cut_worker",
    }, text
    [killed] = [p for p in data.processes if p.signal == "SIGKILL"]
    assert killed.exit_code == -9, text
    assert [p.name for p in data.processes if p.name.startswith("worker")] == [
        "worker-0",
        "worker-1",
        "worker-2",
    ]
    assert any(r.fault == "*:503" for r in data.journal.requests), text
    assert any(d.duplicate_of is not None for d in data.journal.deliveries), text
    unsigned = [p for p in data.junk if not p.signed]
    assert unsigned, text
    assert all(p.statuses == [401] for p in unsigned), text
    assert any(p.signed and p.stored for p in data.junk), text
    assert all(data.audit.markers[m.marker] for m in data.messages), text


def log_lines(process: Process, call_id: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in process.log().splitlines() if call_id in line]


@pytest.mark.timeout(120)
async def test_a_cut_owner_keeps_its_call_and_no_other_worker_touches_it(
    amqp_url: str, tmp_path: Path
) -> None:
    """Found by the drill: the owner's broker link drops and Meta delivers the call's connect once more. The
    call's mailbox outlives the owner's connection, so the copy waits there: the other worker (with room)
    never sees it and sends Meta nothing; the owner reclaims its mailbox when it is back and the call goes on
    (the phone's hang-up then reaches it as usual)."""
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
        async with (
            TcpProxy(rabbit.BROKER_HOST, rabbit.BROKER_PORT) as link,
            aiohttp.ClientSession() as http,
            await aio_pika.connect(amqp_url) as looker,
        ):
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
                    channel = await looker.channel()

                    async def waiting_in_the_mailbox() -> int:
                        name = contract.mailbox_queue(call.call_id)
                        queue = await channel.declare_queue(name, passive=True)
                        return queue.declaration_result.message_count or 0

                    await poll(waiting_in_the_mailbox, lambda count: count == 1)
                    link.restore()
                    async with asyncio.timeout(30):
                        await wait_ready(http, owner)
                    await poll(
                        lambda: scrape(http, owner),
                        lambda m: m.get('callhook_call_claims_total{outcome="reclaimed"}', 0) == 1,
                    )
                    await poll(waiting_in_the_mailbox, lambda count: count == 0)  # read by the owner

                    assert call.state is CallState.ACCEPTED, call.end_reason
                    await call.wait_heard(call.phone.seconds_heard + 1.0, timeout=10)  # the echo goes on
                    await call.hangup()
                    await poll(lambda: scrape(http, owner), lambda m: m["callhook_calls_active"] == 0)
                    assert len(sim.journal.graph_requests("pre_accept", call.call_id)) == 1
                    assert len(sim.journal.graph_requests("accept", call.call_id)) == 1
                    others = await scrape(http, other)
                    assert others.get('callhook_call_claims_total{outcome="claimed"}', 0) == 0
                    count = "callhook_graph_request_duration_seconds_count"
                    sent = [k for k in others if k.startswith(count)]
                    assert sum(others[k] for k in sent) == 0  # not one Graph request from the other worker
                finally:
                    await system.stop()
    finally:
        ACTIVE.remove(system)
