"""Latency and CPU the voice-agent bridge adds to a call, against the echo app on the same media path.

``--calls`` concurrent calls are set up once: a phone (a real aiortc peer shaped like Meta's,
``tests/fixtures/meta_peer.py``) answered by a real ``MediaSession``, the app run on a ``MediaCall`` exactly
as the worker's session does after accept. The same calls then run each *phase* in turn, ``--seconds``
measured after a 1 s warm-up:

* **echo**: the built-in ``echo`` behaviour (the caller's frames straight back), the bursts dated where the
  app receives them;
* **ws twilio** / **ws pcm**: the bridge (``ws://…``) to an agent that echoes every media message back at
  once. The agent runs in another process (``--serve-agent``), so its CPU is not counted as the bridge's;
* echo again after each bridge phase: every bridge phase is compared with the echo phases on either side.

Every phone sends a 1 kHz burst of 120 ms every 600 ms (calls staggered) and dates, to the sample, when each
burst left its microphone and when its echo came back (first sample over a threshold; a frame's samples are
dated back from the moment the frame was complete). The app or agent dates the burst's arrival the same way,
so a round trip splits into *up* (phone → app/agent) and *down* (back to the phone). Timestamps are
CLOCK_MONOTONIC, shared by the processes of one machine. *added* pairs each call with itself: its median
round trip in the phase minus the mean of its medians in the echo phases before and after, median over the
calls.

Reading the figures: *down* includes the phone's own aiortc jitter buffer, which grows for good after one
lost packet (aiortc-notes.md, trap 5); on a busy machine the echo phases drift apart, and then only the
*up* leg compares cleanly. Audio leaves in 20 ms packets, so any delay on the way back can
cost a whole packet time, depending on where a call's frames fall against the sender's 20 ms tick.

CPU: this process's user+system time (all threads: phones, media, apps) over the window, per call; the
phones and media cost the same in every phase, so the difference to echo is the bridge's. The agent process
is shown apart.

    ./run bench bridge                                     # or: uv run --frozen python bench/bridge.py
    uv run --frozen python bench/bridge.py --calls 2 --seconds 3                # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fractions
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from _common import machine, ms, percentile, table
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaPhone
from tests.support.voice_agent import mulaw_decode
from worker import audio
from worker.apps.api import CallInfo, MediaCall
from worker.apps.bridge_config import BridgeSettings
from worker.apps.loader import load_app
from worker.media import MediaSession, MediaSettings

PHONE_RATE = 48000
PERIOD_SECONDS = 0.6
BURST_SECONDS = 0.12
TONE_HZ = 1000.0
THRESHOLD = 3000  # a sample this loud starts a burst (the tone peaks near 9800)
QUIET_FRAMES = 3  # frames under the threshold that end a burst


class OnsetDetector:
    """Dates the first loud sample of each burst in a stream of 20 ms frames."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.onsets: list[float] = []
        self._quiet = QUIET_FRAMES

    def feed(self, pcm: bytes, complete_at: float) -> None:
        samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
        loud = np.flatnonzero(samples > THRESHOLD)
        if loud.size == 0:
            self._quiet += 1
            return
        if self._quiet >= QUIET_FRAMES:
            self.onsets.append(complete_at - (samples.size - int(loud[0])) / self.rate)
        self._quiet = 0


# ---------------------------------------------------------------------------------------------- the phone
class BurstMicrophone(MediaStreamTrack):
    """The phone's microphone: 1 kHz bursts on a fixed schedule (``offset`` staggers calls), dated."""

    kind = "audio"

    def __init__(self, offset_seconds: float) -> None:
        super().__init__()
        self._offset = round(offset_seconds * PHONE_RATE)
        self._samples = audio.frame_samples(PHONE_RATE)
        self._pts = 0
        self._start: float | None = None
        self.onsets: list[float] = []

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / PHONE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        # Sample -1 (the previous frame's last) too, to see a burst that starts on this frame's first sample.
        t = (np.arange(-1, self._samples) + self._pts + self._offset) / PHONE_RATE
        on = (t % PERIOD_SECONDS) < BURST_SECONDS
        wave = np.where(on[1:], 0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t[1:]), 0).astype("<i2")
        frame = audio.pcm_frame(wave.tobytes(), PHONE_RATE)
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, PHONE_RATE)
        self._pts += self._samples
        now = time.monotonic()  # the frame is complete now: its last sample is "now"
        starts = np.flatnonzero(on[1:] & ~on[:-1])
        self.onsets += [now - (self._samples - int(i)) / PHONE_RATE for i in starts]
        return frame


class BenchPhone(MetaPhone):
    def __init__(self, offset_seconds: float) -> None:
        super().__init__()
        self.burst_mic = BurstMicrophone(offset_seconds)
        self.transceiver.sender.replaceTrack(self.burst_mic)
        self.heard_onsets = OnsetDetector(16000)
        self._listener: asyncio.Task[None] | None = None

    async def accept_answer(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        track = self.transceiver.receiver.track
        resampler = audio.Resampler(16000)

        async def listen() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    self.heard_onsets.feed(resampler.frame(frame), time.monotonic())

        self._listener = asyncio.get_running_loop().create_task(listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await super().close()


# ---------------------------------------------------------------------------------------------- the agent
async def serve_agent(protocol: str) -> None:
    """An echoing agent (``--serve-agent``): prints its port, serves until stdin closes."""
    from aiohttp import WSMsgType, web

    onsets: dict[str, list[float]] = {}

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        detector = OnsetDetector(8000 if protocol == "twilio" else 16000)
        async for message in ws:
            now = time.monotonic()
            if message.type is WSMsgType.BINARY:
                detector.feed(message.data, now)
                await ws.send_bytes(message.data)
                continue
            if message.type is not WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            if event.get("event") == "start":
                onsets[event["start"]["callSid"]] = detector.onsets
            elif event.get("type") == "start":
                onsets[event["call"]["call_id"]] = detector.onsets
            elif event.get("event") == "media":
                detector.feed(mulaw_decode(base64.b64decode(event["media"]["payload"])), now)
                reply = {"event": "media", "streamSid": event["streamSid"], "media": event["media"]}
                await ws.send_str(json.dumps(reply))
        return ws

    async def results(request: web.Request) -> web.Response:
        return web.json_response({**onsets, "cpu_seconds": sum(os.times()[:2])})

    app = web.Application()
    app.router.add_get("/agent", stream)
    app.router.add_get("/results", results)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


@contextlib.asynccontextmanager
async def agent_process(protocol: str) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-agent",
        protocol,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        port = int(await asyncio.wait_for(process.stdout.readline(), 30))
        yield port
    finally:
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 10)


async def agent_results(port: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/results") as response:
        response.raise_for_status()
        result: dict[str, Any] = await response.json()
        return result


# ------------------------------------------------------------------------------------ echo, observed
def observed_echo(onsets: dict[str, list[float]]) -> Any:
    """``echo``, dating the bursts as the app gets them (the same place the bridge's agent sees them)."""

    async def app(call: Any) -> None:
        detector = OnsetDetector(16000)
        onsets[call.info.call_id] = detector.onsets
        async for pcm in call.frames(16000):
            detector.feed(pcm, time.monotonic())
            await call.send(pcm, 16000)

    return app


# -------------------------------------------------------------------------------------------- phases
@dataclass
class Phase:
    name: str
    calls: int
    seconds: float = math.nan
    rtt: list[float] = field(default_factory=list)
    up: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    rtt_by_call: dict[str, float] = field(default_factory=dict)  # each call's median round trip
    cpu_seconds: float = math.nan
    agent_cpu_seconds: float = math.nan
    bursts_sent: int = 0

    def cpu_per_call(self) -> float:
        """Share of one core per call."""
        return self.cpu_seconds / self.seconds / self.calls

    def agent_cpu_per_call(self) -> float:
        return self.agent_cpu_seconds / self.seconds / self.calls


def match(sent: list[float], arrived: list[float]) -> list[tuple[float, float]]:
    """Each arrival with the latest burst sent before it (less than a period before)."""
    pairs = []
    for at in arrived:
        earlier = [s for s in sent if s < at and at - s < PERIOD_SECONDS]
        if earlier:
            pairs.append((earlier[-1], at))
    return pairs


@dataclass
class Call:
    info: CallInfo
    phone: BenchPhone
    call: MediaCall


async def open_calls(stack: contextlib.AsyncExitStack, count: int) -> list[Call]:
    calls = []
    for i in range(count):
        info = CallInfo(call_id=f"c{i}", phone_number_id="bench", direction="incoming", user_number="1")
        phone = BenchPhone(offset_seconds=i * PERIOD_SECONDS / count)
        stack.push_async_callback(phone.close)
        media = await stack.enter_async_context(MediaSession(MediaSettings(silence_timeout_seconds=600)))
        await phone.accept_answer(await media.answer(await phone.offer()))
        await media.wait_connected(10)
        media.start_sending()

        async def hangup() -> None:
            pass

        calls.append(Call(info, phone, MediaCall(info, media, hangup)))
    return calls


async def run_phase(name: str, calls: list[Call], seconds: float, agent_port: int | None) -> Phase:
    """Every call runs the phase's app for a warm-up and ``seconds`` measured, then the app is stopped."""
    at_app: dict[str, list[float]] = {}
    if agent_port is None:
        apps = [observed_echo(at_app)(c.call) for c in calls]
    else:
        protocol = name.split()[-1]
        bridge = load_app(
            f"ws://127.0.0.1:{agent_port}/agent", bridge_settings=BridgeSettings(protocol=protocol)
        )
        apps = [bridge(c.call) for c in calls]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(app) for app in apps]
    await asyncio.sleep(1.0)  # warm-up: the agent connected, the pipeline full
    started, cpu_before = time.monotonic(), time.process_time()
    agent_before = (await agent_results(agent_port))["cpu_seconds"] if agent_port else 0.0
    await asyncio.sleep(seconds)
    ended, cpu_after = time.monotonic(), time.process_time()
    await asyncio.sleep(PERIOD_SECONDS)  # the last bursts come back
    arrivals = await agent_results(agent_port) if agent_port else at_app
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    phase = Phase(name, len(calls), ended - started, cpu_seconds=cpu_after - cpu_before)
    if agent_port:
        phase.agent_cpu_seconds = arrivals["cpu_seconds"] - agent_before
    for c in calls:
        sent = [s for s in c.phone.burst_mic.onsets if started <= s < ended]
        phase.bursts_sent += len(sent)
        rtt = [b - a for a, b in match(sent, c.phone.heard_onsets.onsets)]
        phase.rtt += rtt
        if rtt:
            phase.rtt_by_call[c.info.call_id] = percentile(rtt, 50)
        at_middle = arrivals.get(c.info.call_id, [])
        phase.up += [b - a for a, b in match(sent, at_middle)]
        phase.down += [b - a for a, b in match(at_middle, c.phone.heard_onsets.onsets)]
    return phase


def paired_added(phase: Phase, before: Phase, after: Phase) -> float:
    """Median over calls of (the call's median round trip in ``phase`` - the mean of its medians in the echo
    phases just before and after): the same call and phone, drift over the run averaged out."""
    diffs = [
        rtt - (before.rtt_by_call[call] + after.rtt_by_call[call]) / 2
        for call, rtt in phase.rtt_by_call.items()
        if call in before.rtt_by_call and call in after.rtt_by_call
    ]
    return percentile(diffs, 50)


# ------------------------------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])
    print(f"{machine()}; {args.calls} concurrent calls, {args.seconds:.0f} s measured per phase\n")
    async with contextlib.AsyncExitStack() as stack:
        ports = {p: await stack.enter_async_context(agent_process(p)) for p in args.protocols}
        calls = await open_calls(stack, args.calls)
        # Every bridge phase between two echo phases: echo, ws twilio, echo, ws pcm, echo.
        phases = [await run_phase("echo", calls, args.seconds, None)]
        for protocol in args.protocols:
            phases.append(await run_phase(f"ws {protocol}", calls, args.seconds, ports[protocol]))
            phases.append(await run_phase("echo", calls, args.seconds, None))
    print(report(phases))
    return 0


def report(phases: list[Phase]) -> str:
    rows = []
    for i, p in enumerate(phases):
        bridged = p.name != "echo"
        before, after = (phases[i - 1], phases[i + 1]) if bridged else (p, p)
        echo_cpu = (before.cpu_per_call() + after.cpu_per_call()) / 2
        rows.append(
            [
                p.name,
                f"{len(p.rtt)}/{p.bursts_sent}",
                ms(percentile(p.rtt, 50)),
                ms(percentile(p.rtt, 95)),
                ms(percentile(p.up, 50)),
                ms(percentile(p.down, 50)),
                ms(paired_added(p, before, after)) if bridged else "-",
                f"{100 * p.cpu_per_call():.2f}",
                f"{100 * (p.cpu_per_call() - echo_cpu):+.2f}" if bridged else "-",
                f"{p.cpu_per_call() / echo_cpu:.2f}x" if bridged else "-",
                f"{100 * p.agent_cpu_per_call():.2f}" if bridged else "-",
            ]
        )
    headers = [
        "phase",
        "bursts back",
        "rtt p50 ms",
        "rtt p95 ms",
        "up p50",
        "down p50",
        "added ms",
        "cpu %core/call",
        "added",
        "vs echo",
        "agent %core/call",
    ]
    return (
        table(headers, rows)
        + "\n\nrtt: phone microphone -> app -> phone speaker; up: phone -> app (echo) or agent; down: back."
        + "\nadded: per call, its median rtt minus the mean of its medians in the echo phases around;"
        + " median over calls."
        + "\ncpu: this process (phones, media, app) per call; 'added' and 'vs echo' against the echo"
        + " phases around."
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10, help="concurrent calls per scenario (default 10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--protocols", nargs="+", default=["twilio", "pcm"], choices=["twilio", "pcm"])
    parser.add_argument("--serve-agent", choices=["twilio", "pcm"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.serve_agent:
        asyncio.run(serve_agent(arguments.serve_agent))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
