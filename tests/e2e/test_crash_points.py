"""A worker killed at each point of an incoming call's setup: the call is answered exactly once (by another
worker) or ended with a reject/terminate; never answered twice, never left to ring out.

The victim is a real worker process with ``CALLHOOK_TEST_CRASH_AT=<point>`` (worker/crashpoints.py): it
``os._exit``s, as abruptly as SIGKILL, the first time it reaches that point. Only then does the heir start, so
the call is surely the victim's first. Meta is the simulator: its journal of Graph requests is the evidence.

- after_claim, after_answer_sdp: nothing was sent to Meta and the connect was not settled: it is redelivered,
  the heir takes the mailbox over (no answer marker) and answers the call.
- after_pre_accept, after_accept: the victim fenced (the marker holds a record) and never settled the
  connect: the heir gets it again, finds the marker and terminates the call instead of answering it twice
  (after accept, Meta may notice the dead media first and end the call itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from simulator.calls import CallState
from simulator.config import CallTiming
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy
from worker.crashpoints import ENV, EXIT_CODE

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WORKER_ENV = {
    "CALLHOOK_MEDIA_CONNECT_TIMEOUT_SECONDS": "3",
    "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "3",
}
# Meta rings for 30 s here, the answer window the heir has (it starts once the victim is gone).
TIMING = CallTiming(answer_window_seconds=30.0, start_silence_seconds=5.0, midcall_silence_seconds=5.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dep(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    logs = tmp_path_factory.mktemp("crash-logs")
    async with deploy(amqp_url, logs, workers=0, worker_env=WORKER_ENV, timing=TIMING) as deployment:
        yield deployment


def ok(dep: Deployment, action: str, call_id: str) -> int:
    """How many of the business's ``action`` requests for the call Meta accepted (HTTP 200)."""
    return sum(r.http_status == 200 for r in dep.sim.journal.graph_requests(action, call_id))


@pytest.mark.parametrize(
    ("point", "answered_by_heir"),
    [
        ("after_claim", True),
        ("after_answer_sdp", True),
        ("after_pre_accept", False),
        ("after_accept", False),
    ],
)
async def test_a_worker_killed_during_setup_never_answers_twice_nor_lets_it_ring_out(
    dep: Deployment, point: str, answered_by_heir: bool
) -> None:
    victim = await dep.start_worker(**{ENV: point})
    [call] = await dep.place_calls(1)
    assert await dep.wait_exit(victim) == EXIT_CODE
    heir = await dep.start_worker()
    try:
        if answered_by_heir:
            await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
            await call.wait_heard(0.5, timeout=WAIT_SECONDS)  # the heir carries the call, media and all
            await call.hangup()
        await call.wait_ended(timeout=WAIT_SECONDS)
        assert call.end_reason != "unanswered"  # never rang out
        assert ok(dep, "pre_accept", call.call_id) == 1  # answered exactly once
        assert ok(dep, "accept", call.call_id) == (1 if answered_by_heir or point == "after_accept" else 0)
        if answered_by_heir:
            assert call.end_reason == "phone_hangup"
        else:  # given up by the heir: the call may have been answered already
            await dep.wait_values(
                "callhook_call_claims_total", lambda v: v == [1.0], [heir], outcome="abandoned"
            )
            assert ok(dep, "terminate", call.call_id) <= 1
            # Ended by the heir's terminate, or (answered, its media gone with the victim) by Meta noticing
            # the silence first, whichever came sooner.
            ended_by = {"business_cancelled", "business_hangup", "no_media", "media_timeout"}
            assert call.end_reason in ended_by, call.end_reason
            if point == "after_pre_accept":
                assert ok(dep, "terminate", call.call_id) == 1
    finally:
        await dep.stop_worker(heir)
