"""``callhook demo``: the whole system on this machine, with simulated WhatsApp users and real audio.

Starts RabbitMQ if it is installed but not running, gives the demo a fresh virtual host, starts the ingress
and two workers as real processes, and plays Meta with the simulator: users call the business (the workers
answer with the echo app, so each caller hears itself back), and the business calls a user back. It prints
what happened to every call, from Meta's side and from the workers' metrics, and where to look next. Then one
caller dials a keypad menu (a worker running the ``ivr`` app), presses 2 (a melody) and 9 (goodbye: the
business hangs up), and the demo prints what the worker counted and did. Last, a caller presses 0 and is
put through to a person: a scripted agent answers on ``callhook console`` (simulator/demo_handoff.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ingress.commands import Dial
from simulator.config import SimulatorConfig
from simulator.demo_handoff import handoff_call
from simulator.local import ACCESS_TOKEN, APP_SECRET, System, ensure_broker, free_port, scrape
from simulator.permissions import PermissionStatus
from simulator.sim import SimulatedCall, Simulator

DEMO_VHOST = "callhook-demo"


@dataclass
class CallLine:
    call_id: str
    direction: str
    outcome: str
    pre_accept_ms: float | None
    accept_ms: float | None
    heard: str
    round_trip_ms: float | None
    # what reached the caller's socket (simulator/heard.py): echo delay per tone burst, packets lost, MOS
    delay_heard_ms: float | None = None
    loss_percent: float | None = None
    mos: float | None = None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole system here: RabbitMQ, ingress, workers, simulated calls with real audio",
        description="Start RabbitMQ (if needed), the ingress, workers and Meta's simulator on 127.0.0.1, "
        "place calls through the whole system and print what happened.",
    )
    demo.add_argument("--calls", type=int, default=5, help="incoming calls to place (default 5)")
    demo.add_argument("--hold", type=float, default=3.0, help="seconds each caller talks (default 3)")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    demo.set_defaults(handler=lambda args: asyncio.run(run(args)))


def amqp_vhost_url() -> str:
    """A fresh vhost for the demo when rabbitmqctl is at hand (a re-run starts clean), else the default."""
    if shutil.which("rabbitmqctl") is None:
        return "amqp://guest:guest@127.0.0.1:5672/"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", DEMO_VHOST], capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", DEMO_VHOST], capture_output=True, check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", DEMO_VHOST, "guest", ".*", ".*", ".*"],
        capture_output=True,
        check=True,
    )
    return f"amqp://guest:guest@127.0.0.1:5672/{DEMO_VHOST}"


async def run(args: argparse.Namespace) -> int:
    print("callhook demo: starting RabbitMQ (if needed), the ingress, workers and the simulator on 127.0.0.1")
    await asyncio.to_thread(ensure_broker)
    amqp_url = await asyncio.to_thread(amqp_vhost_url)
    graph_port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="callhook-demo-"))
    system = System(amqp_url, f"http://127.0.0.1:{graph_port}", log_dir, workers=args.workers)
    config = SimulatorConfig(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        ice_host_addresses=("127.0.0.1",),
        default_permission=PermissionStatus.TEMPORARY,
    )
    async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
        print(
            f"  ingress  {system.webhook_url}   (metrics {system.ingress.url}/metrics)"
            if system.ingress
            else ""
        )
        for worker in system.worker_processes:
            print(f"  {worker.name} metrics {worker.url}/metrics")
        print(f"  Graph API (simulated Meta) http://127.0.0.1:{graph_port}   logs in {log_dir}\n")
        lines = await _incoming_calls(sim, args.calls, args.hold)
        lines.append(await _outgoing_call(sim, system, amqp_url, args.hold))
        _print_calls(lines)
        await _print_metrics(system)
        if args.keep:
            print(
                "\nrunning until Ctrl-C (try: callhook sim --help to drive more calls at the ingress above)"
            )
            await asyncio.Event().wait()
    ivr_ok = await _keypad_call(amqp_url, config, log_dir / "ivr")
    handoff_ok = await handoff_call(amqp_url, config, log_dir / "handoff")
    failed = [line for line in lines if line.outcome != "completed" or not line.heard.startswith("yes")]
    return 1 if failed or not ivr_ok or not handoff_ok else 0


async def _keypad_call(amqp_url: str, config: SimulatorConfig, log_dir: Path) -> bool:
    """One caller on the ``ivr`` app: 2 plays a melody and the menu again, 9 says goodbye and hangs up."""
    print("\nkeypad: one more caller dials an IVR (a worker with CALLHOOK_APP=ivr) and presses keys")
    graph_port = free_port()
    system = System(
        amqp_url, f"http://127.0.0.1:{graph_port}", log_dir, workers=1, worker_env={"CALLHOOK_APP": "ivr"}
    )
    async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
        call = await sim.place_call(from_="15550108888", name="Keypad caller")
        await call.wait_state("accepted", timeout=20)
        await asyncio.sleep(1.0)  # the caller hears the menu's beeps
        await call.phone.press("2")
        print("  pressed 2: the app plays a melody, then the menu again")
        await asyncio.sleep(3.0)
        await call.phone.press("9")
        pressed_at = asyncio.get_running_loop().time()
        print("  pressed 9: the app says goodbye (three falling beeps) and hangs up")
        await call.wait_ended(timeout=20)
        after = asyncio.get_running_loop().time() - pressed_at
        async with aiohttp.ClientSession() as http:
            digits = (await scrape(http, system.worker_processes[0])).get("callhook_dtmf_digits_total", 0.0)
        print(f"  the call ended {after:.1f} s after the 9: {_outcome(call)} ({call.end_reason}); "
              f"the worker counted {digits:g} digits (callhook_dtmf_digits_total)")  # fmt: skip
        return call.end_reason == "business_hangup" and digits == 2


async def _incoming_calls(sim: Simulator, count: int, hold: float) -> list[CallLine]:
    async def one(index: int) -> CallLine:
        await asyncio.sleep(index * 0.3)  # callers arrive one after another, not all in the same instant
        call = await sim.place_call(from_=f"1555010{index:04d}", name=f"Demo caller {index + 1}")
        return await _talk(sim, call, hold, hang_up=True)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _outgoing_call(sim: Simulator, system: System, amqp_url: str, hold: float) -> CallLine:
    import aio_pika

    from ingress import contract

    user = "15550109999"
    dial = Dial(to=user, phone_number_id=sim.config.numbers[0].phone_number_id).validated()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(dial.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True)
    call = await sim.wait_for_call(user=user, timeout=15)
    return await _talk(sim, call, hold, hang_up=True)


async def _talk(sim: Simulator, call: SimulatedCall, hold: float, *, hang_up: bool) -> CallLine:
    try:
        await call.wait_state("accepted", timeout=20)
        await call.wait_heard(hold, timeout=hold + 20)
    except TimeoutError:
        pass
    report = call.audio_report()
    heard = call.phone.heard_report()
    if hang_up and not call.ended:
        await call.hangup()
    await call.wait_ended(timeout=20)
    sent = sim.journal.connect_sent_at(call.call_id)
    pre_accept = sim.journal.first_request(call.call_id, "pre_accept")
    accept = sim.journal.first_request(call.call_id, "accept")
    return CallLine(
        call_id=call.call_id,
        direction=str(call.direction),
        outcome=_outcome(call),
        pre_accept_ms=_ms(pre_accept.received_at - sent) if pre_accept and sent else None,
        accept_ms=_ms(accept.received_at - sent) if accept and sent else None,
        heard=f"yes ({report.correlation:.2f})" if report.matched else "no",
        round_trip_ms=_ms(report.round_trip_seconds) if report.round_trip_seconds else None,
        delay_heard_ms=_ms(heard.delay_median_seconds),
        loss_percent=round(100 * heard.loss_fraction, 1),
        mos=heard.mos,
    )


def _outcome(call: SimulatedCall) -> str:
    return str(call.state) + (
        "" if call.end_reason is None or call.state == "completed" else f": {call.end_reason}"
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _print_calls(lines: list[CallLine]) -> None:
    print(f"{'call id':<40} {'direction':<9} {'outcome':<10} {'pre_accept':>10} {'accept':>8} "
          f"{'heard itself':>13} {'round trip':>10} {'delay heard':>11} {'loss':>6} {'MOS':>4}")  # fmt: skip
    for line in lines:
        loss = "-" if line.loss_percent is None else f"{line.loss_percent:.1f}%"
        mos = "-" if line.mos is None else f"{line.mos:.1f}"
        print(
            f"{line.call_id[:40]:<40} {line.direction:<9} {line.outcome:<10} {_fmt(line.pre_accept_ms):>10} "
            f"{_fmt(line.accept_ms):>8} {line.heard:>13} {_fmt(line.round_trip_ms):>10} "
            f"{_fmt(line.delay_heard_ms):>11} {loss:>6} {mos:>4}"
        )
    print("(pre_accept/accept: ms from Meta sending the connect webhook to the Graph API request; "
          "round trip: the caller's audio back at the caller through the echo app;\n delay heard, loss, MOS: "
          "at the caller's socket, per tone burst and packet, before the phone's jitter buffer)")  # fmt: skip


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


async def _print_metrics(system: System) -> None:
    wanted = ("callhook_calls_total", "callhook_call_setup_seconds_count", "callhook_media_frames_total")
    async with aiohttp.ClientSession() as http:
        for worker in system.worker_processes:
            samples = await scrape(http, worker)
            shown = {k: v for k, v in samples.items() if k.startswith(wanted) and v}
            print(f"\n{worker.name} ({worker.url}/metrics):")
            for key, value in sorted(shown.items()):
                print(f"  {key} {value:g}")
