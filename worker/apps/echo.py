"""``echo``: the caller hears themself, 20 ms at a time. Proves the whole media path both ways."""

from __future__ import annotations

from worker.apps.api import Call

SAMPLE_RATE = 16000


async def echo(call: Call) -> None:
    # Same rate in and out: no resampling on the way back, the frame goes straight to the encoder.
    async for pcm in call.frames(SAMPLE_RATE):
        await call.send(pcm, SAMPLE_RATE)
