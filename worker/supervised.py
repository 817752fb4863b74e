"""The lifecycle shared by the worker's long-lived parts: one task, owned, stopped on the way out."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class Supervised:
    """Runs :meth:`_run` in a TaskGroup of its own for as long as the ``async with`` block lasts.

    ``close()`` (idempotent) sets ``_closing`` and cancels the task; leaving the block closes and waits for
    it, and an exception the task raised propagates there (nothing fails silently in the background).
    """

    def __init__(self, task_name: str) -> None:
        self._task_name = task_name
        self._tg = asyncio.TaskGroup()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    async def _run(self) -> None:
        raise NotImplementedError

    def _starting(self) -> None:
        """Called inside ``async with``, just before the task starts (override to wire listeners)."""

    async def __aenter__(self) -> Self:
        await self._tg.__aenter__()
        self._starting()
        self._runner = self._tg.create_task(self._run(), name=self._task_name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        await self._tg.__aexit__(exc_type, exc, tb)

    def close(self) -> None:
        """Stop (idempotent); completes when the ``async with`` block is left."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
