"""The ``ivr`` example app on a real worker: the caller's keys route the call (1: echo, 9: goodbye, hang-up).

Real ingress, one worker with ``CALLHOOK_APP=ivr``, RabbitMQ, the simulator's phone pressing RFC 4733 keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from simulator.calls import CallState
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy
from tests.e2e.test_dtmf import TIMING, pressing

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dep(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    logs = tmp_path_factory.mktemp("ivr-logs")
    async with deploy(
        amqp_url, logs, workers=1, worker_env={"CALLHOOK_APP": "ivr"}, timing=TIMING
    ) as deployment:
        yield deployment


async def test_9_ends_the_call_from_the_business_side(dep: Deployment) -> None:
    [call] = await dep.place_calls(1)
    await pressing(call, "9")
    assert await call.wait_ended(timeout=WAIT_SECONDS) is CallState.COMPLETED
    assert call.end_reason == "business_hangup"  # the app's goodbye, then its hang-up: a terminate request
    assert [r.http_status for r in dep.sim.journal.graph_requests("terminate", call.call_id)] == [200]


async def test_1_puts_the_caller_on_the_echo(dep: Deployment) -> None:
    [call] = await dep.place_calls(1)
    await pressing(call, "1")
    await call.wait_heard(3.0, timeout=WAIT_SECONDS)
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)
    report = call.audio_report()
    assert report.matched, report  # what the phone heard is what it said: the echo
