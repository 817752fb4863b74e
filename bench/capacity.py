"""Concurrent echo calls per worker process before audio breaks, with CPU and memory per call, against plain
aiortc peers doing the same echo in the same run.

Two targets, each a process of its own, each given the same calls in steps of ``--steps`` concurrent calls:

* **callhook**: ``callhook ingress`` + one ``callhook worker`` (echo app) on a private vhost. Each call comes
  in as a signed ``connect`` webhook through the ingress and RabbitMQ; the worker answers through a minimal
  Graph API served by this process (pre_accept hands its SDP to the phone, accept lets the phone talk).
* **stock aiortc** (baseline): ``bench/capacity.py --serve-baseline``, an aiortc answerer that echoes each
  call with aiortc's own ``MediaRelay`` (``pc.addTrack(relay.subscribe(track))``): decoder thread, frames,
  aiortc's encoder. Offers and answers travel over its stdin/stdout. No callhook code on the media path.

The phones live in this process, apart from both targets (the machine has two cores): real aiortc peers
shaped like Meta's side (ICE-lite offer, ICE-controlled, Opus 111), which send pre-encoded Opus packets of the
simulator's test signal paced at 50/s and count the RTP packets they receive without decoding them. So the
phone side costs little, and its own event-loop lag is reported to show it kept up.

A step *holds* when, over ``--window`` seconds, the phones received on average >= 49 frames/s each and the
target's event-loop lag p99 stayed <= 20 ms (callhook: its ``callhook_event_loop_lag_seconds`` histogram;
the baseline: the same probe, a 0.25 s sleep measured for lateness). CPU is the target process's user+system
time over the window (all threads), memory its RSS growth since it was idle; both per call. The capacity is
the last step that held; the verdict compares it with the baseline's.

    ./run bench capacity                              # or: uv run --frozen python bench/capacity.py
    uv run --frozen python bench/capacity.py --steps 10,20 --window 3          # a quick smoke run

Goal: >= 40 calls per core for a worker process, twice stock aiortc's.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
import numpy as np
import psutil
from _common import (
    REPO,
    LagProbe,
    histogram_quantile,
    machine,
    percentile,
    private_vhost,
    table,
)
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from callhook.ice import restrict_host_addresses
from simulator import payloads
from simulator import sdp as sdp_edit
from simulator.config import DEFAULT_NUMBER, DEFAULT_WABA_ID
from simulator.phone import make_ice_controlled
from simulator.signal import TestSignal
from tests.support.system import APP_SECRET, Process, System, free_port, scrape
from worker.audio import OpusEncoder

FRAMES_PER_SECOND = 50
MIN_FPS = 49.0
MAX_LAG_SECONDS = 0.020
LAG_METRIC = "callhook_event_loop_lag_seconds"
BASELINE_LAG_INTERVAL = 0.25  # the worker's probe interval (worker/health.py), for a like-for-like p99
GRAPH_VERSION = "v23.0"


# --------------------------------------------------------------------------------------------- the phones
def phone_payloads(seconds: float = 10.0) -> list[bytes]:
    """The simulator's test signal as Opus packets (16 kHz mono, ~24 kb/s like Meta's), encoded once."""
    rate = 16_000
    pcm = np.round(TestSignal(1).render(0, round(seconds * rate), rate) * 32767).astype("<i2").tobytes()
    encoder = OpusEncoder(rate, 24_000, complexity=5)
    step = encoder.frame_bytes
    return [bytes(encoder.encode(pcm[i : i + step])) for i in range(0, len(pcm) - step + 1, step)]


class PreencodedMic(MediaStreamTrack):
    """Ready Opus packets at 50/s from the moment the call may talk (aiortc only packetizes them)."""

    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self._packets = packets
        self.talking = asyncio.Event()
        self._start: float | None = None
        self._index = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        await self.talking.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._index / FRAMES_PER_SECOND - now
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        packet.pts = self._index * 960
        packet.time_base = fractions.Fraction(1, 48_000)
        self._index += 1
        return packet


class Phone:
    """One caller, shaped like Meta's side of the media; counts the business's RTP packets."""

    def __init__(self, packets: list[bytes]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = PreencodedMic(packets)
        make_ice_controlled(self.pc.addTrack(self.mic))
        self.received = 0
        self.answered = asyncio.Event()
        # A load generator, not a listener: the packets are counted and dropped before aiortc's jitter buffer
        # and decoder thread (bench-only seam on aiortc's receiver).
        self.pc.getTransceivers()[0].receiver._handle_rtp_packet = self._count  # type: ignore[method-assign]

    async def _count(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.received += 1

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return sdp_edit.meta_offer(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def start_talking(self) -> None:
        self.mic.talking.set()
        self.answered.set()

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()


# -------------------------------------------------------------------------------------------- the targets
class Target(Protocol):
    name: str
    pid: int

    async def add_call(self, phone: Phone) -> None: ...
    async def mark(self) -> None: ...
    async def lag_p99(self) -> float: ...


class MiniGraph:
    """The few Graph API calls a worker makes for an incoming call, answered at once; pre_accept hands the
    worker's SDP to the caller's phone, accept lets it talk (as Meta's relay would)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phones: dict[str, Phone] = {}
        self.ended: set[str] = set()
        self.arrivals: dict[tuple[str, str], float] = {}  # (call id, action) -> time.monotonic() of arrival
        self._app = web.Application()
        self._app.router.add_post("/{version}/{phone_number_id}/calls", self._calls)
        self._runner = web.AppRunner(self._app, access_log=None)

    async def __aenter__(self) -> MiniGraph:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _calls(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.json()
        action, call_id = body.get("action"), body.get("call_id")
        self.arrivals.setdefault((str(call_id), str(action)), arrived)
        phone = self.phones.get(call_id)
        if phone is None:
            return web.json_response({"error": {"code": 100, "message": "Invalid call_id"}}, status=400)
        if action == "pre_accept":
            await phone.accept_answer(body["session"]["sdp"])
        elif action == "accept":
            phone.start_talking()
        else:
            self.ended.add(call_id)
        return web.json_response({"messaging_product": "whatsapp", "success": True})


class Callhook:
    """``callhook ingress`` + one ``callhook worker``, calls coming in as signed webhooks."""

    name = "callhook"

    def __init__(self, system: System, graph: MiniGraph, http: aiohttp.ClientSession) -> None:
        self.system, self.graph, self.http = system, graph, http
        [self.worker] = system.worker_processes
        self.pid = self.worker.popen.pid
        self.calls: list[str] = []
        self._mark: dict[str, float] = {}

    async def add_call(self, phone: Phone) -> None:
        call_id = payloads.new_call_id()
        self.graph.phones[call_id] = phone
        offer = await phone.offer()
        user = payloads.Contact(f"1555{len(self.calls):07d}", "Bench Caller")
        update = payloads.call_connect(
            waba_id=DEFAULT_WABA_ID, number=DEFAULT_NUMBER, call_id=call_id, user=user,
            direction=payloads.USER_INITIATED, timestamp=int(time.time()), sdp_type="offer", sdp=offer,
        )  # fmt: skip
        await self._post(update)
        self.calls.append(call_id)
        async with asyncio.timeout(30):
            await phone.answered.wait()

    async def hang_up_all(self) -> None:
        for index, call_id in enumerate(self.calls):
            update = payloads.call_terminate(
                waba_id=DEFAULT_WABA_ID, number=DEFAULT_NUMBER, call_id=call_id,
                user=payloads.Contact(f"1555{index:07d}", "Bench Caller"), direction=payloads.USER_INITIATED,
                timestamp=int(time.time()), status="COMPLETED",
            )  # fmt: skip
            await self._post(update)

    async def _post(self, update: payloads.Update) -> None:
        body = payloads.encode(payloads.envelope([update]))
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": payloads.signature(body, APP_SECRET),
        }
        async with self.http.post(self.system.webhook_url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"ingress answered {response.status}")

    async def mark(self) -> None:
        self._mark = await scrape(self.http, self.worker)

    async def lag_p99(self) -> float:
        return histogram_quantile(self._mark, await scrape(self.http, self.worker), LAG_METRIC, 0.99)


class StockAiortc:
    """The baseline answerer process (this script with ``--serve-baseline``), driven over stdin/stdout."""

    name = "stock aiortc"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self._turn = asyncio.Lock()  # one request/reply at a time on the pipe

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        async with self._turn:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the baseline process exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def add_call(self, phone: Phone) -> None:
        answer = await self._ask({"offer": await phone.offer()})
        await phone.accept_answer(answer["answer"])
        phone.start_talking()

    async def mark(self) -> None:
        await self._ask({"mark": True})

    async def lag_p99(self) -> float:
        return float((await self._ask({"lag": True}))["p99"])

    async def close(self) -> None:
        await self._ask({"close": True})
        await self.process.wait()


# ---------------------------------------------------------------------------------------------- measuring
@dataclass
class Step:
    calls: int
    fps_mean: float
    fps_min: float
    lag_p99: float
    cpu_cores: float
    rss_per_call_mb: float
    phones_lag_p99: float
    threads: dict[str, float] = field(default_factory=dict)  # cores by thread group
    error: str | None = None

    @property
    def holds(self) -> bool:
        return self.error is None and self.fps_mean >= MIN_FPS and self.lag_p99 <= MAX_LAG_SECONDS

    @property
    def cpu_per_call_percent(self) -> float:
        return 100 * self.cpu_cores / self.calls


def thread_times(process: psutil.Process) -> dict[str, float]:
    """CPU seconds of the event-loop (main) thread and of all other threads together."""
    main = others = 0.0
    for thread in process.threads():
        busy = thread.user_time + thread.system_time
        if thread.id == process.pid:
            main += busy
        else:
            others += busy
    return {"event loop": main, "other threads": others}


async def measure(target: Target, phones: list[Phone], args: argparse.Namespace, rss_idle: float) -> Step:
    process = psutil.Process(target.pid)
    await asyncio.sleep(args.settle)  # let the new calls' audio settle: a scenario's pause, not a sync
    received = [p.received for p in phones]
    cpu = process.cpu_times()
    threads = thread_times(process)
    await target.mark()
    started = time.monotonic()
    async with LagProbe() as probe:
        await asyncio.sleep(args.window)  # the measuring window
    elapsed = time.monotonic() - started
    lag = await target.lag_p99()
    cpu_after = process.cpu_times()
    threads_after = thread_times(process)
    fps = [(p.received - r) / elapsed for p, r in zip(phones, received, strict=True)]
    busy = (cpu_after.user - cpu.user + cpu_after.system - cpu.system) / elapsed
    return Step(
        calls=len(phones),
        fps_mean=float(np.mean(fps)),
        fps_min=min(fps),
        lag_p99=lag,
        cpu_cores=busy,
        rss_per_call_mb=(process.memory_info().rss - rss_idle) / len(phones) / 2**20,
        phones_lag_p99=percentile(probe.samples, 99),
        threads={k: (threads_after[k] - threads[k]) / elapsed for k in threads},
    )


async def ramp(target: Target, packets: list[bytes], args: argparse.Namespace) -> list[Step]:
    """Add calls step by step until a step breaks (or the last step); every phone is closed at the end."""
    phones: list[Phone] = []
    steps: list[Step] = []
    rss_idle = psutil.Process(target.pid).memory_info().rss
    try:
        for count in args.steps:
            try:
                async with asyncio.timeout(60):
                    while len(phones) < count:
                        batch = [Phone(packets) for _ in range(min(args.batch, count - len(phones)))]
                        phones += batch
                        await asyncio.gather(*(target.add_call(p) for p in batch))
            except TimeoutError:
                nan = math.nan
                steps.append(Step(count, nan, nan, nan, nan, nan, nan, error="calls not answered in 60 s"))
                break
            step = await measure(target, phones, args, rss_idle)
            steps.append(step)
            print(f"  {target.name}: {row(step)}", flush=True)
            if not step.holds:
                break
    finally:
        await asyncio.gather(*(p.close() for p in phones), return_exceptions=True)
    return steps


def row(step: Step) -> str:
    if step.error:
        return f"{step.calls} calls: {step.error}"
    verdict = "holds" if step.holds else "BREAKS"
    return (
        f"{step.calls} calls: {step.fps_mean:.1f} frames/s (min {step.fps_min:.1f}), loop lag p99 "
        f"{step.lag_p99 * 1000:.0f} ms, {step.cpu_cores:.2f} cores, {verdict}"
    )


# ---------------------------------------------------------------------------------------------- the runs
@asynccontextmanager
async def echo_agent(protocol: str) -> AsyncIterator[int]:
    """An echoing voice agent in a process of its own (``bench/bridge.py --serve-agent``); yields its port.

    Its CPU is not the worker's: the capacity measured is the bridge's side only."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "bench" / "bridge.py"),
        "--serve-agent",
        protocol,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        yield int(await asyncio.wait_for(process.stdout.readline(), 30))
    finally:
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 10)


@asynccontextmanager
async def app_env(args: argparse.Namespace) -> AsyncIterator[dict[str, str]]:
    """The worker's app: echo, or the ``ws:`` voice-agent bridge to an echoing agent."""
    if args.app == "echo":
        yield {"CALLHOOK_APP": "echo"}
        return
    async with echo_agent(args.protocol) as port:
        yield {"CALLHOOK_APP": f"ws://127.0.0.1:{port}/agent", "CALLHOOK_BRIDGE_PROTOCOL": args.protocol}


@asynccontextmanager
async def callhook_target(args: argparse.Namespace) -> AsyncIterator[Callhook]:
    with (
        private_vhost("bench-capacity") as amqp_url,
        tempfile.TemporaryDirectory(prefix="bench-cap-") as logs,
    ):
        async with app_env(args) as env, _callhook_target(args, amqp_url, Path(logs), env) as target:
            yield target


@asynccontextmanager
async def _callhook_target(
    args: argparse.Namespace, amqp_url: str, logs: Path, app: dict[str, str]
) -> AsyncIterator[Callhook]:
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=logs,
        workers=0 if args.profile else 1,
        worker_env={
            "CALLHOOK_MAX_CALLS": "1000",
            "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5",
            "CALLHOOK_UVLOOP": "false" if args.no_uvloop else "true",
            **app,
        },
    )
    profile = logs / "worker.prof"
    async with system, MiniGraph(graph_port) as graph, aiohttp.ClientSession() as http:
        if args.profile:
            start_profiled_worker(system, profile)
            await system.wait_ready()
        target = Callhook(system, graph, http)
        try:
            yield target
        finally:
            await target.hang_up_all()
    if args.profile:  # written when the worker exited
        print_profile(profile)


def start_profiled_worker(system: System, output: Path) -> Process:
    """``callhook worker`` under cProfile (as System.start_worker would start it otherwise)."""
    port = free_port()
    env = system.base_env() | dict(system.worker_env)
    env |= {"CALLHOOK_METRICS_HOST": "127.0.0.1", "CALLHOOK_METRICS_PORT": str(port)}
    log_path = system.log_dir / "worker-profiled.log"
    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "callhook", "worker"]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    process = Process("worker-profiled", popen, port, log_path)
    system.worker_processes.append(process)
    return process


def print_profile(path: Path, top: int = 20) -> None:
    """Where the worker's event-loop thread spent its time (cProfile sees that thread only)."""
    if not path.exists():
        print("no profile written (the worker did not exit cleanly)")
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print("\nworker event-loop thread, by own time (cProfile, whole run incl. start-up and idle poll):")
    print(out.getvalue().split("\n", 6)[-1])


@asynccontextmanager
async def baseline_target() -> AsyncIterator[StockAiortc]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-baseline",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    target = StockAiortc(process)
    try:
        yield target
    finally:
        await target.close()


def capacity(steps: list[Step]) -> Step | None:
    held = [s for s in steps if s.holds]
    return held[-1] if held else None


def report(results: dict[str, list[Step]]) -> None:
    rows = []
    for name, steps in results.items():
        for s in steps:
            if s.error:
                rows.append([name, s.calls, s.error, "", "", "", "", "", ""])
                continue
            rows.append([
                name, s.calls, f"{s.fps_mean:.1f} / {s.fps_min:.1f}", f"{s.lag_p99 * 1000:.0f}",
                f"{s.cpu_cores:.2f}", f"{s.cpu_per_call_percent:.2f}", f"{s.rss_per_call_mb:.2f}",
                f"{s.phones_lag_p99 * 1000:.0f}", "holds" if s.holds else "BREAKS",
            ])  # fmt: skip
    print()
    headers = ["target", "calls", "frames/s mean/min", "lag p99 ms", "cores", "% core/call", "MB/call"]
    print(table([*headers, "phones lag p99 ms", ""], rows))
    ours, base = capacity(results["callhook"]), capacity(results["stock aiortc"])
    print()
    for name, best in (("callhook", ours), ("stock aiortc", base)):
        if best is None:
            print(f"{name}: no step held")
            continue
        where = ", ".join(f"{k} {v:.2f} cores" for k, v in best.threads.items())
        print(
            f"{name}: {best.calls} concurrent calls held in one process ({best.cpu_cores:.2f} cores used: "
            f"{where}); per call {best.cpu_per_call_percent:.2f} % of a core, {best.rss_per_call_mb:.2f} MB "
            f"(at that cost a fully used core would carry ~{100 / best.cpu_per_call_percent:.0f} calls)"
        )
        if results[name] and not results[name][-1].holds:
            print(f"  broke at {results[name][-1].calls} calls")
        else:
            print("  never broke within --steps: the capacity is at least this")
    if ours is not None and base is not None:
        print(f"\nratio callhook / stock aiortc: {ours.calls / base.calls:.1f}x the calls per process")
        # One worker process per core: a process's capacity is the capacity per core (a process that needs
        # more than a core for it is charged for every core it used).
        per_core = ours.calls / max(ours.cpu_cores, 1.0)
        met = per_core >= 40 and ours.calls >= 2 * base.calls
        print(
            f"goal >= 40 calls per core ({per_core:.0f}), twice stock aiortc: {'met' if met else 'NOT met'}"
        )


async def main(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])
    packets = phone_payloads()
    print(f"capacity bench: {machine()}")
    print(f"steps {args.steps}, {args.window:g} s window after {args.settle:g} s settling each\n")
    results: dict[str, list[Step]] = {"stock aiortc": []}
    if not args.only_callhook:
        async with baseline_target() as base:
            results["stock aiortc"] = await ramp(base, packets, args)
    async with callhook_target(args) as ours:
        results["callhook"] = await ramp(ours, packets, args)
    report(results)
    return 0


# ------------------------------------------------------------------------------------ the baseline process
async def serve_baseline() -> None:
    """Stock aiortc echo: answer each offer read from stdin; ``pc.addTrack(relay.subscribe(track))``."""
    restrict_host_addresses(["127.0.0.1"])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    relay = MediaRelay()
    pcs: list[RTCPeerConnection] = []

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async with LagProbe(BASELINE_LAG_INTERVAL) as probe:
        while line := await reader.readline():
            request = json.loads(line)
            if "offer" in request:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pcs.append(pc)
                pc.on("track", lambda track, pc=pc: pc.addTrack(relay.subscribe(track)))
                await pc.setRemoteDescription(RTCSessionDescription(sdp=request["offer"], type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                reply({"answer": pc.localDescription.sdp})
            elif "mark" in request:
                probe.reset()
                reply({"ok": True})
            elif "lag" in request:
                reply({"p99": percentile(probe.samples, 99), "samples": len(probe.samples)})
            elif "close" in request:
                await asyncio.gather(*(pc.close() for pc in pcs))
                reply({"closed": len(pcs)})
                return


def steps(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", default="5,10,15,20,30,40,50,60,80,100,120", type=steps, help="concurrent calls per step"
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per step")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after a step's calls are up")
    parser.add_argument("--batch", type=int, default=5, help="calls set up at once")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the worker under cProfile and print where its loop spends time",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="run the worker on asyncio's own loop")
    parser.add_argument(
        "--app",
        choices=("echo", "ws"),
        default="echo",
        help="the worker's app: echo, or the ws: voice-agent bridge to an echoing agent process",
    )
    parser.add_argument("--protocol", choices=("pcm", "twilio"), default="pcm", help="with --app ws")
    parser.add_argument("--only-callhook", action="store_true", help="skip the stock aiortc baseline")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.serve_baseline:
        asyncio.run(serve_baseline())
        sys.exit(0)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main(arguments)))
