"""Keypad digits end to end: the simulated phone presses keys (RFC 4733 on its network), a real worker hears.

Real ingress, one worker, RabbitMQ, the simulator as Meta. The phone sends its presses the way a phone does
(start, updates every 50 ms, three end packets; simulator.dtmf) on the payload type the worker's answer kept.
The app (``tests/fixtures/keypad_apps.py``) writes what ``call.dtmf()`` gives it to a file (the voice-agent
bridge: ``test_dtmf_bridge.py``). With 5 % of the phone's packets towards the business lost on the way, no key
press is lost (each is carried by several packets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio

from ingress import contract
from ingress.commands import Dial
from simulator.calls import CallState
from simulator.config import CallTiming
from simulator.net import NetProfile, parse_link
from simulator.sim import SimulatedCall
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy, poll
from tests.fixtures.keypad_apps import digits_path

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMING = CallTiming(start_silence_seconds=20.0, midcall_silence_seconds=20.0)


async def pressing(call: SimulatedCall, keys: str) -> None:
    """Once the call is answered and the phone's audio flows, press ``keys``."""
    await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)

    async def audio_flowing() -> bool:
        return call.phone.rtp.ssrc is not None  # the phone sent audio: its key presses have a stream

    await poll(audio_flowing, bool)
    await call.phone.press(keys)


# -------------------------------------------------------------------------------------------- the app
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_dep(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Deployment, Path]]:
    digits = tmp_path_factory.mktemp("digits")
    env = {
        "CALLHOOK_APP": "tests.fixtures.keypad_apps:digits_to_file",
        "CALLHOOK_TEST_DIGITS_DIR": str(digits),
    }
    logs = tmp_path_factory.mktemp("dtmf-logs")
    async with deploy(amqp_url, logs, workers=1, worker_env=env, timing=TIMING) as dep:
        yield dep, digits


async def app_heard(digits: Path, call: SimulatedCall, expected: str) -> str:
    path = digits_path(digits, call.call_id)

    async def read() -> str:
        return path.read_text() if path.exists() else ""

    try:
        return await poll(read, lambda text: len(text) >= len(expected))
    except TimeoutError:
        return await read()


async def test_the_app_gets_the_keys_in_order(app_dep: tuple[Deployment, Path]) -> None:
    dep, digits = app_dep
    [worker] = dep.workers
    before = (await dep.samples(worker)).value("callhook_dtmf_digits_total")
    [call] = await dep.place_calls(1)
    await pressing(call, "123#")
    assert await app_heard(digits, call, "123#") == "123#"
    assert (await dep.samples(worker)).value("callhook_dtmf_digits_total") == before + 4
    logs = worker.log()
    assert '"digit"' not in logs  # a digit may be a PIN: never logged at info
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)


async def test_five_percent_loss_on_the_phones_path_loses_no_key(app_dep: tuple[Deployment, Path]) -> None:
    dep, digits = app_dep
    keys = "0123456789*#"
    call = await dep.sim.place_call("15559000013", net=NetProfile(up=parse_link("loss=5%")))
    await pressing(call, keys)
    assert await app_heard(digits, call, keys) == keys
    up = call.phone.net.up.stats
    assert up.lost > 0.02 * up.datagrams  # the link really lost packets on the way to the business
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)


async def test_the_callee_of_an_outgoing_call_can_press_keys(app_dep: tuple[Deployment, Path]) -> None:
    dep, digits = app_dep
    user = "15559000077"
    dep.sim.set_permission(user, "temporary")
    dial = Dial(to=user, phone_number_id=dep.sim.config.numbers[0].phone_number_id).validated()
    async with await aio_pika.connect(dep.system.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(dial.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True)
    call = await dep.sim.wait_for_call(user=user, timeout=WAIT_SECONDS)
    await pressing(call, "*0#")  # on the payload type of the business's offer (126)
    assert await app_heard(digits, call, "*0#") == "*0#"
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)
