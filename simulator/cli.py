"""``callhook sim``: Meta's side against any ingress, with a scenario of incoming calls and a summary.

Only argparse at import time; the simulator (aiortc, aiohttp, numpy) loads inside the handler.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.config import SimulatorConfig
    from simulator.scenario import ScenarioSummary

SELF_CHECK_DEFAULTS = {
    "CALLHOOK_APP_SECRETS": "self-check-secret",
    "CALLHOOK_ACCESS_TOKEN": "self-check-token",
}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="run the WhatsApp simulator (Graph API, signed webhooks, phones) against an ingress",
        description="Start the simulated Graph API (point the worker's CALLHOOK_GRAPH_URL at it), place "
        "incoming calls at a rate through the ingress, hold them while the phones play a test signal, hang "
        "up, and print what happened. Settings: CALLHOOK_SIM_* (docs/simulator.md); flags override them.",
    )
    parser.add_argument("--ingress-url", help="where webhooks go (default: CALLHOOK_SIM_INGRESS_URL)")
    parser.add_argument("--graph-host", help="Graph API listen address (default: CALLHOOK_SIM_GRAPH_HOST)")
    parser.add_argument(
        "--graph-port", type=int, help="Graph API port, 0 = any (default: CALLHOOK_SIM_GRAPH_PORT)"
    )
    parser.add_argument("--phone-number-id", help="business number the users call (default: the first)")
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument("--calls", type=int, default=1, help="calls to place (default 1)")
    scenario.add_argument("--rate", type=float, default=1.0, help="calls started per second (default 1)")
    scenario.add_argument("--hold", type=float, default=5.0, help="seconds per answered call (default 5)")
    scenario.add_argument(
        "--hangup",
        choices=("phone", "business", "random"),
        default="phone",
        help="who ends calls",
    )
    scenario.add_argument(
        "--business-grace",
        type=float,
        default=10.0,
        help="--hangup business: seconds after the hold to wait for the business's terminate (default 10)",
    )
    scenario.add_argument("--serve", action="store_true", help="keep running after the scenario until Ctrl-C")
    scenario.add_argument(
        "--self-check",
        action="store_true",
        help="answer the calls with the built-in echo business instead of an ingress (no deployment needed)",
    )
    scenario.add_argument("--json", action="store_true", help="print the summary as JSON")
    scenario.add_argument(
        "--dtmf",
        metavar="DIGITS",
        help="each caller presses these keys (0-9 * # A-D) 1 s into the call, as RFC 4733 packets",
    )
    net = parser.add_argument_group(
        "the phones' network (override CALLHOOK_SIM_NET, _NET_UP, _NET_DOWN)",
        "SPEC: comma-separated loss=3%%, burst=2%% (Gilbert-Elliott bad-state share), "
        "burst_len=4 (datagrams), jitter=30ms, delay=20ms, reorder=1%%, reorder_delay=40ms, "
        "outage=5s:120ms (repeatable), "
        "protect_dtls=false; 'clean' for none. --net sets both directions, --net-up (phone -> business) and "
        "--net-down (business -> phone) then override it key by key.",
    )
    net.add_argument("--net", metavar="SPEC", help="both directions, e.g. loss=3%%,jitter=30ms")
    net.add_argument("--net-up", metavar="SPEC", help="phone -> business only")
    net.add_argument("--net-down", metavar="SPEC", help="business -> phone only")
    faults = parser.add_argument_group("delivery and Graph API faults (override CALLHOOK_SIM_*)")
    faults.add_argument("--duplicates", type=float, help="fraction of webhooks delivered twice")
    faults.add_argument("--reorder", type=float, help="fraction of connect webhooks held back")
    faults.add_argument("--reorder-seconds", type=float, help="how long a reordered connect is held")
    faults.add_argument("--batch", type=int, help="updates per webhook POST (>1 batches)")
    faults.add_argument("--stale", type=float, help="fraction of connect webhooks with an old timestamp")
    faults.add_argument("--delay", type=float, help="seconds every webhook waits before it is sent")
    faults.add_argument(
        "--graph-fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="ACTION:KIND[:OPTION]... e.g. pre_accept:503:next=2, accept:429=4:fraction=0.1, "
        "connect:error=138002, terminate:timeout=5:apply, accept:delay=0.5 (repeatable)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from callhook.logs import setup_logging
    from simulator.config import load

    env = dict(os.environ)
    if args.self_check:
        env = {**SELF_CHECK_DEFAULTS, **env}
    config = _with_flags(load(env), args)
    setup_logging("simulator", config.log_level, config.log_format)
    summary = asyncio.run(_main(config, args))
    if summary is None:
        return 0
    if args.json:
        import json

        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.format())
    return 0 if self_check_ok(summary, args.self_check, impaired=config.net.impaired) else 1


def self_check_ok(summary: ScenarioSummary, self_check: bool, *, impaired: bool) -> bool:
    """Every call answered and ended normally; with --self-check also every echo intact, every key received.

    On an impaired network the echo business (stock aiortc) distorts its echo past what the recording's
    analysis accepts (its jitter buffer, aiortc-notes trap 5), so the echo is then judged at the phone's
    socket instead: at least half the tone bursts came back (stock aiortc itself mangles about a quarter of
    them at 5 % loss: a concealed onset, a jump of its jitter buffer).
    """
    if not summary.ok:
        return False
    if not self_check:
        return True
    if impaired:
        heard = summary.heard()
        echoed = len(heard) == summary.answered and all(r.heard_fraction >= 0.5 for r in heard)
    else:
        echoed = summary.audio_matched == summary.answered
    keys = summary.dtmf_received is None or summary.dtmf_received == summary.answered
    return echoed and keys


def _with_flags(config: SimulatorConfig, args: argparse.Namespace) -> SimulatorConfig:
    from dataclasses import replace

    from simulator.faults import parse_fault

    switches = config.switches
    for flag, name in (
        ("duplicates", "duplicate_fraction"),
        ("reorder", "reorder_fraction"),
        ("reorder_seconds", "reorder_seconds"),
        ("batch", "batch_size"),
        ("stale", "stale_fraction"),
        ("delay", "delay_seconds"),
    ):
        value = getattr(args, flag)
        if value is not None:
            switches = replace(switches, **{name: value})
    try:
        faults = tuple(parse_fault(spec) for spec in args.graph_fault)
    except ValueError as exc:
        raise SystemExit(f"callhook sim: {exc}") from exc
    overrides: dict[str, Any] = {"switches": switches, "graph_faults": config.graph_faults + faults}
    if args.ingress_url:
        overrides["ingress_url"] = args.ingress_url
    if args.graph_host:
        overrides["graph_host"] = args.graph_host
    if args.graph_port is not None:
        overrides["graph_port"] = args.graph_port
    if args.net is not None or args.net_up is not None or args.net_down is not None:
        overrides["net"] = _net(config, args)
    return replace(config, **overrides)


def _net(config: SimulatorConfig, args: argparse.Namespace) -> Any:
    """The flags over the environment's profile: --net replaces both directions, --net-up/-down refine."""
    from simulator.net import NetProfile, parse_link

    try:
        up, down = config.net.up, config.net.down
        if args.net is not None:
            up = down = parse_link(args.net)
        return NetProfile(up=parse_link(args.net_up or "", up), down=parse_link(args.net_down or "", down))
    except ValueError as exc:
        raise SystemExit(f"callhook sim: {exc}") from exc


async def _main(config: SimulatorConfig, args: argparse.Namespace) -> ScenarioSummary | None:
    from contextlib import AsyncExitStack

    from simulator.business import EchoBusiness
    from simulator.scenario import Scenario, run_scenario
    from simulator.sim import Simulator

    scenario = Scenario(
        calls=args.calls,
        rate_per_second=args.rate,
        hold_seconds=args.hold,
        hangup=args.hangup,
        business_grace_seconds=args.business_grace,
        phone_number_id=args.phone_number_id,
        dtmf=_digits(args.dtmf),
    )
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(Simulator(config))
        hangup = None
        business: EchoBusiness | None = None
        if args.self_check:
            business = await stack.enter_async_context(
                EchoBusiness(
                    graph_url=sim.graph_url,
                    access_token=config.access_token,
                    app_secret=config.app_secret,
                    phone_number_id=args.phone_number_id or config.numbers[0].phone_number_id,
                    graph_version=config.graph_version,
                )
            )
            sim.webhooks.url = business.webhook_url
            hangup = business.hangup
        print(
            f"simulator: Graph API at {sim.graph_url} (CALLHOOK_GRAPH_URL), webhooks to {sim.webhooks.url}",
            file=sys.stderr,
        )
        if config.net.impaired:
            from simulator.net import describe

            print(
                f"simulator: phone network up (phone -> business) {describe(config.net.up)}, "
                f"down {describe(config.net.down)}",
                file=sys.stderr,
            )
        summary = await run_scenario(sim, scenario, business_hangup=hangup) if scenario.calls else None
        if summary is not None and business is not None and scenario.dtmf:
            summary.dtmf_received = sum(
                1
                for o in summary.outcomes
                if o.dtmf_pressed
                and o.call_id in business.calls
                and business.calls[o.call_id].digits == o.dtmf_pressed
            )
        if args.serve:
            await _until_interrupted()
        return summary


def _digits(text: str | None) -> str:
    from simulator.dtmf import parse_digits

    try:
        return parse_digits(text or "")
    except ValueError as exc:
        raise SystemExit(f"callhook sim: --dtmf: {exc}") from exc


async def _until_interrupted() -> None:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("simulator: serving until Ctrl-C", file=sys.stderr)
    await stop.wait()
