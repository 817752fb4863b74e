"""The worker's playout clock (worker/media/playout.py): one drift-free 20 ms tick for every call."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from worker.media.playout import TICK_SECONDS, PlayoutClock, shared_clock
from worker.metrics import WorkerMetrics


class Call:
    """Records the scheduled times it was ticked at; stops the test after ``until`` ticks."""

    def __init__(self, until: int = 10, fail_at: int | None = None) -> None:
        self.ticks: list[float] = []
        self.sent = 0
        self.failed: BaseException | None = None
        self.done = asyncio.Event()
        self._until = until
        self._fail_at = fail_at

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if len(self.ticks) == self._fail_at:
            raise RuntimeError("a bug in this call")
        if len(self.ticks) >= self._until:
            self.done.set()

    def tick_send(self) -> None:
        self.sent += 1

    def tick_failed(self, error: BaseException) -> None:
        self.failed = error
        self.done.set()


async def test_one_tick_serves_every_call_on_a_drift_free_schedule() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    clock = PlayoutClock(metrics)
    first, second = Call(until=20), Call(until=20)
    clock.add(first)
    clock.add(second)
    async with asyncio.timeout(10):
        await first.done.wait()
        await second.done.wait()
    await clock.close()
    # Both calls are ticked by the same tick, at its scheduled time: start + n * 20 ms whatever the loop's
    # lateness (the schedule never slips by how late a tick ran).
    assert first.ticks[:20] == second.ticks[:20]
    start = clock.started_at
    assert first.ticks[:20] == [pytest.approx(start + n * TICK_SECONDS, abs=1e-9) for n in range(20)]
    assert clock.next_due == pytest.approx(
        clock.started_at + (clock.ticks + clock.skipped_ticks) * TICK_SECONDS, abs=1e-9
    )
    observed = metrics.registry.get_sample_value("callhook_media_tick_lag_seconds_count")
    assert observed is not None
    assert observed >= 20


async def test_a_failing_call_is_dropped_and_the_others_keep_ticking() -> None:
    clock = PlayoutClock()
    broken, healthy = Call(until=1000, fail_at=3), Call(until=10)
    clock.add(broken)
    clock.add(healthy)
    async with asyncio.timeout(10):
        await healthy.done.wait()
    assert isinstance(broken.failed, RuntimeError)
    assert len(broken.ticks) == 3
    assert len(clock) == 1
    await clock.close()


async def test_the_clock_stops_when_no_call_is_left_and_starts_again() -> None:
    clock = PlayoutClock()
    call = Call(until=3)
    clock.add(call)
    async with asyncio.timeout(10):
        await call.done.wait()
    task = clock._task
    clock.discard(call)
    assert task is not None
    async with asyncio.timeout(10):
        await task  # the tick task ends by itself once no call is registered
    again = Call(until=3)
    clock.add(again)
    async with asyncio.timeout(10):
        await again.done.wait()
    await clock.close()
    assert clock._task is None


async def test_one_shared_clock_per_loop() -> None:
    assert shared_clock() is shared_clock()


async def test_the_send_side_takes_what_an_app_queued_in_reaction_to_the_same_tick() -> None:
    """An echo's reply leaves in the tick that delivered the frame it answers, not 20 ms later."""

    class Echoing:
        def __init__(self) -> None:
            self.frame_ready = asyncio.Event()
            self.queued: list[int] = []  # what the "app" queued, by tick number
            self.sent: list[tuple[int, list[int]]] = []  # (tick, what was queued when the send side ran)
            self.done = asyncio.Event()
            self.count = 0

        def tick(self, now: float) -> None:
            self.count += 1
            self.frame_ready.set()

        def tick_send(self) -> None:
            self.sent.append((self.count, list(self.queued)))
            if self.count >= 5:
                self.done.set()

        def tick_failed(self, error: BaseException) -> None:
            raise AssertionError(error)

    call = Echoing()

    async def app() -> None:
        while True:
            await call.frame_ready.wait()
            call.frame_ready.clear()
            call.queued.append(call.count)

    clock = PlayoutClock()
    task = asyncio.get_running_loop().create_task(app())
    clock.add(call)
    async with asyncio.timeout(10):
        await call.done.wait()
    await clock.close()
    task.cancel()
    assert all(queued and queued[-1] == tick for tick, queued in call.sent), call.sent
