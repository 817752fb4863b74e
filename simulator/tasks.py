"""A TaskGroup that an object can own across ``__aenter__``/``__aexit__``.

An ``async with`` on an ``asyncio.TaskGroup`` must open and close in one task, but a test fixture may start an
object in one task and close it in another. :class:`TaskOwner` keeps the TaskGroup inside a runner task of its
own: :meth:`spawn` adds children, :meth:`close` cancels the ones marked cancellable, waits for the rest and
re-raises whatever crashed (a crash also stops the group, as TaskGroup does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from simulator.errors import SimulatorError


class TaskOwner:
    def __init__(self, name: str) -> None:
        self._name = name
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._cancellable: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        started = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(started), name=self._name)
        await started

    async def _run(self, started: asyncio.Future[None]) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            started.set_result(None)
            await self._stop.wait()
            for task in list(self._cancellable):
                task.cancel()

    @property
    def running(self) -> bool:
        return self._group is not None and self._runner is not None and not self._runner.done()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def spawn(
        self, coroutine: Coroutine[Any, Any, None], *, cancel_on_close: bool = True
    ) -> asyncio.Task[None]:
        """Run ``coroutine`` as a child; ``cancel_on_close=False`` children are waited for, not cancelled."""
        if not self.running or self._stop.is_set() or self._group is None:
            coroutine.close()
            raise SimulatorError(f"{self._name} is not running")
        task = self._group.create_task(coroutine)
        if cancel_on_close:
            self._cancellable.add(task)
            task.add_done_callback(self._cancellable.discard)
        return task

    async def close(self) -> None:
        """Cancel the cancellable children, wait for all; raises what crashed a child, if anything did."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
