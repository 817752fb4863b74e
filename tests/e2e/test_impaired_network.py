"""A call through a real worker on a lossy phone network still echoes the caller, with a bounded delay.

Real ingress, one echo worker, RabbitMQ, the simulator as Meta; the phone's datagrams towards the business
lose 5 % (seeded) on the way. What the caller heard is judged at the phone's socket (simulator.heard): the
echo of most tone bursts comes back recognisably, the business -> phone direction loses nothing, and the
echo's delay stays below a loose bound (a value, not a timing of the test: the bench has the real figures).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from simulator.calls import CallState
from simulator.config import CallTiming
from simulator.net import NetProfile, parse_link
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WORKER_ENV = {"CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dep(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    logs = tmp_path_factory.mktemp("impaired-logs")
    timing = CallTiming(start_silence_seconds=10.0, midcall_silence_seconds=10.0)
    async with deploy(amqp_url, logs, workers=1, worker_env=WORKER_ENV, timing=timing) as deployment:
        yield deployment


async def test_five_percent_loss_towards_the_business_still_echoes_the_caller(dep: Deployment) -> None:
    call = await dep.sim.place_call("15559000001", net=NetProfile(up=parse_link("loss=5%")))
    await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
    await call.wait_heard(10.0, timeout=WAIT_SECONDS)
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)

    up = call.phone.net.up.stats
    assert up.lost > 0.02 * up.datagrams  # the link really lost packets on the way to the business
    heard = call.phone.heard_report()
    assert heard.bursts_sent >= 8
    # The echo kept coming back, burst by burst (a burst whose first tone was concealed is not counted).
    assert heard.bursts_heard >= 0.8 * heard.bursts_sent, heard
    assert heard.packets_lost == 0, heard  # the way back was clean: nothing missing at the phone's socket
    assert heard.delay_median_seconds is not None
    assert heard.delay_median_seconds < 1.0, heard  # bounded, loosely: the bench has the real figures
    assert heard.mos is not None
    assert heard.mos > 3.0, heard
