"""Ingress throughput and latency with publisher confirms, against a bare aiohttp handler in the same run.

Three processes on 127.0.0.1: the server under test (the real ingress, ``ingress.app.serve`` exactly as
``callhook ingress`` runs it, publishing to RabbitMQ in a private vhost; or a bare aiohttp app whose POST
handler reads the body and answers 200), and a load generator. The generator is a minimal HTTP/1.1 client
on asyncio protocols (keep-alive, pre-built signed requests, about 1.5 KB ``connect`` webhooks with distinct
bodies) so that it costs far less per request than the servers and does not cap what they can do; it
reports its own CPU.

Phases, each after a warm-up:
1. peak: closed loop, ``--concurrency`` connections each sending its next request as soon as it has the
   answer, against the bare handler then the ingress, at each concurrency level given; the best rate of a
   target is its peak (the bare handler peaks on CPU at low concurrency; the ingress is bound by the
   broker's confirm latency, so it needs more requests in flight to reach its peak);
2. latency: open loop at half the ingress's peak rate (fixed schedule; a latency is counted from the moment
   the request was due, so a stalled server cannot hide its queue), against both.
At the end the queue must hold exactly one message per 200 the ingress gave.

    ./run bench ingress                  # or: uv run --frozen python bench/ingress.py
    uv run --frozen python bench/ingress.py --seconds 2     # a quick smoke run

Goals: ingress peak >= 0.5 x the bare handler's; ingress p99 < 10 ms at half its peak.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the package it measures: make ``import ingress`` find the package, not this script.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import hashlib  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from bench._common import wait_ready  # noqa: E402

SECRET = "bench-app-secret"
MAX_OPEN_LOOP_CONNECTIONS = 1024
WARMUP_SECONDS = 1.0


# --- servers (each in its own process) ---------------------------------------------------------------------


def _serve_bare(port: int) -> None:
    from aiohttp import web

    async def webhook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        app = web.Application()
        app.router.add_post("/webhook", webhook)
        app.router.add_get("/readyz", ready)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def _serve_ingress(port: int, amqp_url: str) -> None:
    from callhook.logs import setup_logging
    from ingress.app import run
    from ingress.config import load

    config = load(
        {
            "CALLHOOK_APP_SECRETS": f"another-app-secret,{SECRET}",  # the match is the second one tried
            "CALLHOOK_VERIFY_TOKEN": "bench-verify-token",
            "CALLHOOK_AMQP_URL": amqp_url,
            "CALLHOOK_INGRESS_HOST": "127.0.0.1",
            "CALLHOOK_INGRESS_PORT": str(port),
            "CALLHOOK_SHUTDOWN_DELAY_SECONDS": "0",
            "CALLHOOK_LOG_LEVEL": "warning",
        }
    )
    setup_logging("ingress", config.log_level, config.log_format)
    run(config)


# --- load generator (its own process) ----------------------------------------------------------------------


def _body(n: int) -> bytes:
    call_id = "wacid." + hashlib.sha256(str(n).encode()).hexdigest()[:40]
    sdp = (
        "v=0\\r\\no=- 1724079380 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0\\r\\n"
        "m=audio 3478 UDP/TLS/RTP/SAVPF 111 126\\r\\nc=IN IP4 157.240.19.130\\r\\n"
        "a=rtcp:9 IN IP4 0.0.0.0\\r\\n"
        "a=candidate:1 1 udp 2122260223 157.240.19.130 3478 typ host generation 0\\r\\n"
        "a=candidate:2 1 udp 2122262783 2a03:2880:f20d:c1:face:b00c:0:167 3478 typ host generation 0\\r\\n"
        "a=ice-ufrag:Hk9b\\r\\na=ice-pwd:zEvDYuEB5e0Gr9FLuGmS+HQv\\r\\na=ice-options:trickle\\r\\n"
        "a=fingerprint:sha-256 4F:2B:3A:0E:6C:8A:73:BB:12:9D:F0:41:CE:58:77:9A:0B:D2:36:EE:61:AF:80:"
        "19:C3:5E:2D:94:7B:08:F6:A1\\r\\na=setup:actpass\\r\\na=mid:0\\r\\na=sendrecv\\r\\n"
        "a=rtcp-mux\\r\\na=rtpmap:111 opus/48000/2\\r\\na=rtcp-fb:111 transport-cc\\r\\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\\r\\na=rtpmap:126 telephone-event/8000\\r\\n"
        "a=ssrc:2157839416 cname:9P6s9dTMp0tSZcpV\\r\\n"
    )
    return (
        '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":'
        '{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881",'
        '"phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Ren\\u00e9e"},'
        f'"wa_id":"13175551399"}}],"calls":[{{"id":"{call_id}","from":"13175551399","to":"15550783881",'
        f'"event":"connect","timestamp":"{1_724_079_380 + n}","direction":"USER_INITIATED",'
        f'"session":{{"sdp_type":"offer","sdp":"{sdp}"}}}}]}},"field":"calls"}}]}}]}}'
    ).encode()


def _request(port: int, n: int) -> bytes:
    from ingress.signature import sign

    body = _body(n)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Client(asyncio.Protocol):
    """One keep-alive connection, one request at a time; calls ``done(self, status)`` per full response."""

    def __init__(self, done: Callable[[_Client, int], None], lost: Callable[[_Client], None]) -> None:
        self._done = done
        self._lost = lost
        self._buffer = bytearray()
        self._need = -1
        self._status = 0
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, started: float) -> None:
        assert self.transport is not None
        self.started = started
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._need < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self._buffer[:end]).lower()
                self._status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
                self._need = end + 4 + length
            if len(self._buffer) < self._need:
                return
            del self._buffer[: self._need]
            self._need = -1
            self._done(self, self._status)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self._lost(self)


@dataclass
class _Tally:
    window: tuple[float, float]
    latencies: list[float]
    statuses: dict[int, int]
    total_ok: int = 0  # every 200 including warm-up (the queue check counts them all)
    errors: int = 0
    connections: int = 0

    def record(self, now: float, started: float, status: int) -> None:
        if status == 200:
            self.total_ok += 1
        if self.window[0] <= started < self.window[1]:
            self.latencies.append(now - started)
            self.statuses[status] = self.statuses.get(status, 0) + 1


async def _closed_loop(port: int, concurrency: int, seconds: float, requests: list[bytes]) -> _Tally:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    tally = _Tally((start + WARMUP_SECONDS, start + WARMUP_SECONDS + seconds), [], {})
    finished = loop.create_future()
    active = concurrency
    per_client = len(requests) // concurrency
    counters: dict[_Client, int] = {}

    def done(client: _Client, status: int) -> None:
        nonlocal active
        now = loop.time()
        tally.record(now, client.started, status)
        if now < tally.window[1]:
            i = counters[client] = counters[client] + 1
            client.send(requests[offsets[client] + i % per_client], now)
        else:
            active -= 1
            if active == 0 and not finished.done():
                finished.set_result(None)

    def lost(client: _Client) -> None:
        tally.errors += 1

    clients = [
        (await loop.create_connection(lambda: _Client(done, lost), "127.0.0.1", port))[1]
        for _ in range(concurrency)
    ]
    offsets = {client: k * per_client for k, client in enumerate(clients)}
    await asyncio.sleep(max(0.0, start - loop.time()))
    for client in clients:
        counters[client] = 0
        client.send(requests[offsets[client]], loop.time())
    await asyncio.wait_for(finished, WARMUP_SECONDS + seconds + 30)
    for client in clients:
        client.close()
    return tally


async def _open_loop(port: int, rate: float, seconds: float, requests: list[bytes], pool: int) -> _Tally:
    """Requests on a fixed schedule. With no idle connection a new one is opened (as Meta would), up to
    ``MAX_OPEN_LOOP_CONNECTIONS``; a request waiting for one still counts its latency from when it was due."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    total = int(rate * (WARMUP_SECONDS + seconds))
    tally = _Tally((start + WARMUP_SECONDS, start + WARMUP_SECONDS + seconds), [], {})
    idle: deque[_Client] = deque()
    waiting: deque[float] = deque()  # due times of requests no connection was free for
    answered = sent = 0
    opened = connecting = 0
    finished = loop.create_future()
    growing: set[asyncio.Task[None]] = set()

    def dispatch(client: _Client) -> None:
        nonlocal sent
        if waiting:
            client.send(requests[sent % len(requests)], waiting.popleft())
            sent += 1
        else:
            idle.append(client)

    def done(client: _Client, status: int) -> None:
        nonlocal answered
        tally.record(loop.time(), client.started, status)
        answered += 1
        if answered == total and not finished.done():
            finished.set_result(None)
        dispatch(client)

    def lost(client: _Client) -> None:
        tally.errors += 1

    async def connect() -> _Client:
        return (await loop.create_connection(lambda: _Client(done, lost), "127.0.0.1", port))[1]

    async def grow() -> None:
        nonlocal connecting
        try:
            client = await connect()
        finally:
            connecting -= 1
        clients.append(client)
        dispatch(client)

    clients = [await connect() for _ in range(pool)]
    idle.extend(clients)
    opened = pool
    await asyncio.sleep(max(0.0, start - loop.time()))
    issued = 0
    while issued < total:
        due_now = min(total, int((loop.time() - start) * rate) + 1)
        for i in range(issued, due_now):
            waiting.append(start + i / rate)
        issued = due_now
        while waiting and idle:
            dispatch(idle.popleft())
        while len(waiting) > connecting and opened < MAX_OPEN_LOOP_CONNECTIONS:
            opened += 1
            connecting += 1
            task = asyncio.create_task(grow())
            growing.add(task)
            task.add_done_callback(growing.discard)
        await asyncio.sleep(0.0005)
    await asyncio.wait_for(finished, 30 + len(waiting) / rate)
    for client in clients:
        client.close()
    tally.connections = opened
    return tally


def _load(port: int, mode: str, param: float, seconds: float, pool: int, out: Connection) -> None:
    requests = [_request(port, n) for n in range(4096)]
    process = psutil.Process()
    cpu_before = sum(process.cpu_times()[:2])
    if mode == "closed":
        tally = asyncio.run(_closed_loop(port, int(param), seconds, requests))
    else:
        tally = asyncio.run(_open_loop(port, param, seconds, requests, pool))
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    out.send(
        {
            "latencies": sorted(tally.latencies),
            "statuses": tally.statuses,
            "total_ok": tally.total_ok,
            "errors": tally.errors,
            "seconds": seconds,
            "generator_cpu": cpu / (seconds + WARMUP_SECONDS + 0.2),
            "connections": tally.connections or int(param),
        }
    )


# --- orchestration -----------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    mode: str
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    not_ok: int
    server_cpu_us: float  # server CPU time per answered request
    generator_cpu: float  # fraction of one core the generator used
    total_ok: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _measure(
    ctx: Any,
    target: str,
    server: multiprocessing.process.BaseProcess,
    port: int,
    mode: str,
    param: float,
    args: Any,
) -> Result:
    receiver, sender = ctx.Pipe(duplex=False)
    generator = ctx.Process(target=_load, args=(port, mode, param, args.seconds, args.pool, sender))
    server_process = psutil.Process(server.pid)
    cpu_before = sum(server_process.cpu_times()[:2])
    generator.start()
    report: dict[str, Any] = receiver.recv()
    generator.join()
    server_cpu = sum(server_process.cpu_times()[:2]) - cpu_before
    latencies: list[float] = report["latencies"]
    answered = sum(report["statuses"].values())
    not_ok = answered - report["statuses"].get(200, 0) + report["errors"]
    return Result(
        target=target,
        mode=f"closed c={int(param)}"
        if mode == "closed"
        else f"open {param:.0f}/s c={report['connections']}",
        rate=answered / report["seconds"],
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        not_ok=not_ok,
        server_cpu_us=server_cpu / max(1, report["total_ok"] + not_ok) * 1e6,
        generator_cpu=report["generator_cpu"],
        total_ok=report["total_ok"],
    )


def _start(ctx: Any, target: str, port: int, amqp_url: str) -> multiprocessing.process.BaseProcess:
    args: tuple[Any, ...] = (port,) if target == "bare" else (port, amqp_url)
    process: multiprocessing.process.BaseProcess = ctx.Process(
        target=_serve_bare if target == "bare" else _serve_ingress, args=args
    )
    process.start()
    wait_ready(port)
    return process


def _queue_depth(amqp_url: str) -> int:
    import aio_pika

    from ingress import contract

    async def depth() -> int:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(contract.WEBHOOKS_QUEUE, passive=True)
            count = queue.declaration_result.message_count
            return int(count) if count is not None else -1

    return asyncio.run(depth())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase (default 5)")
    parser.add_argument(
        "--concurrency", default="64,256", help="closed-loop connection counts to try (default 64,256)"
    )
    parser.add_argument("--pool", type=int, default=64, help="open-loop connections at start (default 64)")
    args = parser.parse_args()

    from tests.support import rabbit

    rabbit.ensure_broker()
    ctx = multiprocessing.get_context("spawn")
    vhost = rabbit.create_vhost("callhook-bench")
    amqp_url = rabbit.amqp_url(vhost)
    results: list[Result] = []
    servers: dict[str, tuple[multiprocessing.process.BaseProcess, int]] = {}
    try:
        for target in ("bare", "ingress"):
            port = _free_port()
            servers[target] = (_start(ctx, target, port, amqp_url), port)
        for target in ("bare", "ingress"):
            process, port = servers[target]
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                results.append(_measure(ctx, target, process, port, "closed", concurrency, args))
        half = _peak(results, "ingress").rate / 2
        for target in ("bare", "ingress"):
            process, port = servers[target]
            results.append(_measure(ctx, target, process, port, "open", half, args))
        for process, _ in servers.values():
            process.terminate()
            process.join(30)
        depth = _queue_depth(amqp_url)
    finally:
        for process, _ in servers.values():
            if process.is_alive():
                process.kill()
        rabbit.delete_vhost(vhost)

    _print(results, depth, args)
    return 0


def _peak(results: list[Result], target: str) -> Result:
    return max(
        (r for r in results if r.target == target and r.mode.startswith("closed")), key=lambda r: r.rate
    )


def _print(results: list[Result], depth: int, args: Any) -> None:
    print(f"ingress bench: {platform.python_version()}, {os.cpu_count()} CPUs, {args.seconds:g} s per phase")
    print(
        f"{'target':8} {'mode':20} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'non-200':>7} "
        f"{'srv µs/req':>10} {'gen CPU':>7}"
    )
    for r in results:
        print(
            f"{r.target:8} {r.mode:20} {r.rate:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.max_ms:7.1f} "
            f"{r.not_ok:7d} {r.server_cpu_us:10.0f} {r.generator_cpu:7.0%}"
        )
    bare_peak, ingress_peak = _peak(results, "bare"), _peak(results, "ingress")
    ingress_half = results[-1]
    ratio = ingress_peak.rate / bare_peak.rate
    stored = sum(r.total_ok for r in results if r.target == "ingress")
    print(
        f"peak throughput ingress/bare: {ingress_peak.rate:.0f}/{bare_peak.rate:.0f} = {ratio:.2f} "
        f"(goal >= 0.5) {'ok' if ratio >= 0.5 else 'MISSED'}"
    )
    print(
        f"ingress p99 at half its peak: {ingress_half.p99_ms:.2f} ms (goal < 10 ms) "
        f"{'ok' if ingress_half.p99_ms < 10 else 'MISSED'}"
    )
    print(
        f"queue check: {depth} messages stored for {stored} answers 200 "
        f"{'ok' if depth == stored else 'MISMATCH'}"
    )


if __name__ == "__main__":
    sys.exit(main())
