"""Call setup latency end to end: Meta sends the connect webhook -> the business's pre_accept and accept reach
Meta's Graph API, at several rates of new calls, against a bare signed webhook POST measured in the same run.

Setup (a private vhost, everything on 127.0.0.1): ``callhook ingress`` and ``--workers`` worker processes
(echo app), and the simulator in this process (Graph API, signed webhooks, real aiortc phones). Both ends of
each latency are the simulator's own journal: the first attempt's send time of the connect POST, and the
arrival time of the worker's ``pre_accept`` / ``accept`` at the Graph API. Each call is held ``--hold``
seconds after it was accepted (the phone talks, the worker echoes), then the phone hangs up.

Baseline, measured first in the same run: the round trip of a signed webhook POST to the ingress (200 only
after RabbitMQ confirmed a persistent copy), the first hop of every call's setup. The setup latencies are
printed as ratios against its p50/p99. The workers' own histograms split the time (means over the phase):
``router`` = ingress receipt -> router decode of every webhook (``callhook_webhook_lag_seconds``);
``pre_accept`` / ``accept`` = ingress receipt of the connect -> the request sent
(``callhook_call_setup_seconds``).
The simulator's event-loop lag (``sim lag``) says whether Meta's side (this process: phones, Graph API,
webhooks) kept up: where it is high, both ends of the measured latency were stamped late.

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

from simulator import payloads
from simulator.calls import CallState
from simulator.config import SimulatorConfig
from simulator.errors import CallEndedError
from simulator.sim import SimulatedCall, Simulator
from tests.support.system import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, scrape

SETUP_METRIC = "callhook_call_setup_seconds"


@dataclass
class Phase:
    rate: float
    calls: list[SimulatedCall] = field(default_factory=list)
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


# ------------------------------------------------------------------------------------------------ one rate
async def run_phase(
    sim: Simulator,
    workers: list[Process],
    rate: float,
    seconds: float,
    hold: float,
    numbers: itertools.count[int],
) -> Phase:
    phase = Phase(rate)

    async def one_call(_: int) -> None:
        call = await sim.place_call(from_=f"1555{next(numbers):07d}")
        phase.calls.append(call)
        try:
            await call.wait_state(CallState.ACCEPTED, timeout=30)
            await asyncio.sleep(hold)  # the scenario's call length, not a synchronisation
            await call.hangup()
            await call.wait_ended(timeout=10)
        except (TimeoutError, CallEndedError) as exc:
            phase.failures.append(f"{call.call_id}: {type(exc).__name__} {exc}")

    async with aiohttp.ClientSession() as http:
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


def latencies(sim: Simulator, calls: list[SimulatedCall], action: str) -> list[float]:
    out = []
    for call in calls:
        sent = sim.journal.connect_sent_at(call.call_id)
        request = sim.journal.first_request(call.call_id, action)
        if sent is not None and request is not None:
            out.append(request.received_at - sent)
    return out


# ---------------------------------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> int:
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
        config = SimulatorConfig(
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            ice_host_addresses=("127.0.0.1",),
            record_seconds=0.0,  # the phones keep no audio for analysis: less work on Meta's side
        )
        async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
            print(f"setup latency bench: {machine()}")
            print(
                f"{args.workers} worker process(es), echo app; the simulator (Meta: Graph API, webhooks, "
                f"phones) in this process; {args.seconds:g} s per rate; calls last {args.hold:g} s\n"
            )
            base = await baseline(system.webhook_url, args.baseline_rate, args.baseline_posts)
            numbers = itertools.count(1)
            phases = []
            for rate in rates:
                phases.append(
                    await run_phase(sim, system.worker_processes, rate, args.seconds, args.hold, numbers)
                )
            report(args, sim, base, phases)
            if args.json:
                print(json.dumps(figures(sim, base, phases)))
            return 0 if all(not p.failures for p in phases) else 1


def figures(sim: Simulator, base: list[float], phases: list[Phase]) -> dict[str, object]:
    out: dict[str, object] = {"baseline_p50": percentile(base, 50), "baseline_p99": percentile(base, 99)}
    for p in phases:
        pre, acc = latencies(sim, p.calls, "pre_accept"), latencies(sim, p.calls, "accept")
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


def report(args: argparse.Namespace, sim: Simulator, base: list[float], phases: list[Phase]) -> None:
    b50, b99 = percentile(base, 50), percentile(base, 99)
    print(
        f"baseline: signed webhook POST -> 200 (broker-confirmed), {len(base)} at {args.baseline_rate:g}/s: "
        f"p50 {ms(b50)} ms, p99 {ms(b99)} ms\n"
    )
    rows = []
    for p in phases:
        pre, acc = latencies(sim, p.calls, "pre_accept"), latencies(sim, p.calls, "accept")
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
        pre = latencies(sim, goal.calls, "pre_accept")
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
