"""The delay callhook's echo adds, heard at the phone's socket, on clean and impaired links, vs stock aiortc.

Each scenario runs two calls at once, from two simulated phones in this process (``simulator.phone.Phone``,
Meta-shaped offers, the test signal with a tone burst every 600 ms):

* **callhook**: a real ``MediaSession`` (the worker's media path) answering, the built-in ``echo`` app run on
  a ``MediaCall`` as the worker's session does after accept, in a process of its own;
* **stock**: a plain aiortc peer that answers the same kind of offer and sends the received track back
  through aiortc's own path (its jitter buffer, decoder thread and encoder): the baseline, in the same run,
  in a process of its own too.

The phone dates each burst's onset when the packet carrying it leaves for the network, and again in each
echoed RTP packet *as it arrives at its socket* (every packet's Opus decoded on its own, in arrival order;
not through the phone's own jitter buffer): the difference is the delay the business and the network add.
Scenarios, the network impairing the phone -> business direction (``--both``: both directions):

* **clean**: loopback as it is;
* **3 % loss + 30 ms jitter**: each datagram lost with 3 % probability, delayed by a uniform 0-30 ms (order
  kept);
* **after a 120 ms burst**: clean, then every datagram lost for 120 ms; the delay is reported before it, in
  the 2 s after it, and afterwards.

Printed: median and p90 delay, % of bursts heard, the ratios callhook / stock. The goals (issue 12): clean
<= 40 ms median, 3 % + 30 ms <= 80 ms with >= 99 % of bursts heard, back within 10 ms of clean within 2 s of
a burst, all below stock aiortc.

    ./run bench media_latency                       # or: uv run --frozen python bench/media_latency.py
    uv run --frozen python bench/media_latency.py --seconds 8 --scenarios clean    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from _common import machine, ms, percentile, table
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from callhook.ice import restrict_host_addresses
from simulator.heard import HeardLog
from simulator.net import LinkProfile, NetProfile, parse_link
from simulator.phone import Phone, PhoneSettings
from simulator.sdp import business_answer
from worker.apps.api import CallInfo, MediaCall
from worker.apps.loader import load_app
from worker.media import MediaSession, MediaSettings

WARMUP_SECONDS = 2.0
AFTER_BURST_SECONDS = 2.0
BURST_SECONDS = 0.12
SCENARIOS = {
    "clean": "clean",
    "loss3_jitter30": "loss=3%,jitter=30ms",
    "burst120": "clean",  # + one outage of BURST_SECONDS during the run
}
LABELS = {"clean": "clean", "loss3_jitter30": "3 % loss + 30 ms jitter", "burst120": "after a 120 ms burst"}


# ------------------------------------------------------------------------------------------ businesses
async def callhook_answer(offer: str, stack: contextlib.AsyncExitStack) -> tuple[str, Any]:
    """The worker's media path: MediaSession answers, the built-in echo app runs on its MediaCall."""
    media = await stack.enter_async_context(MediaSession(MediaSettings(silence_timeout_seconds=600)))
    answer = await media.answer(offer)

    async def run() -> None:
        await media.wait_connected(10)
        media.start_sending()

        async def hangup() -> None:
            pass

        info = CallInfo(call_id="bench", phone_number_id="bench", direction="incoming", user_number="1")
        await load_app("echo")(MediaCall(info, media, hangup))

    return answer, run


async def stock_answer(offer: str, stack: contextlib.AsyncExitStack) -> tuple[str, Any]:
    """Stock aiortc: answers the offer and sends the received track back through aiortc's own path."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    stack.push_async_callback(pc.close)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        pc.addTrack(track)

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())

    async def run() -> None:
        await asyncio.Event().wait()  # aiortc echoes on its own until the connection closes

    return business_answer(pc.localDescription.sdp), run


async def serve_business(kind: str) -> None:
    """``--serve-business KIND``: reads the phone's offer (one JSON line), prints the answer, echoes until
    stdin closes. Each business runs in a process of its own, so the phones' CPU is not the business's."""
    restrict_host_addresses(["127.0.0.1"])
    loop = asyncio.get_running_loop()
    offer = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    async with contextlib.AsyncExitStack() as stack:
        answer, run = await (callhook_answer if kind == "callhook" else stock_answer)(offer, stack)
        print(json.dumps(answer), flush=True)
        task = loop.create_task(run())
        await loop.run_in_executor(None, sys.stdin.read)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def business_process(kind: str, phone: Phone) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-business",
        kind,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(json.dumps(await phone.create_offer()).encode() + b"\n")
        await process.stdin.drain()
        answer = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        await phone.accept_answer(answer)
        yield
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# --------------------------------------------------------------------------------------------- a run
@dataclass
class Window:
    delays: list[float] = field(default_factory=list)
    sent: int = 0

    @property
    def heard(self) -> float:
        return len(self.delays) / self.sent if self.sent else math.nan


@dataclass
class Result:
    scenario: str
    target: str
    windows: dict[str, Window]
    up_lost: int
    up_datagrams: int


def window(log: HeardLog, start: float, end: float) -> Window:
    delays = [d for s, d in log.delays() if start <= s < end]
    return Window(delays, sum(1 for s in log.sent.onsets if start <= s < end))


async def run_scenario(name: str, seconds: float, both: bool) -> list[Result]:
    link = parse_link(SCENARIOS[name])
    net = NetProfile(up=link, down=link if both else LinkProfile())
    settings = PhoneSettings(
        start_silence_seconds=600, midcall_silence_seconds=600, record_seconds=0, net=net
    )
    phones = {"callhook": Phone(settings), "stock": Phone(settings)}
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        for phone in phones.values():
            stack.push_async_callback(phone.close)
        for kind, phone in phones.items():
            await stack.enter_async_context(business_process(kind, phone))
        for phone in phones.values():
            assert await phone.wait_connected(10), "media did not connect"
        tasks = [loop.create_task(p.run_media()) for p in phones.values()]
        for phone in phones.values():
            phone.start_talking()
        await asyncio.sleep(WARMUP_SECONDS)  # both echoes running; the bench's pacing
        start = loop.time()
        windows: dict[str, tuple[float, float]]
        if name == "burst120":
            before = max(2.0, min(6.0, seconds / 3))  # clean before; the burst; 2 s after; the rest
            await asyncio.sleep(before)
            burst = loop.time()
            for phone in phones.values():
                phone.net.up.outage(BURST_SECONDS)
                if both:
                    phone.net.down.outage(BURST_SECONDS)
            await asyncio.sleep(seconds - before)
            end = loop.time()
            windows = {
                "before": (start, burst),
                "2 s after": (burst, burst + AFTER_BURST_SECONDS),
                "afterwards": (burst + AFTER_BURST_SECONDS, end),
            }
        else:
            await asyncio.sleep(seconds)
            end = loop.time()
            windows = {"all": (start, end)}
        await asyncio.sleep(2.0)  # the last bursts come back
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # loop.time() is time.monotonic() under asyncio's default loop: the phone's clock.
    return [
        Result(
            name,
            target,
            {label: window(phone.heard_log, lo, hi) for label, (lo, hi) in windows.items()},
            phone.net.up.stats.lost,
            phone.net.up.stats.datagrams,
        )
        for target, phone in phones.items()
    ]


def report(results: list[Result]) -> str:
    rows = []
    by_key = {(r.scenario, r.target, w): win for r in results for w, win in r.windows.items()}
    for r in results:
        for label, win in r.windows.items():
            stock = by_key.get((r.scenario, "stock", label), Window())
            p50, p90 = percentile(win.delays, 50), percentile(win.delays, 90)
            s50, s90 = percentile(stock.delays, 50), percentile(stock.delays, 90)
            ratio50 = f"{p50 / s50:.2f}" if r.target == "callhook" and s50 > 0 else "-"
            ratio90 = f"{p90 / s90:.2f}" if r.target == "callhook" and s90 > 0 else "-"
            rows.append(
                [
                    LABELS[r.scenario],
                    label,
                    r.target,
                    ms(p50),
                    ms(p90),
                    f"{100 * win.heard:.0f} % ({len(win.delays)}/{win.sent})",
                    ratio50,
                    ratio90,
                    f"{r.up_lost}/{r.up_datagrams}",
                ]
            )
    headers = ["network phone->business", "window", "echo", "p50 ms", "p90 ms", "bursts heard"]
    headers += ["p50 callhook/stock", "p90 callhook/stock", "datagrams lost up"]
    return table(headers, rows)


async def main(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])
    print(f"{machine()}; {args.seconds:.0f} s measured per scenario, both echoes at once\n")
    results: list[Result] = []
    for name in args.scenarios:
        results += await run_scenario(name, args.seconds, args.both)
    print(report(results))
    print(
        "\ndelay: a tone burst's onset leaving the phone's socket -> its echo's onset in an RTP packet as"
        " it arrived there (decoded per packet, no phone jitter buffer); median and p90 over"
        " bursts.\nratios < 1: callhook adds less delay than stock aiortc echoing the same kind of phone"
        " in the same run."
    )
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="measured seconds per scenario (default 20)"
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument(
        "--both", action="store_true", help="impair both directions, not only phone -> business"
    )
    parser.add_argument("--serve-business", choices=["callhook", "stock"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.serve_business:
        asyncio.run(serve_business(arguments.serve_business))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
