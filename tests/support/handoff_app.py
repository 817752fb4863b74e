"""Apps the handoff tests run in real workers (``CALLHOOK_APP=tests.support.handoff_app:<name>``)."""

from __future__ import annotations

from worker.apps.api import Call


async def echo_then_transfer(call: Call) -> None:
    """Echo half a second of the caller (an app doing its job), then hand the call to ``support``."""
    frames = 0
    async for pcm in call.frames():
        await call.send(pcm)
        frames += 1
        if frames >= 25:
            break
    await call.transfer("support", reason="asked for a person", context={"order": "A-42"})
