"""A WhatsApp call put on a voice agent by configuration alone: ``CALLHOOK_APP=ws://...`` on a real worker.

The agent is a WebSocket server in the test speaking Twilio Media Streams; the caller, the simulator's phone.
An agent that cannot be reached gets the call rejected before it is accepted (the bridge prepares while the
call rings), instead of an accepted call with nobody on the other end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulator.config import SimulatorConfig
from simulator.sim import Simulator
from tests.support.system import ACCESS_TOKEN, APP_SECRET, System, free_port
from tests.support.voice_agent import VoiceAgent

pytestmark = pytest.mark.e2e


async def deployment(amqp_url: str, log_dir: Path, app: str) -> AsyncIterator[tuple[System, Simulator]]:
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=log_dir,
        workers=1,
        worker_env={"CALLHOOK_APP": app, "CALLHOOK_BRIDGE_PROTOCOL": "twilio"},
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET, access_token=ACCESS_TOKEN, ice_host_addresses=("127.0.0.1",)
    )
    async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
        yield system, sim


async def test_caller_and_agent_hear_each_other(amqp_url: str, tmp_path: Path) -> None:
    async with VoiceAgent("twilio") as agent:
        async for _, sim in deployment(amqp_url, tmp_path, agent.url):
            call = await sim.place_call(from_="15550300001", name="Agent Caller")
            session = await agent.next_session(timeout_seconds=20)
            await call.wait_state("accepted", timeout=20)
            start = session.control("start")[0]["start"]
            assert start["callSid"] == call.call_id
            assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            await session.send_tone(1000.0, 2.0)  # the agent speaks...
            await call.wait_heard(1.5, timeout=20)  # ...and the caller's phone hears it
            assert session.heard, "the agent received the caller's audio"
            await session.close()  # the agent hangs up: the worker terminates the call
            terminate = await sim.journal.wait_for_request("terminate", call_id=call.call_id, timeout=20)
            assert terminate.ok
            await call.wait_ended(timeout=10)


async def test_unreachable_agent_gets_the_call_rejected_before_accept(amqp_url: str, tmp_path: Path) -> None:
    unreachable = f"ws://127.0.0.1:{free_port()}/agent"  # nothing listens there: connection refused
    async for _, sim in deployment(amqp_url, tmp_path, unreachable):
        call = await sim.place_call(from_="15550300002")
        reject = await sim.journal.wait_for_request("reject", call_id=call.call_id, timeout=30)
        assert reject.ok
        assert sim.journal.graph_requests("accept", call_id=call.call_id) == []
        await call.wait_ended(timeout=10)
