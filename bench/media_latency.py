"""The delay callhook's echo adds, heard at the phone's socket, on clean and impaired links, vs stock aiortc.

Each scenario runs two calls at once in this process, from two simulated phones (``simulator.phone.Phone``,
Meta-shaped offers, the test signal with a tone burst every 600 ms):

* **callhook**: a real ``MediaSession`` (the worker's media path) answering, the built-in ``echo`` app run on
  a ``MediaCall`` as the worker's session does after accept;
* **stock**: a plain aiortc peer that answers the same kind of offer and sends the received track back
  through aiortc's own path (its jitter buffer, decoder thread and encoder): the baseline, in the same run.

The phone dates each burst's onset as it leaves its microphone and again in each echoed RTP packet *as it
arrives at its socket* (every packet's Opus decoded on its own, in arrival order; not through the phone's own
jitter buffer): the difference is the delay the business adds, plus the phone's encoder and the network.
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
import math
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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
@contextlib.asynccontextmanager
async def callhook_echo(phone: Phone, name: str) -> AsyncIterator[None]:
    """The worker's media path: MediaSession answers, the built-in echo app runs on its MediaCall."""
    async with MediaSession(MediaSettings(silence_timeout_seconds=600)) as media:
        await phone.accept_answer(await media.answer(await phone.create_offer()))
        await media.wait_connected(10)
        media.start_sending()

        async def hangup() -> None:
            pass

        info = CallInfo(call_id=name, phone_number_id="bench", direction="incoming", user_number="1")
        task = asyncio.get_running_loop().create_task(load_app("echo")(MediaCall(info, media, hangup)))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def stock_echo(phone: Phone) -> AsyncIterator[None]:
    """Stock aiortc: answers the offer and sends the received track back through aiortc's own path."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=await phone.create_offer(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await phone.accept_answer(business_answer(pc.localDescription.sdp))
        yield
    finally:
        await pc.close()


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
        await stack.enter_async_context(callhook_echo(phones["callhook"], name))
        await stack.enter_async_context(stock_echo(phones["stock"]))
        for phone in phones.values():
            assert await phone.wait_connected(10), "media did not connect"
        tasks = [loop.create_task(p.run_media()) for p in phones.values()]
        for phone in phones.values():
            phone.start_talking()
        await asyncio.sleep(WARMUP_SECONDS)  # both echoes running; the bench's pacing
        start = loop.time()
        windows: dict[str, tuple[float, float]]
        if name == "burst120":
            before = max(2.0, seconds - AFTER_BURST_SECONDS - 4.0)
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
        await asyncio.sleep(1.0)  # the last bursts come back
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
        "\ndelay: a tone burst's onset leaving the phone's microphone -> its echo's onset in an RTP packet as"
        " it arrived at the phone's socket (decoded per packet, no phone jitter buffer); median and p90 over"
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
