"""Workers going away with calls on them: SIGTERM drains, SIGKILL leaves the calls to Meta's timers.

One ingress and one simulator for the module; each test starts the workers it needs, in an order that decides
which worker gets which calls (a worker takes new calls only while it is the one consuming, or has room), and
stops them again. Meta's silence timers are short here: a phone hangs up after 3 s without audio.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from simulator.calls import CallState
from simulator.config import CallTiming
from simulator.sim import SimulatedCall
from tests.e2e.harness import WAIT_SECONDS, Deployment, all_of, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SILENCE_SECONDS = 3.0
TIMING = CallTiming(start_silence_seconds=SILENCE_SECONDS, midcall_silence_seconds=SILENCE_SECONDS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dep(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    logs = tmp_path_factory.mktemp("shutdown-logs")
    async with deploy(amqp_url, logs, workers=0, timing=TIMING) as deployment:
        yield deployment


async def answered(calls: list[SimulatedCall], heard_seconds: float = 1.0) -> None:
    await all_of(*(c.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS) for c in calls))
    await all_of(*(c.wait_heard(heard_seconds, timeout=WAIT_SECONDS) for c in calls))


async def keep_hearing(calls: list[SimulatedCall], seconds: float = 1.0) -> None:
    """Each phone hears ``seconds`` more of the business's audio from now on."""
    await all_of(*(c.wait_heard(c.phone.seconds_heard + seconds, timeout=WAIT_SECONDS) for c in calls))


async def hang_up(calls: list[SimulatedCall]) -> None:
    for call in calls:
        await call.hangup()
    await all_of(*(c.wait_ended(timeout=WAIT_SECONDS) for c in calls))


def assert_echoed(calls: list[SimulatedCall]) -> None:
    for call in calls:
        report = call.audio_report()
        assert report.matched, (call.call_id, report)


async def test_sigterm_keeps_live_calls_until_the_phones_hang_up_then_exits_0(dep: Deployment) -> None:
    draining = await dep.start_worker(CALLHOOK_DRAIN_TIMEOUT_SECONDS="60")
    live = await dep.place_calls(3)
    await answered(live)
    other = await dep.start_worker()

    draining.signal(signal.SIGTERM)

    await dep.wait_not_ready(draining)
    samples = await dep.samples(draining)
    assert samples.value("callhook_worker_draining") == 1.0
    assert samples.value("callhook_calls_active") == 3.0
    # New calls go to the other worker: the draining one stopped taking calls although it has room.
    new = await dep.place_calls(2)
    await answered(new)
    await dep.wait_values("callhook_calls_active", lambda now: now == [3.0, 2.0], [draining, other])
    # The live calls go on with their audio, and the worker waits for them.
    await keep_hearing(live)
    assert draining.alive()

    await hang_up(live)

    assert await dep.wait_exit(draining) == 0
    assert_echoed(live)
    for call in live:
        assert (call.state, call.end_reason) == (CallState.COMPLETED, "phone_hangup")
        assert dep.sim.journal.graph_requests("reject", call.call_id) == []
    await hang_up(new)
    assert_echoed(new)
    assert await dep.stop_worker(other) == 0


async def test_sigterm_hangs_up_the_calls_left_at_the_drain_timeout_then_exits_0(dep: Deployment) -> None:
    worker = await dep.start_worker(CALLHOOK_DRAIN_TIMEOUT_SECONDS="1")
    calls = await dep.place_calls(3)
    await answered(calls)

    worker.signal(signal.SIGTERM)

    await all_of(*(c.wait_ended(timeout=WAIT_SECONDS) for c in calls))
    for call in calls:
        assert (call.state, call.end_reason) == (CallState.COMPLETED, "business_hangup")
        terminates = dep.sim.journal.graph_requests("terminate", call.call_id)
        assert [r.http_status for r in terminates] == [200]
    assert await dep.wait_exit(worker) == 0
    assert_echoed(calls)  # audio flowed until the business hung up
    for call in calls:
        [ended] = dep.log_records(call.call_id, msg="call ended")
        assert (ended["outcome"], ended["reason"]) == ("completed", "worker shutting down")


async def test_sigkill_leaves_its_calls_to_metas_timers_and_spares_the_other_workers(dep: Deployment) -> None:
    doomed = await dep.start_worker(CALLHOOK_MAX_CALLS="2")
    doomed_calls = await dep.place_calls(2)
    await answered(doomed_calls, heard_seconds=0.5)
    survivor = await dep.start_worker()
    survivor_calls = await dep.place_calls(2)  # the doomed worker is full: these go to the survivor
    await answered(survivor_calls, heard_seconds=0.5)
    await dep.wait_values("callhook_calls_active", lambda now: now == [2.0, 2.0], [doomed, survivor])
    [tombstones] = await dep.values("callhook_call_claims_total", [survivor], outcome="tombstone")

    doomed.popen.kill()

    assert await dep.wait_exit(doomed) == -signal.SIGKILL
    # Meta's side hears silence and hangs up; its terminate webhooks go to the killed worker's mailboxes,
    # which outlive it (until x-expires, docs/routing.md) and keep absorbing these calls' events, a late
    # connect included: the survivor never sees them, not even to make a tombstone.
    await all_of(*(c.wait_ended(timeout=WAIT_SECONDS) for c in doomed_calls))
    for call in doomed_calls:
        assert (call.state, call.end_reason) == (CallState.FAILED, "media_timeout")
        await dep.sim.journal.wait_for_delivery("terminate", call_id=call.call_id, timeout=WAIT_SECONDS)
    assert await dep.values("callhook_call_claims_total", [survivor], outcome="tombstone") == [tombstones]
    # The survivor's calls were not disturbed, and it answers new ones.
    await keep_hearing(survivor_calls)
    new = await dep.place_calls(1)
    await answered(new)
    await hang_up([*survivor_calls, *new])
    assert_echoed([*survivor_calls, *new])
    assert await dep.wait_values("callhook_calls_active", lambda now: now == [0.0], [survivor]) == [0.0]
    assert await asyncio.wait_for(dep.stop_worker(survivor), WAIT_SECONDS) == 0
