"""The demo's handoff: a caller presses 0 in the IVR, waits in a queue, and a scripted agent answers.

A worker with ``CALLHOOK_APP=ivr:1=echo,0=transfer:support``, ``callhook console`` with one agent, and
:class:`simulator.agent.ScriptedAgent` doing what an agent's browser does (docs/handoff.md).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np

from simulator.agent import ScriptedAgent
from simulator.config import SimulatorConfig
from simulator.local import System, free_port, scrape, wait_ready
from simulator.signal import FREQUENCIES_HZ
from simulator.sim import Simulator

AGENT_TONE_HZ = 1750.0


async def handoff_call(amqp_url: str, config: SimulatorConfig, log_dir: Path) -> bool:
    print("\nhandoff: a caller presses 0 in the IVR and is put through to a person (callhook console)")
    graph_port = free_port()
    system = System(
        amqp_url, f"http://127.0.0.1:{graph_port}", log_dir, workers=1,
        worker_env={"CALLHOOK_APP": "ivr:1=echo,0=transfer:support"},
    )  # fmt: skip
    async with system:
        port = free_port()
        env = system.base_env() | {
            "CALLHOOK_CONSOLE_AGENTS": "demo-agent:demo-token:support",
            "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
            "CALLHOOK_CONSOLE_PORT": str(port),
        }
        console = system._spawn("console", "console", env, port)
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, console)
            print(f"  agent console at {console.url}/ (token demo-token while the demo runs)")
            async with (
                Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim,
                ScriptedAgent(console.url, "demo-token", tone_hz=AGENT_TONE_HZ) as agent,
            ):
                return await _call(sim, system, agent)
        finally:
            console.popen.terminate()
            console.popen.wait(10)


async def _call(sim: Simulator, system: System, agent: ScriptedAgent) -> bool:
    call = await sim.place_call(from_="15550109999", name="Needs a person")
    await call.wait_state("accepted", timeout=20)
    await asyncio.sleep(1.0)  # the caller hears the menu's beeps
    await call.phone.press("0")
    pressed = time.monotonic()
    entry = await agent.wait_for_call(call.call_id)
    print(f"  pressed 0: queued in {entry['queue']!r} ({entry['reason']}, digits {entry['digits']!r}); "
          "the caller hears hold music")  # fmt: skip
    await asyncio.sleep(2.0)  # a little hold music
    await agent.take(call.call_id)
    print(f"  the agent took the call {time.monotonic() - pressed:.1f} s after the 0")
    await asyncio.sleep(3.0)  # they talk
    heard = agent.dominant_frequency()
    agent_hears_caller = any(abs(heard - f) < 30 for f in FREQUENCIES_HZ)
    phone_tail = call.phone.recording().heard[-6400:]
    spectrum = np.abs(np.fft.rfft(phone_tail * np.hanning(len(phone_tail))))
    caller_hz = float(np.fft.rfftfreq(len(phone_tail), 1 / 16000)[int(np.argmax(spectrum))])
    caller_hears_agent = abs(caller_hz - AGENT_TONE_HZ) < 30
    yes = {True: "yes", False: "no"}
    print(f"  the agent hears the caller: {yes[agent_hears_caller]} ({heard:.0f} Hz); "
          f"the caller hears the agent: {yes[caller_hears_agent]} ({caller_hz:.0f} Hz)")  # fmt: skip
    await agent.hang_up()
    await call.wait_ended(timeout=20)
    terminates = [r.http_status for r in sim.journal.graph_requests("terminate", call.call_id)]
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, system.worker_processes[0])
    answered = sum(
        v for k, v in samples.items() if k.startswith("callhook_handoff_time_to_answer_seconds_count")
    )
    print(f"  the agent hung up: Meta got terminate {terminates}; the worker counted {answered:g} answered "
          "handoff (callhook_handoff_time_to_answer_seconds)")  # fmt: skip
    return agent_hears_caller and caller_hears_agent and terminates == [200]
