"""Hand a call to a person, end to end: the ivr's "0", a scripted agent on the console, queues that never
keep a ghost, and the maximum wait's fallback.

Real ingress, real workers (app ``ivr:1=echo,0=transfer:support``), ``callhook console`` as a process, the
simulator as Meta (its phone presses the keys) and :class:`simulator.agent.ScriptedAgent` doing what the page
does (the page itself is driven by Chromium in test_handoff_console.py). Lifecycle events are read from
``callhook.events`` as an integrator would.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
import pytest_asyncio

from ingress import contract
from simulator.agent import ScriptedAgent, TakeRefused
from simulator.config import CallTiming
from simulator.local import Process, free_port, wait_ready
from simulator.signal import FREQUENCIES_HZ
from simulator.sim import SimulatedCall
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy, poll
from tests.e2e.test_dtmf import pressing

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

AGENTS = "alice:alice-token:support;bob:bob-token:*"
WORKER_ENV = {
    "CALLHOOK_APP": "ivr:1=echo,0=transfer:support",
    "CALLHOOK_HANDOFF_HEARTBEAT_SECONDS": "0.5",
    "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5",
}
TIMING = CallTiming(start_silence_seconds=20.0, midcall_silence_seconds=20.0)


class Lifecycle:
    def __init__(self) -> None:
        self.by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Condition()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        async with self._changed:
            self.by_call[event["call_id"]].append(event)
            self._changed.notify_all()
        await message.ack()

    async def wait_event(self, call_id: str, name: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_SECONDS), self._changed:
            await self._changed.wait_for(lambda: any(e["event"] == name for e in self.by_call[call_id]))
        return next(e for e in self.by_call[call_id] if e["event"] == name)

    def names(self, call_id: str) -> list[str]:
        return [e["event"] for e in self.by_call[call_id]]


@dataclass
class Setup:
    dep: Deployment
    console: Process
    lifecycle: Lifecycle


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    logs = tmp_path_factory.mktemp("handoff-e2e-logs")
    lifecycle = Lifecycle()
    async with deploy(amqp_url, logs, workers=1, worker_env=WORKER_ENV, timing=TIMING) as dep:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(contract.EVENTS_EXCHANGE, routing_key="call.*")
            await queue.consume(lifecycle.on_message)
            port = free_port()
            env = dep.system.base_env() | {
                "CALLHOOK_CONSOLE_AGENTS": AGENTS,
                "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
                "CALLHOOK_CONSOLE_PORT": str(port),
            }
            console = dep.system._spawn("console", "console", env, port)
            try:
                await wait_ready(dep.http, console)
                yield Setup(dep, console, lifecycle)
            finally:
                console.popen.terminate()
                console.popen.wait(10)


async def press_zero(setup: Setup) -> SimulatedCall:
    (call,) = await setup.dep.place_calls(1)
    await pressing(call, "0")
    return call


def near(hz: float, targets: tuple[float, ...], tolerance: float = 30.0) -> bool:
    return any(abs(hz - t) < tolerance for t in targets)


async def test_ivr_zero_puts_the_caller_through_to_an_agent(setup: Setup) -> None:
    async with ScriptedAgent(setup.console.url, "alice-token") as alice:
        call = await press_zero(setup)
        entry = await alice.wait_for_call(call.call_id)
        assert (entry["queue"], entry["reason"], entry["digits"]) == ("support", "pressed 0", "0")
        assert entry["context"] == {"menu": "ivr"}
        await alice.take(call.call_id)
        # Both ways: the agent hears the phone's tones; the phone hears the agent's 1750 Hz.
        await poll(_value(alice.dominant_frequency), lambda hz: near(hz, FREQUENCIES_HZ))
        await poll(_value(lambda: _phone_frequency(call)), lambda hz: near(hz, (1750.0,)))
        answered = await setup.lifecycle.wait_event(call.call_id, "agent_answered")
        assert (answered["queue"], answered["agent"]) == ("support", "alice")
        await alice.hang_up()
        await call.wait_ended(timeout=WAIT_SECONDS)
        assert [r.http_status for r in setup.dep.sim.journal.graph_requests("terminate", call.call_id)] == [
            200
        ]
        await setup.lifecycle.wait_event(call.call_id, "ended")
        names = setup.lifecycle.names(call.call_id)
        assert names.index("transferred") < names.index("queued") < names.index("agent_answered")
        assert "abandoned_in_queue" not in names
    (answered_count,) = await setup.dep.values(
        "callhook_handoff_time_to_answer_seconds_count", queue="support"
    )
    assert answered_count >= 1
    # The phone's and the agent's legs both negotiated Opus/48000: the relay forwarded, not transcoded.
    (forwarded,) = await setup.dep.values("callhook_handoff_relays_total", mode="forwarded")
    (transcoded,) = await setup.dep.values("callhook_handoff_relays_total", mode="transcoded")
    assert forwarded >= 1
    assert transcoded == 0


async def test_a_taken_call_is_refused_to_the_next_agent(setup: Setup) -> None:
    async with (
        ScriptedAgent(setup.console.url, "alice-token") as alice,
        ScriptedAgent(setup.console.url, "bob-token") as bob,
    ):
        call = await press_zero(setup)
        await alice.wait_for_call(call.call_id)
        await bob.wait_for_call(call.call_id)
        await alice.take(call.call_id)
        with pytest.raises(TakeRefused) as refused:
            await bob.take(call.call_id)
        assert refused.value.reason in ("taken", "gone")
        await bob.wait_gone(call.call_id)
        await call.hangup()
        assert await alice.wait_ended() in ("caller hung up", "call ended")


async def test_caller_hanging_up_in_the_queue_is_abandoned(setup: Setup) -> None:
    async with ScriptedAgent(setup.console.url, "bob-token") as bob:
        call = await press_zero(setup)
        await bob.wait_for_call(call.call_id)
        await call.hangup()
        await bob.wait_gone(call.call_id)
        abandoned = await setup.lifecycle.wait_event(call.call_id, "abandoned_in_queue")
        assert abandoned["queue"] == "support"
        assert "agent_answered" not in setup.lifecycle.names(call.call_id)


async def test_a_killed_worker_leaves_no_ghost_in_the_queue(setup: Setup) -> None:
    async with ScriptedAgent(setup.console.url, "bob-token") as bob:
        call = await press_zero(setup)
        await bob.wait_for_call(call.call_id)
        (worker,) = setup.dep.workers
        worker.signal(signal.SIGKILL)  # no "left" is ever sent: the entry's lease runs out
        await setup.dep.wait_exit(worker)
        await bob.wait_gone(call.call_id)
        with pytest.raises(TakeRefused) as refused:  # nobody owns it any more: the broker returns the take
            await bob.take(call.call_id)
        assert refused.value.reason == "gone"
    await setup.dep.start_worker()  # for the tests after this one


async def test_the_maximum_wait_runs_the_fallback(setup: Setup) -> None:
    for worker in setup.dep.workers:
        await setup.dep.stop_worker(worker)
    await setup.dep.start_worker(CALLHOOK_HANDOFF_MAX_WAIT_SECONDS="1", CALLHOOK_HANDOFF_FALLBACK="hangup")
    async with ScriptedAgent(setup.console.url, "bob-token") as bob:
        call = await press_zero(setup)
        await bob.wait_for_call(call.call_id)
        await bob.wait_gone(call.call_id)  # nobody took it within a second
        await call.wait_ended(timeout=WAIT_SECONDS)
        assert [r.http_status for r in setup.dep.sim.journal.graph_requests("terminate", call.call_id)] == [
            200
        ]
    (timeouts,) = await setup.dep.values(
        "callhook_handoff_wait_seconds_count", queue="support", outcome="timeout"
    )
    assert timeouts == 1


def terminates(setup: Setup, call: SimulatedCall) -> list[int]:
    return [r.http_status for r in setup.dep.sim.journal.graph_requests("terminate", call.call_id)]


def _phone_frequency(call: SimulatedCall) -> float:
    import numpy as np

    heard = call.phone.recording().heard[-6400:]
    if len(heard) < 1600 or float(np.sqrt(np.mean(heard**2))) < 0.01:
        return 0.0
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(len(heard))))
    return float(np.fft.rfftfreq(len(heard), 1 / 16000)[int(np.argmax(spectrum))])


def _value(read: Any) -> Any:
    async def reader() -> float:
        return float(read())

    return reader
