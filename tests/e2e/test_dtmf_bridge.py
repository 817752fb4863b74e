"""Keypad digits end to end through the voice-agent bridge: the phone presses keys, the agent gets ``dtmf``.

Its own module (each module has its own broker vhost): the worker's app is the bridge, in each protocol.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import WAIT_SECONDS, deploy
from tests.e2e.test_dtmf import TIMING, pressing
from tests.support.voice_agent import VoiceAgent

pytestmark = [pytest.mark.e2e]


@pytest.mark.parametrize("protocol", ["twilio", "pcm"])
async def test_the_voice_agent_gets_dtmf_messages(amqp_url: str, tmp_path: Path, protocol: str) -> None:
    async with VoiceAgent(protocol) as agent:
        env = {"CALLHOOK_APP": agent.url, "CALLHOOK_BRIDGE_PROTOCOL": protocol}
        async with deploy(amqp_url, tmp_path, workers=1, worker_env=env, timing=TIMING) as dep:
            [call] = await dep.place_calls(1)
            session = await agent.next_session(timeout_seconds=WAIT_SECONDS)
            await pressing(call, "123#")
            await session.wait_for(lambda: len(session.digits()) >= 4, timeout_seconds=WAIT_SECONDS)
            assert session.digits() == "123#"
            if protocol == "twilio":
                numbers = [int(m["sequenceNumber"]) for m in session.messages[1:]]
                assert numbers == list(range(1, len(numbers) + 1))  # numbered with the media
                assert session.control("dtmf")[0]["dtmf"] == {"track": "inbound_track", "digit": "1"}
            await call.hangup()
            await call.wait_ended(timeout=WAIT_SECONDS)
