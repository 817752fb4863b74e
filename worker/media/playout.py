"""One playout clock per worker: a single 20 ms tick drives the audio of every live call.

aiortc gives each call a decoder thread, a thread hop per frame, a task per track and a timer per frame sent.
Here one task wakes every 20 ms (on the loop's clock, drift-free: the schedule is ``start + n * 20 ms``, not
"sleep 20 ms after the last tick") and calls :meth:`Ticking.tick` on every registered call, which pulls one
frame from the call's jitter buffer, decodes it in the loop and hands the PCM to the app's bounded queue;
after one pass of the loop (the apps react) :meth:`Ticking.tick_send` encodes the next 20 ms each app queued
for aiortc's sender. The worker's cost grows with frames, not with
asyncio bookkeeping, and a slow app cannot hold the tick up: its queue drops the oldest frame.

Time is ``time.monotonic()``, the clock the seam stamps packet arrivals with, not ``loop.time()``: uvloop's
is libuv's loop time, cached once per loop iteration at millisecond resolution, so packets handled late in a
long iteration would be stamped as early as its start (asyncio's ``loop.time()`` is ``time.monotonic()``).

A loop stalled for longer than :data:`MAX_CATCH_UP_SECONDS` does not produce a burst of ticks afterwards: the
schedule restarts from now and the skipped ticks are counted. A shorter stall is caught up tick by tick, so
the calls' audio keeps its 50 frames per second. How late each tick ran goes to
``callhook_media_tick_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Protocol

from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

TICK_SECONDS = 0.020
MAX_CATCH_UP_SECONDS = 0.200
# Loop passes from a datagram in the socket to its packet in the jitter buffer: aioice reads it, aiortc's DTLS
# receive task (woken through its queue) decrypts it and the seam hands it over.
_YIELDS_AFTER_A_STALL = 3


class Ticking(Protocol):
    """A call's audio as the clock sees it."""

    def tick(self, now: float) -> None:
        """One 20 ms step of the receive side. ``now`` is the tick's *scheduled* time on the loop's clock (the
        clock packet arrivals are stamped with): the playout clock is the call's sound card, which consumes
        one frame every 20 ms exactly. A tick that runs late (and the catch-up ticks after a stall, which run
        back to back) must not look to the jitter buffer as if playout itself had slipped: that would make it
        drop frames to "catch up" after every hiccup of the loop. Must not block."""

    def tick_send(self) -> None:
        """The same step's send side, after the apps had their turn (see :meth:`PlayoutClock._run`)."""

    def tick_failed(self, error: BaseException) -> None:
        """``tick`` raised: the call's audio is broken (a bug); it has been removed from the clock."""


class PlayoutClock:
    """Ticks every :data:`TICK_SECONDS` while at least one call is registered; idle otherwise.

    Use one per worker process (:func:`shared_clock` gives the running loop's); create and use it inside
    that loop. :meth:`add` and :meth:`discard` are cheap and may be called from a tick.
    """

    def __init__(self, metrics: WorkerMetrics | None = None, *, period: float = TICK_SECONDS) -> None:
        self._metrics = metrics
        self._period = period
        self._calls: dict[Ticking, None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.skipped_ticks = 0
        self.max_lag_seconds = 0.0
        self.started_at = 0.0  # the current schedule: ticks are due at started_at + n * period
        self.next_due = 0.0

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: Ticking) -> None:
        self._calls[call] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-playout")

    def discard(self, call: Ticking) -> None:
        self._calls.pop(call, None)

    async def close(self) -> None:
        """Stop ticking (the worker is shutting down); registered calls are forgotten."""
        self._calls.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        period = self._period
        observe = self._metrics.media_tick_lag.observe if self._metrics is not None else None
        clock = time.monotonic
        due = self.started_at = clock()
        while self._calls:
            if clock() - due > period:
                # Woken a tick or more late: the loop stalled, and the calls' packets of that time are still
                # in the sockets. Let the loop read them before playing the missed ticks, so those ticks play
                # the audio rather than conceal it and then drop the real packets as stale.
                for _ in range(_YIELDS_AFTER_A_STALL):
                    await asyncio.sleep(0)
            now = clock()
            lag = now - due
            if lag > MAX_CATCH_UP_SECONDS:
                skipped = int(lag / period)
                self.skipped_ticks += skipped
                if self._metrics is not None:
                    self._metrics.media_ticks_skipped.inc(skipped)
                due += skipped * period
                lag = now - due
            if lag > self.max_lag_seconds:
                self.max_lag_seconds = lag
            if observe is not None:
                observe(lag)
            self._tick(due)
            due += period
            self.next_due = due
            # One pass of the loop: the apps woken by this tick's frames run now (an echo, a relay queues
            # its reply at once), so the send side below takes their audio in this tick, not 20 ms later.
            await asyncio.sleep(0)
            self._tick_send()
            delay = due - clock()
            # sleep(0) when behind: the missed ticks run back to back, yielding to the loop in between.
            await asyncio.sleep(delay if delay > 0 else 0)

    def _tick(self, now: float) -> None:
        self.ticks += 1
        for call in list(self._calls):
            try:
                call.tick(now)
            except Exception as exc:  # one call's bug must not stop the others' audio
                self._failed(call, exc)

    def _tick_send(self) -> None:
        for call in list(self._calls):
            try:
                call.tick_send()
            except Exception as exc:
                self._failed(call, exc)

    def _failed(self, call: Ticking, error: Exception) -> None:
        self._calls.pop(call, None)
        log.exception("media tick failed")
        call.tick_failed(error)


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PlayoutClock] = weakref.WeakKeyDictionary()


def shared_clock(metrics: WorkerMetrics | None = None) -> PlayoutClock:
    """The running loop's playout clock, created on first use (with ``metrics`` if given then)."""
    loop = asyncio.get_running_loop()
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = PlayoutClock(metrics)
    elif metrics is not None and clock._metrics is None:
        clock._metrics = metrics
    return clock
