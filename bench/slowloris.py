"""Signed webhooks during a slow-client flood, against the same rate without the flood, in one run (issue 17).

Processes on 127.0.0.1: the real ingress (``ingress.app.run``, default settings except those printed, its
broker a private vhost), a flood process holding N slow connections (each sends a request line and then one
header byte every ``--drip`` seconds, never finishing its headers; when the ingress closes one, it opens
another, so N stay up for the whole phase), and this process sending signed ~1.5 KB ``connect`` webhooks on a
fixed schedule (open loop: a latency counts from when the request was due) over keep-alive connections, as
Meta would. A webhook whose connection the ingress closed before an answer is re-sent once on a new
connection (as an HTTP client does with a stale keep-alive connection); the re-send is counted and its
latency still counts from the first due time.

Phases (after an unreported warm-up): the baseline (no flood), then one phase per N in ``--slow``. Each
prints: webhooks answered 200 and the achieved rate, anything else, p50/p99/max, p99 against the
baseline's, the peak of the ingress's reading-connections gauge, and the flood's connections (opened,
closed by the ingress) with the ingress's own count of closes by reason.

    uv run --frozen python bench/slowloris.py                          # N = 100, 1000, 5000; 5 s each
    nice uv run --frozen python bench/slowloris.py --slow 100,2000 --seconds 3 --rate 200
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from typing import Any  # noqa: E402

from bench._common import machine, ms, percentile, private_vhost, table, wait_ready  # noqa: E402

SECRET = "slowloris-app-secret"
WARMUP_SECONDS = 1.0


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _free_port() -> int:
    """A port whose successor is free too (the API listener)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


# --- the ingress --------------------------------------------------------------------------------------------


def _serve(port: int, amqp_url: str, settings: dict[str, str]) -> None:
    _raise_fd_limit()
    from callhook.logs import setup_logging
    from ingress.app import run
    from ingress.config import load

    config = load(
        {
            "CALLHOOK_APP_SECRETS": SECRET,
            "CALLHOOK_VERIFY_TOKEN": "slowloris-verify-token",
            "CALLHOOK_AMQP_URL": amqp_url,
            "CALLHOOK_INGRESS_HOST": "127.0.0.1",
            "CALLHOOK_INGRESS_PORT": str(port),
            "CALLHOOK_API_PORT": str(port + 1),
            "CALLHOOK_SHUTDOWN_DELAY_SECONDS": "0",
            "CALLHOOK_LOG_LEVEL": "warning",
            **settings,
        }
    )
    setup_logging("ingress", config.log_level, config.log_format)
    run(config)


def _scrape_retrying(port: int) -> dict[str, float]:
    for _ in range(20):
        try:
            return _scrape(port)
        except OSError:
            time.sleep(0.2)
    return _scrape(port)


def _scrape(port: int) -> dict[str, float]:
    """The ingress's metrics, from its API listener (CALLHOOK_API_PORT): the flood on the webhook port cannot
    evict the scrape's connection there."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ("callhook_ingress_connections_closed_total", "callhook_ingress_reading_connections")
    out = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# --- the flood (its own process) ----------------------------------------------------------------------------


def _flood(port: int, count: int, seconds: float, drip: float, out: Connection) -> None:
    _raise_fd_limit()
    out.send(asyncio.run(_flood_async(port, count, seconds, drip, out)))


async def _flood_async(
    port: int, count: int, seconds: float, drip: float, ready: Connection
) -> dict[str, int]:
    """``count`` slow clients; ``seconds`` counts from when all of them have connected once (the ramp can take
    seconds on a busy machine), so the flood really overlaps the measured phase."""
    loop = asyncio.get_running_loop()
    stats = Counter[str]()
    stop = [math.inf]
    all_connected = asyncio.Event()

    async def slow_client(index: int) -> None:
        while loop.time() < stop[0]:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            stats["opened"] += 1
            if stats["opened"] >= count:
                all_connected.set()
            try:
                writer.write(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-" + str(index).encode())
                await writer.drain()
                while loop.time() < stop[0]:
                    try:
                        async with asyncio.timeout(drip * random.uniform(0.5, 1.5)):
                            if await reader.read(1024) == b"":
                                stats["closed_by_ingress"] += 1
                                break
                    except TimeoutError:
                        writer.write(b"x")  # one more header byte, never the end of the headers
                        await writer.drain()
            except OSError:
                stats["closed_by_ingress"] += 1
            finally:
                writer.close()
            await asyncio.sleep(0.05)

    started = loop.time()
    tasks = []
    for index in range(count):  # ramp up in steps
        tasks.append(asyncio.create_task(slow_client(index)))
        if index % 250 == 249:
            await asyncio.sleep(0.05)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            await all_connected.wait()
    stats["ramp_ms"] = int((loop.time() - started) * 1000)
    stop[0] = loop.time() + seconds
    ready.send("up")
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            stats[f"client_error:{type(outcome).__name__}"] += 1
    return dict(stats)


# --- Meta's side: signed webhooks at a fixed rate -----------------------------------------------------------


def _webhook(n: int) -> tuple[bytes, str]:
    from ingress.signature import sign

    body = (
        '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":'
        '{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881",'
        '"phone_number_id":"106540352242922"},"calls":[{"id":"wacid.slowloris' + str(n) + '",'
        '"from":"13175551399","to":"15550783881","event":"connect","timestamp":"1724079380",'
        '"direction":"USER_INITIATED","session":{"sdp_type":"offer","sdp":"' + "v=0\\r\\n" * 150 + '"}}]},'
        '"field":"calls"}]}]}'
    ).encode()
    return body, sign(body, SECRET)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    resent: int = 0
    failed: int = 0


async def _meta(port: int, rate: float, seconds: float, pool: int, first: int) -> Tally:
    import aiohttp

    tally = Tally()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=pool, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        url = f"http://127.0.0.1:{port}/webhook"

        async def send(n: int, due: float, measured: bool) -> None:
            body, signature = _webhook(first + n)
            headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
            for attempt in (1, 2):
                try:
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                    break
                except (aiohttp.ClientConnectionError, TimeoutError):
                    if attempt == 2:
                        if measured:
                            tally.failed += 1
                        return
                    if measured:
                        tally.resent += 1
            if measured:
                tally.latencies.append(loop.time() - due)
                tally.statuses[status] += 1

        start = loop.time() + 0.1
        total = int(rate * (WARMUP_SECONDS + seconds))
        tasks = []
        for n in range(total):
            due = start + n / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(n, due, n >= rate * WARMUP_SECONDS)))
        await asyncio.gather(*tasks)
    return tally


# --- orchestration ------------------------------------------------------------------------------------------


def _phase(
    ctx: Any, port: int, slow: int, args: argparse.Namespace, first: int
) -> tuple[Tally, dict[str, int], dict[str, float], dict[str, float]]:
    flood_stats: dict[str, int] = {}
    process = None
    before = _scrape_retrying(port)
    if slow:
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_flood, args=(port, slow, WARMUP_SECONDS + args.seconds + 5.0, args.drip, sender)
        )
        process.start()
        receiver.recv()  # every slow client has connected once
    peak = {"reading": 0.0}
    sampling = threading.Event()

    def sample_reading() -> None:  # the reading-connections gauge, at its highest during the phase
        while not sampling.wait(0.5):
            try:
                reading = sum(
                    v for k, v in _scrape(port).items() if 'reading_connections{listener="webhook"' in k
                )
            except OSError:  # the scrape's own connection may be evicted by the flood: try again
                continue
            peak["reading"] = max(peak["reading"], reading)

    sampler = threading.Thread(target=sample_reading, daemon=True)
    sampler.start()
    tally = asyncio.run(_meta(port, args.rate, args.seconds, args.pool, first))
    sampling.set()
    sampler.join()
    during = {"reading": peak["reading"]}
    if process is not None:
        flood_stats = receiver.recv()
        process.join(timeout=30)
    after = _scrape_retrying(port)
    closed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if "closed_total" in k}
    return tally, flood_stats, closed, during


def _reason(sample: str) -> str:
    return sample.split('reason="', 1)[1].split('"', 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow", default="100,1000,5000", help="slow clients per phase (100 to 5000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase (default 5)")
    parser.add_argument("--rate", type=float, default=200.0, help="signed webhooks per second (default 200)")
    parser.add_argument("--pool", type=int, default=32, help="Meta's keep-alive connections (default 32)")
    parser.add_argument("--drip", type=float, default=2.0, help="seconds between a slow client's bytes")
    parser.add_argument("--header-timeout", default="10", help="CALLHOOK_HEADER_TIMEOUT_SECONDS (default 10)")
    parser.add_argument(
        "--max-reading", default="1000", help="CALLHOOK_MAX_READING_CONNECTIONS (default 1000)"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.slow.split(",")]
    if any(not 100 <= n <= 5000 for n in counts):
        parser.error("--slow: each N from 100 to 5000")
    limit = _raise_fd_limit()
    if limit < max(counts) + 2000:
        parser.error(f"the open-file limit ({limit}) is too low for {max(counts)} slow clients")

    settings = {
        "CALLHOOK_HEADER_TIMEOUT_SECONDS": args.header_timeout,
        "CALLHOOK_MAX_READING_CONNECTIONS": args.max_reading,
    }
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    rows = []
    with private_vhost("callhook-slowloris") as amqp_url:
        server = ctx.Process(target=_serve, args=(port, amqp_url, settings))
        server.start()
        try:
            wait_ready(port)
            baseline_p99 = float("nan")
            first = 0
            asyncio.run(_meta(port, args.rate, 2.0, args.pool, 10**6))  # warm-up, not reported
            for slow in [0, *counts]:
                tally, flood, closed, during = _phase(ctx, port, slow, args, first)
                first += int(args.rate * (WARMUP_SECONDS + args.seconds)) + 1
                p99 = percentile(tally.latencies, 99)
                if slow == 0:
                    baseline_p99 = p99
                reasons = ", ".join(f"{_reason(k)}={int(v)}" for k, v in sorted(closed.items()) if v)
                rows.append(
                    [
                        slow or "none (baseline)",
                        f"{tally.statuses.get(200, 0)} ({tally.statuses.get(200, 0) / args.seconds:.0f}/s)",
                        sum(v for k, v in tally.statuses.items() if k != 200) + tally.failed,
                        tally.resent,
                        ms(percentile(tally.latencies, 50)),
                        ms(p99),
                        ms(max(tally.latencies, default=float("nan"))),
                        f"{p99 / baseline_p99:.2f}x"
                        if baseline_p99 == baseline_p99 and baseline_p99
                        else "-",
                        int(sum(v for k, v in during.items() if "reading" in k)),
                        f"{flood.get('opened', 0)}/{flood.get('closed_by_ingress', 0)} "
                        f"({flood.get('ramp_ms', 0) / 1000:.1f} s)"
                        if slow
                        else "-",
                        reasons or "-",
                    ]
                )
        finally:
            if server.pid is not None and server.is_alive():
                server.terminate()
            server.join(timeout=30)
    print(f"slowloris bench: {machine()}")
    print(
        f"{args.rate:.0f} signed webhooks/s for {args.seconds:.0f} s per phase over {args.pool} keep-alive "
        f"connections; slow clients drip a header byte every ~{args.drip:.0f} s; ingress header timeout "
        f"{args.header_timeout} s, reading cap {args.max_reading}"
    )
    print(
        table(
            [
                "slow clients",
                "200 (rate)",
                "not 200",
                "re-sent",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 vs baseline",
                "reading conns",
                "flood opened/closed (ramp)",
                "ingress closed (reason=n)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
