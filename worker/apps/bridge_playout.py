"""The agent's audio and marks on their way to the caller, in the order the agent sent them.

The socket reader puts audio and marks in; :meth:`Playout.run` hands the audio to ``call.send`` (which keeps
about two seconds queued in the call's media) and reports each mark once ``call.wait_played()`` says
everything before it has been sent to the caller. So a mark is never early: audio after a mark is queued
only when the audio before it has played (a tail shorter than a 20 ms frame is padded by the media, the
only silence a mark can add).

:meth:`Playout.clear` (barge-in) drops everything not yet played at once, here and in the call's media, and
returns the marks that were pending, in order, for the agent to hear about as Twilio does.

The buffer is bounded (``capacity_seconds`` of audio ahead of the call's media): the reader waits for
:meth:`wait_space` before reading the socket again, so an agent that runs further ahead is slowed down by
TCP instead of being buffered without limit. Nothing the agent sent is dropped except by a clear.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NoReturn

from worker import audio
from worker.apps.api import Call

SEND_CHUNK_SECONDS = 0.2  # handed to call.send at a time: the media's queue stays near its 2 s mark
MARK_COST_BYTES = 64  # what a queued mark counts against the capacity (an agent could send only marks)


class Playout:
    def __init__(self, call: Call, sample_rate: int, capacity_seconds: float) -> None:
        self._call = call
        self.sample_rate = sample_rate
        self._capacity = audio.frame_bytes(sample_rate, capacity_seconds)
        self._chunk = audio.frame_bytes(sample_rate, SEND_CHUNK_SECONDS)
        self._items: deque[bytearray | str] = deque()  # audio (merged runs) and mark names
        self._buffered = 0
        self._added = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()  # nothing queued here and no mark waiting
        self._idle.set()
        self._epoch = 0  # bumped by clear(): a mark awaited in an older epoch was already reported
        self._awaiting_mark: str | None = None
        self.audio_bytes_in = 0
        self.marks_played = 0
        self.marks_cleared = 0
        self.clears = 0

    # ---------------------------------------------------------------------------------- the reader side
    def add_audio(self, pcm: bytes) -> None:
        if not pcm:
            return
        if self._items and isinstance(self._items[-1], bytearray):
            self._items[-1] += pcm
        else:
            self._items.append(bytearray(pcm))
        self.audio_bytes_in += len(pcm)
        self._grow(len(pcm))

    def add_mark(self, name: str) -> None:
        self._items.append(name)
        self._grow(MARK_COST_BYTES)

    def clear(self) -> list[str]:
        """Drop all audio not yet played; returns the marks that were pending, oldest first."""
        pending = [item for item in self._items if isinstance(item, str)]
        if self._awaiting_mark is not None:
            pending.insert(0, self._awaiting_mark)
            self._awaiting_mark = None
        self._items.clear()
        self._buffered = 0
        self._epoch += 1
        self._space.set()
        self._idle.set()
        self._call.clear()
        self.clears += 1
        self.marks_cleared += len(pending)
        return pending

    @property
    def full(self) -> bool:
        return self._buffered >= self._capacity

    async def wait_space(self) -> None:
        await self._space.wait()

    async def wait_idle(self) -> None:
        """Until everything queued so far has been played (the agent hung up and its goodbye should end)."""
        await self._idle.wait()
        await self._call.wait_played()

    # ---------------------------------------------------------------------------------- the player side
    async def run(self, report_mark: Callable[[str], Awaitable[None]]) -> NoReturn:
        """Play until cancelled; ``report_mark(name)`` once a mark's audio has played. Raises CallEnded."""
        while True:
            while not self._items:
                self._idle.set()
                self._added.clear()
                await self._added.wait()
            item = self._items[0]
            if isinstance(item, str):
                self._items.popleft()
                self._shrink(MARK_COST_BYTES)
                await self._play_mark(item, report_mark)
            else:
                chunk = bytes(item[: self._chunk])
                del item[: self._chunk]  # deleting from a bytearray's front is O(1) amortised in CPython
                if not item:
                    self._items.popleft()
                self._shrink(len(chunk))
                await self._call.send(chunk, self.sample_rate)

    async def _play_mark(self, name: str, report_mark: Callable[[str], Awaitable[None]]) -> None:
        self._awaiting_mark = name
        epoch = self._epoch
        await self._call.wait_played()
        if epoch == self._epoch:  # else a clear() came first and already handed the mark back
            self._awaiting_mark = None
            self.marks_played += 1
            await report_mark(name)

    def _grow(self, size: int) -> None:
        self._buffered += size
        self._idle.clear()
        self._added.set()
        if self._buffered >= self._capacity:
            self._space.clear()

    def _shrink(self, size: int) -> None:
        self._buffered = max(0, self._buffered - size)
        if self._buffered < self._capacity:
            self._space.set()
