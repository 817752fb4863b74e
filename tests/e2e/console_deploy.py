"""What the console's browser tests share, whatever the browser: the deployment and the phone's ears.

A real ingress, a real worker whose app transfers every call to ``support`` after echoing half a second,
``callhook console`` as a process with three agents, and the simulator as Meta.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from simulator.calls import CallState
from simulator.local import Process, free_port, wait_ready
from simulator.signal import FREQUENCIES_HZ
from simulator.sim import SimulatedCall
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy

AGENTS = "alice:alice-token:support;bob:bob-token:support+sales;carol:carol-token:sales"
WORKER_ENV = {
    "CALLHOOK_APP": "tests.support.handoff_app:echo_then_transfer",
    "CALLHOOK_MEDIA_CONNECT_TIMEOUT_SECONDS": "5",
    "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5",
    "CALLHOOK_HANDOFF_HEARTBEAT_SECONDS": "0.5",
}
CONNECTED = "Connected: you are talking to the caller."
# In the page: the caller's audio (window.callhook.callerFrequency) is one of the phone's test tones.
HEARS_THE_PHONE_JS = (
    "[" + ",".join(str(f) for f in FREQUENCIES_HZ) + "]"
    ".some(f => Math.abs(window.callhook.callerFrequency - f) < 25)"
)


@asynccontextmanager
async def console_deployment(amqp_url: str, logs: Path) -> AsyncIterator[tuple[Deployment, Process]]:
    """The deployment and a ready ``callhook console`` process on 127.0.0.1 (its page at ``url + "/"``)."""
    async with deploy(amqp_url, logs, workers=1, worker_env=WORKER_ENV) as dep:
        port = free_port()
        env = dep.system.base_env() | {
            "CALLHOOK_CONSOLE_AGENTS": AGENTS,
            "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
            "CALLHOOK_CONSOLE_PORT": str(port),
        }
        console = dep.system._spawn("console", "console", env, port)
        try:
            await wait_ready(dep.http, console)
            yield dep, console
        finally:
            console.popen.terminate()
            console.popen.wait(10)


async def queued_call(dep: Deployment) -> SimulatedCall:
    call = await dep.place_calls(1)
    await call[0].wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
    return call[0]


def tail_frequency(call: SimulatedCall, seconds: float = 0.4) -> float:
    """The dominant frequency of the last ``seconds`` the phone heard (16 kHz analysis)."""
    heard = call.phone.recording().heard
    tail = heard[-int(16000 * seconds) :]
    if len(tail) < 1600 or float(np.sqrt(np.mean(tail**2))) < 0.01:
        return 0.0
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    return float(np.fft.rfftfreq(len(tail), 1 / 16000)[int(np.argmax(spectrum))])


async def heard_frequency(call: SimulatedCall) -> float:
    """:func:`tail_frequency` for :func:`tests.e2e.harness.poll`."""
    return tail_frequency(call)
