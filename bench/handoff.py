"""What handing a call to a person costs: the relay's added delay and CPU, against the echo path, same run.

One real worker at a time (app ``ivr:1=echo,0=transfer:support``), ``callhook console`` and the simulator as
Meta, all on 127.0.0.1. Four phases, ``--calls`` calls each, measured for ``--seconds``:

* **echo**: the phones press 1; the caller's voice goes phone -> worker -> phone (the baseline).
* **relay, forwarded**: the phones press 0; a scripted agent (``simulator/agent.py``: an aiortc peer on the
  console's WebSocket, as a browser would be) takes each call; the caller's voice goes phone -> worker ->
  agent, its Opus packets forwarded as they arrive (``CALLHOOK_HANDOFF_FORWARD_OPUS=true``, the default).
* then the worker is replaced by one with ``CALLHOOK_HANDOFF_FORWARD_OPUS=false``: **echo** again (the
  baseline of the second worker process) and **relay, transcoded** (decode + PCM + encode on the tick).

Which relay mode each relay phase really ran in is read from the worker's
``callhook_handoff_relays_total{mode}``.

Delay: the phone's test signal is tone bursts; each burst is dated as it leaves the phone's socket
(``Phone.heard_log.sent``) and again where it is heard (the first loud sample after quiet, in the decoded
frames of the phone's or the agent's aiortc receiver, by their arrival time), matched by its tone.

Both paths cross the network twice and end in one stock aiortc receiver (the phone's, the agent's), so
*added* = relay - echo is what the second leg costs over the echo app (each relay against the echo of its own
worker process). CPU: the worker process's user+system time over the window, per call per second, as ratios
against the echo of the same worker (phones, console and agents run in this process or their own and are not
counted).

    ./run bench handoff                            # or: uv run --frozen python bench/handoff.py
    uv run --frozen python bench/handoff.py --calls 2 --seconds 4      # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from _common import machine, ms, private_vhost, table

from simulator.agent import ScriptedAgent
from simulator.calls import CallState
from simulator.config import CallTiming, SimulatorConfig
from simulator.heard import OnsetDetector, same_tone
from simulator.local import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, scrape, wait_ready
from simulator.sim import SimulatedCall, Simulator

APP = "ivr:1=echo,0=transfer:support"


async def press(call: SimulatedCall, key: str) -> None:
    await call.wait_state(CallState.ACCEPTED, timeout=20)
    async with asyncio.timeout(10):
        # The phone's audio flows (its key presses need a stream); nothing announces it: probe.
        while call.phone.rtp.ssrc is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await call.phone.press(key)


def burst_delays(call: SimulatedCall, frames: list[np.ndarray], arrivals: list[float]) -> list[float]:
    """Each tone burst heard (16 kHz frames with their arrival times) against the same burst leaving the
    phone's socket (``Phone.heard_log.sent``): the caller's voice from the phone's socket to the ear."""
    call.phone.heard_report()  # settles the sent bursts' tones
    sent = call.phone.heard_log.sent
    ear = OnsetDetector(16000)
    for samples, arrived in zip(frames, arrivals, strict=True):
        ear.feed((samples / 32768.0).astype(np.float32), complete_at=arrived)
    delays = []
    for onset, tone in zip(ear.onsets, ear.tones, strict=True):
        candidates = [
            onset - s for s, t in zip(sent.onsets, sent.tones, strict=True)
            if 0 < onset - s < 1.0 and not math.isnan(t) and same_tone(tone, t)
        ]  # fmt: skip
        if candidates:
            delays.append(min(candidates))
    return delays


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def echo_phase(sim: Simulator, worker: psutil.Process, calls: int, seconds: float) -> dict[str, float]:
    placed = [await sim.place_call(from_=f"1555100{i:04d}") for i in range(calls)]
    await asyncio.gather(*(press(c, "1") for c in placed))
    await asyncio.sleep(1.5)  # the menu stops, the echo starts: warm-up, not synchronisation
    before = cpu_seconds(worker)
    await asyncio.sleep(seconds)  # the measured window
    used = cpu_seconds(worker) - before
    delays = []
    for call in placed:
        ears = (
            call.phone._ears
        )  # the phone's frames as heard, 16 kHz, with arrival times (its aiortc receiver)
        delays.append(statistics.median(burst_delays(call, ears.chunks, ears.arrivals) or [math.nan]))
        await call.hangup()
    measured = [d for d in delays if not math.isnan(d)]
    return {"delay": statistics.median(measured) if measured else math.nan, "cpu": used / (calls * seconds),
            "measured": len(measured)}  # fmt: skip


async def relay_phase(
    sim: Simulator, worker: psutil.Process, console_url: str, calls: int, seconds: float
) -> dict[str, float]:
    placed = [await sim.place_call(from_=f"1555200{i:04d}") for i in range(calls)]
    async with contextlib.AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(ScriptedAgent(console_url, "bench-token")) for _ in range(calls)
        ]
        await asyncio.gather(*(press(c, "0") for c in placed))
        for call, agent in zip(placed, agents, strict=True):
            await agent.wait_for_call(call.call_id)
            await agent.take(call.call_id)
        await asyncio.sleep(1.5)  # the agents' legs connect: warm-up
        before = cpu_seconds(worker)
        await asyncio.sleep(seconds)
        used = cpu_seconds(worker) - before
        delays = [
            statistics.median(burst_delays(call, agent.heard, agent.heard_times) or [math.nan])
            for call, agent in zip(placed, agents, strict=True)
        ]
        for agent in agents:
            await agent.hang_up()
    measured = [d for d in delays if not math.isnan(d)]
    return {"delay": statistics.median(measured) if measured else math.nan, "cpu": used / (calls * seconds),
            "measured": len(measured)}  # fmt: skip


async def relays_by_mode(worker: Process) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, worker)
    return {
        mode: samples.get(f'callhook_handoff_relays_total{{mode="{mode}"}}', 0.0)
        for mode in ("forwarded", "transcoded")
    }


async def relay_mode_phase(
    sim: Simulator, worker: Process, console_url: str, calls: int, seconds: float, mode: str
) -> dict[str, float]:
    before = await relays_by_mode(worker)
    result = await relay_phase(sim, psutil.Process(worker.popen.pid), console_url, calls, seconds)
    after = await relays_by_mode(worker)
    ran = {m: after[m] - before[m] for m in after}
    if ran[mode] != calls:
        raise SystemExit(f"the {mode} phase ran relays {ran}, not {calls} {mode}")
    return result


async def replace_worker(system: System, **env: str) -> Process:
    for old in system.worker_processes:
        old.signal(signal.SIGTERM)
        await asyncio.to_thread(old.wait_exit, 30)
    system.worker_processes.clear()
    worker = system.start_worker(**env)
    await system.wait_ready()
    return worker


async def main(args: argparse.Namespace) -> int:
    print(f"# bench/handoff.py: {machine()}; {args.calls} calls per phase, {args.seconds} s measured")
    with private_vhost("bench-handoff") as amqp_url, tempfile.TemporaryDirectory() as logs:
        graph_port = free_port()
        system = System(
            amqp_url=amqp_url, graph_url=f"http://127.0.0.1:{graph_port}", log_dir=Path(logs), workers=1,
            worker_env={"CALLHOOK_APP": APP, "CALLHOOK_HANDOFF_ANNOUNCE_POSITION": "false"},
        )  # fmt: skip
        config = SimulatorConfig(
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            ice_host_addresses=("127.0.0.1",),
            timing=CallTiming(start_silence_seconds=30.0, midcall_silence_seconds=30.0),
        )
        async with system:
            port = free_port()
            env = system.base_env() | {
                "CALLHOOK_CONSOLE_AGENTS": "bench:bench-token:*",
                "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
                "CALLHOOK_CONSOLE_PORT": str(port),
            }
            console = system._spawn("console", "console", env, port)
            try:
                async with aiohttp.ClientSession() as http:
                    await wait_ready(http, console)
                async with Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
                    n, s = args.calls, args.seconds
                    worker = system.worker_processes[0]
                    echo = await echo_phase(sim, psutil.Process(worker.popen.pid), n, s)
                    forwarded = await relay_mode_phase(sim, worker, console.url, n, s, "forwarded")
                    worker = await replace_worker(system, CALLHOOK_HANDOFF_FORWARD_OPUS="false")
                    echo2 = await echo_phase(sim, psutil.Process(worker.popen.pid), n, s)
                    transcoded = await relay_mode_phase(sim, worker, console.url, n, s, "transcoded")
            finally:
                console.popen.terminate()
                console.popen.wait(10)
    report(echo, forwarded, echo2, transcoded)
    return 0


def ratio(value: float, baseline: float) -> str:
    return "-" if math.isnan(value) or math.isnan(baseline) or baseline <= 0 else f"{value / baseline:.2f}x"


def report(
    echo: dict[str, float], forwarded: dict[str, float], echo2: dict[str, float], transcoded: dict[str, float]
) -> None:
    rows = []
    for name, phase, baseline in (
        ("echo: phone -> worker -> phone (worker 1)", echo, echo),
        ("relay, forwarded: phone -> worker -> agent (worker 1)", forwarded, echo),
        ("echo: phone -> worker -> phone (worker 2)", echo2, echo2),
        ("relay, transcoded: phone -> worker -> agent (worker 2)", transcoded, echo2),
    ):
        rows.append([
            name, ms(phase["delay"]), ms(phase["delay"] - baseline["delay"]),
            f"{phase['cpu'] * 100:.2f} %", ratio(phase["cpu"], baseline["cpu"]), int(phase["measured"]),
        ])  # fmt: skip
    headers = [
        "path",
        "delay ms (median)",
        "vs its echo ms",
        "worker CPU per call",
        "CPU vs its echo",
        "calls",
    ]
    print(table(headers, rows))
    added = (ms(forwarded["delay"] - echo["delay"]), ms(transcoded["delay"] - echo2["delay"]))
    print(
        f"forwarded against transcoded: CPU per call {ratio(forwarded['cpu'], transcoded['cpu'])}; "
        f"added delay {added[0]} vs {added[1]} ms"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
