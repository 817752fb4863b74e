"""A voice agent hands the caller to a person: the pcm protocol's ``transfer`` message, and
``POST /v1/calls/{id}/transfer`` on the ingress (what Twilio-protocol agents and integrators use).

Real ingress (with the calls API on), one worker bridging every call to a voice agent in this process,
``callhook console``, the simulator as Meta, and a scripted agent following the board.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from simulator.agent import ScriptedAgent
from simulator.calls import CallState
from simulator.config import CallTiming
from simulator.local import Process, free_port, wait_ready
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy
from tests.support.voice_agent import VoiceAgent

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

API_TOKEN = "handoff-api-token-0123456789"
TIMING = CallTiming(start_silence_seconds=20.0, midcall_silence_seconds=20.0)


@dataclass
class Setup:
    dep: Deployment
    console: Process
    voice_agent: VoiceAgent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    logs = tmp_path_factory.mktemp("handoff-bridge-logs")
    async with VoiceAgent("pcm") as voice_agent:
        worker_env = {
            "CALLHOOK_APP": voice_agent.url,
            "CALLHOOK_BRIDGE_PROTOCOL": "pcm",
            "CALLHOOK_HANDOFF_HEARTBEAT_SECONDS": "0.5",
            "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5",
        }
        async with deploy(
            amqp_url, logs, workers=1, worker_env=worker_env, timing=TIMING,
            ingress_env={"CALLHOOK_API_TOKENS": API_TOKEN},
        ) as dep:  # fmt: skip
            port = free_port()
            env = dep.system.base_env() | {
                "CALLHOOK_CONSOLE_AGENTS": "alice:alice-token:*",
                "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
                "CALLHOOK_CONSOLE_PORT": str(port),
            }
            console = dep.system._spawn("console", "console", env, port)
            try:
                await wait_ready(dep.http, console)
                yield Setup(dep, console, voice_agent)
            finally:
                console.popen.terminate()
                console.popen.wait(10)


async def test_a_pcm_voice_agent_transfers_the_caller(setup: Setup) -> None:
    async with ScriptedAgent(setup.console.url, "alice-token") as alice:
        (call,) = await setup.dep.place_calls(1)
        await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
        session = await setup.voice_agent.next_session(WAIT_SECONDS)
        await session.send_json(
            {"type": "transfer", "queue": "billing", "reason": "refund", "context": {"order": "A-42"}}
        )
        entry = await alice.wait_for_call(call.call_id)
        assert (entry["queue"], entry["reason"], entry["context"]) == ("billing", "refund", {"order": "A-42"})
        await session.wait_for(lambda: bool(session.control("stop")))
        assert session.control("stop")[0]["reason"] == "transferred"
        await alice.take(call.call_id)
        await alice.hang_up()
        await call.wait_ended(timeout=WAIT_SECONDS)


async def test_an_integrator_transfers_a_call_through_the_api(setup: Setup) -> None:
    async with ScriptedAgent(setup.console.url, "alice-token") as alice:
        (call,) = await setup.dep.place_calls(1)
        await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
        session = await setup.voice_agent.next_session(WAIT_SECONDS)
        assert setup.dep.system.ingress is not None
        url = f"{setup.dep.system.ingress.url}/v1/calls/{call.call_id}/transfer"
        body = {"queue": "support", "reason": "the agent asked", "context": {"topic": "delivery"}}
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with setup.dep.http.post(url, json=body, headers=headers) as response:
            assert response.status == 202
        entry = await alice.wait_for_call(call.call_id)
        assert (entry["queue"], entry["reason"], entry["context"]) == ("support", "the agent asked",
                                                                       {"topic": "delivery"})  # fmt: skip
        await session.wait_for(lambda: bool(session.control("stop")))  # the voice agent's stream ended
        await call.hangup()
        await alice.wait_gone(call.call_id)
        async with setup.dep.http.post(url, json={}, headers=headers) as response:
            assert response.status == 400  # a queue is required
