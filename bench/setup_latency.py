"""Call setup latency end to end: Meta sends the connect webhook -> the business's pre_accept and accept reach
Meta's Graph API, at several rates of new calls, against a bare signed webhook POST measured in the same run.

Setup (a private vhost, everything on 127.0.0.1): ``callhook ingress`` and ``--workers`` worker processes
(echo app); Meta's side in this process: signed ``connect``/``terminate`` webhooks posted to the ingress, a
minimal Graph API, and the capacity bench's phones (``bench/capacity.py``: real aiortc peers shaped like
Meta's that send pre-encoded Opus and count what they receive without decoding it, so at 10-20 new calls/s
this process measures callhook, not its own phones). Both ends of each latency are stamped here
(``time.monotonic``): just before the connect POST, and when the worker's ``pre_accept`` / ``accept``
reaches the Graph API. Each call is held ``--hold`` seconds after it was accepted (the phone talks, the
worker echoes), then Meta's terminate webhook ends it.

Baseline, measured first in the same run: the round trip of a signed webhook POST to the ingress (200 only
after RabbitMQ confirmed a persistent copy), the first hop of every call's setup. The setup latencies are
printed as ratios against its p50/p99. The workers' own histograms split the time (means over the phase):
``router`` = ingress receipt -> router decode of every webhook (``callhook_webhook_lag_seconds``);
``pre_accept`` / ``accept`` = ingress receipt of the connect -> the request sent
(``callhook_call_setup_seconds``).
This process's event-loop lag (``sim lag``) says whether Meta's side (phones, Graph API, webhooks) kept up:
where it is high, both ends of the measured latency were stamped late.

    ./run bench setup_latency                              # or: uv run --frozen python bench/setup_latency.py
    uv run --frozen python bench/setup_latency.py --seconds 3 --rates 1,10      # a quick smoke run

Goal: pre_accept p50 < 25 ms and p99 < 75 ms at 10 new calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    LagProbe,
    Samples,
    machine,
    ms,
    percentile,
    private_vhost,
    ratio,
    sample,
    table,
)
from capacity import MiniGraph, Phone, phone_payloads

from callhook.ice import restrict_host_addresses
from simulator import payloads
from simulator.config import DEFAULT_NUMBER, DEFAULT_WABA_ID
from tests.support.system import APP_SECRET, Process, System, free_port, scrape

SETUP_METRIC = "callhook_call_setup_seconds"


@dataclass
class Call:
    call_id: str
    sent_at: float  # time.monotonic() just before the connect webhook was posted


@dataclass
class Phase:
    rate: float
    calls: list[Call] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)
    worker_means: dict[str, float] = field(default_factory=dict)


async def paced(rate: float, count: int, start: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``start(i)`` at ``rate`` per second (a pacing timer); wait for all of them."""
    t0 = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(start(i))


# ------------------------------------------------------------------------------------------------- baseline
def baseline_body(i: int) -> bytes:
    """A signed-webhook body the size of a call's: a message status (not about calls, so the router only
    passes it on to ``callhook.events``; nothing else happens downstream)."""
    status = {
        "id": f"wamid.bench{i:08d}",
        "status": "delivered",
        "timestamp": str(int(time.time())),
        "recipient_id": "15550000000",
        "padding": "x" * 1500,  # about the SDP a connect carries
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001000", "phone_number_id": "100000000000002"},
        "statuses": [status],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000001", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def baseline(url: str, rate: float, count: int) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def post(i: int) -> None:
            body = baseline_body(i)
            headers = {
                "Content-Type": "application/json",
                "X-Hub-Signature-256": payloads.signature(body, APP_SECRET),
            }
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"baseline POST answered {response.status}")
            latencies.append(time.perf_counter() - started)

        await paced(rate, count, post)
    return latencies


# ------------------------------------------------------------------------------------------------ Meta's side
class Meta:
    """Meta for the bench: signed webhooks to the ingress, the Graph API (:class:`capacity.MiniGraph`) and
    cheap phones (:class:`capacity.Phone`)."""

    def __init__(self, webhook_url: str, graph: MiniGraph, http: aiohttp.ClientSession) -> None:
        self.webhook_url, self.graph, self.http = webhook_url, graph, http
        self.packets = phone_payloads(2.0)

    async def post(self, update: payloads.Update) -> None:
        body = payloads.encode(payloads.envelope([update]))
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": payloads.signature(body, APP_SECRET),
        }
        async with self.http.post(self.webhook_url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"ingress answered {response.status}")

    async def call(self, number: int, hold: float, phase: Phase) -> None:
        """One incoming call: connect webhook, answered by the worker, ``hold`` seconds, terminate webhook."""
        phone = Phone(self.packets)
        call_id = payloads.new_call_id()
        self.graph.phones[call_id] = phone
        user = payloads.Contact(f"1555{number:07d}", "Bench Caller")
        try:
            offer = await phone.offer()
            connect = payloads.call_connect(
                waba_id=DEFAULT_WABA_ID, number=DEFAULT_NUMBER, call_id=call_id, user=user,
                direction=payloads.USER_INITIATED, timestamp=int(time.time()), sdp_type="offer", sdp=offer,
            )  # fmt: skip
            sent_at = time.monotonic()
            await self.post(connect)
            phase.calls.append(Call(call_id, sent_at))
            async with asyncio.timeout(30):
                await phone.answered.wait()
            await asyncio.sleep(hold)  # the scenario's call length, not a synchronisation
            terminate = payloads.call_terminate(
                waba_id=DEFAULT_WABA_ID, number=DEFAULT_NUMBER, call_id=call_id, user=user,
                direction=payloads.USER_INITIATED, timestamp=int(time.time()), status="COMPLETED",
            )  # fmt: skip
            await self.post(terminate)
        except (TimeoutError, RuntimeError) as exc:
            phase.failures.append(f"{call_id}: {type(exc).__name__} {exc}")
        finally:
            await phone.close()
            self.graph.phones.pop(call_id, None)


# ------------------------------------------------------------------------------------------------ one rate
async def run_phase(
    meta: Meta,
    workers: list[Process],
    rate: float,
    seconds: float,
    hold: float,
    numbers: itertools.count[int],
) -> Phase:
    phase = Phase(rate)

    async def one_call(_: int) -> None:
        await meta.call(next(numbers), hold, phase)

    http = meta.http
    before = await asyncio.gather(*(scrape(http, w) for w in workers))
    async with LagProbe() as probe:
        await paced(rate, max(1, round(rate * seconds)), one_call)
    await wait_idle(http, workers)
    after = await asyncio.gather(*(scrape(http, w) for w in workers))
    phase.loop_lag = probe.samples
    phase.worker_means = {
        "router": pooled_mean(before, after, "callhook_webhook_lag_seconds"),
        **{
            stage: pooled_mean(before, after, SETUP_METRIC, stage=stage) for stage in ("pre_accept", "accept")
        },
    }
    return phase


def pooled_mean(before: Sequence[Samples], after: Sequence[Samples], name: str, **labels: str) -> float:
    """The mean of what a histogram observed between two scrapes, over all workers."""
    count = sum(
        sample(a, f"{name}_count", **labels) - sample(b, f"{name}_count", **labels)
        for b, a in zip(before, after, strict=True)
    )
    total = sum(
        sample(a, f"{name}_sum", **labels) - sample(b, f"{name}_sum", **labels)
        for b, a in zip(before, after, strict=True)
    )
    return total / count if count > 0 else math.nan


async def wait_idle(http: aiohttp.ClientSession, workers: list[Process], timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Until no worker owns a call (the phones hung up; the terminate webhooks went through)."""
    async with asyncio.timeout(timeout):
        while True:
            scraped = await asyncio.gather(*(scrape(http, w) for w in workers))
            if all(sample(s, "callhook_calls_active") == 0 for s in scraped):
                return
            await asyncio.sleep(0.1)  # a probe's interval


def latencies(graph: MiniGraph, calls: list[Call], action: str) -> list[float]:
    out = []
    for call in calls:
        arrived = graph.arrivals.get((call.call_id, action))
        if arrived is not None:
            out.append(arrived - call.sent_at)
    return out


# ---------------------------------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> int:
    restrict_host_addresses(["127.0.0.1"])
    rates = [float(r) for r in args.rates.split(",")]
    with private_vhost("bench-setup") as amqp_url, tempfile.TemporaryDirectory(prefix="bench-setup-") as logs:
        graph_port = free_port()
        system = System(
            amqp_url=amqp_url,
            graph_url=f"http://127.0.0.1:{graph_port}",
            log_dir=Path(logs),
            workers=args.workers,
            worker_env={"CALLHOOK_MAX_CALLS": "500", "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5"},
        )
        async with system, MiniGraph(graph_port) as graph, aiohttp.ClientSession() as http:
            meta = Meta(system.webhook_url, graph, http)
            print(f"setup latency bench: {machine()}")
            print(
                f"{args.workers} worker process(es), echo app; Meta's side (Graph API, webhooks, cheap "
                f"phones) in this process; {args.seconds:g} s per rate; calls last {args.hold:g} s\n"
            )
            base = await baseline(system.webhook_url, args.baseline_rate, args.baseline_posts)
            numbers = itertools.count(1)
            phases = []
            for rate in rates:
                phases.append(
                    await run_phase(meta, system.worker_processes, rate, args.seconds, args.hold, numbers)
                )
            report(args, graph, base, phases)
            if args.json:
                print(json.dumps(figures(graph, base, phases)))
            return 0 if all(not p.failures for p in phases) else 1


def figures(graph: MiniGraph, base: list[float], phases: list[Phase]) -> dict[str, object]:
    out: dict[str, object] = {"baseline_p50": percentile(base, 50), "baseline_p99": percentile(base, 99)}
    for p in phases:
        pre, acc = latencies(graph, p.calls, "pre_accept"), latencies(graph, p.calls, "accept")
        out[f"{p.rate:g}"] = {
            "calls": len(p.calls),
            "failures": len(p.failures),
            "pre_accept_p50": percentile(pre, 50),
            "pre_accept_p99": percentile(pre, 99),
            "accept_p50": percentile(acc, 50),
            "accept_p99": percentile(acc, 99),
            "sim_loop_lag_p99": percentile(p.loop_lag, 99),
        }
    return out


def report(args: argparse.Namespace, graph: MiniGraph, base: list[float], phases: list[Phase]) -> None:
    b50, b99 = percentile(base, 50), percentile(base, 99)
    print(
        f"baseline: signed webhook POST -> 200 (broker-confirmed), {len(base)} at {args.baseline_rate:g}/s: "
        f"p50 {ms(b50)} ms, p99 {ms(b99)} ms\n"
    )
    rows = []
    for p in phases:
        pre, acc = latencies(graph, p.calls, "pre_accept"), latencies(graph, p.calls, "accept")
        p50, p99 = percentile(pre, 50), percentile(pre, 99)
        a50, a99 = percentile(acc, 50), percentile(acc, 99)
        rows.append(
            [
                f"{p.rate:g}/s",
                f"{len(pre)}/{len(p.calls)}",
                ms(p50),
                ms(p99),
                f"{ratio(p50, b50)} / {ratio(p99, b99)}",
                ms(a50),
                ms(a99),
                f"{ratio(a50, b50)} / {ratio(a99, b99)}",
                " / ".join(ms(p.worker_means[k]) for k in ("router", "pre_accept", "accept")),
                ms(percentile(p.loop_lag, 99)),
            ]
        )
    print("connect webhook sent -> request received at the Graph API (ms); ratio: vs baseline p50 / p99")
    print(
        table(
            [
                "rate",
                "answered",
                "pre_accept p50",
                "p99",
                "ratio",
                "accept p50",
                "p99",
                "ratio",
                "worker mean: router / pre_accept / accept",
                "sim lag p99",
            ],
            rows,
        )
    )
    for p in phases:
        if percentile(p.loop_lag, 99) > 0.020:
            print(f"  at {p.rate:g}/s Meta's side lagged (p99 > 20 ms): its timestamps include its own delay")
        for failure in p.failures[:5]:
            print(f"  failed at {p.rate:g}/s: {failure}")
    goal = next((p for p in phases if p.rate == 10), None)
    if goal is not None:
        pre = latencies(graph, goal.calls, "pre_accept")
        met = percentile(pre, 50) < 0.025 and percentile(pre, 99) < 0.075
        print(f"\ngoal at 10 calls/s: pre_accept p50 < 25 ms and p99 < 75 ms: {'met' if met else 'NOT met'}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="1,10,20", help="new calls per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate runs")
    parser.add_argument("--hold", type=float, default=2.5, help="seconds each call lasts after accept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-posts", type=int, default=200)
    parser.add_argument("--baseline-rate", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
