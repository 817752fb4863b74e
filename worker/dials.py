"""Taking outgoing-call commands (``callhook.dials``) only while this worker has room for another call.

A dial holds one unit of capacity (an :class:`worker.ownership.Reservation`) from the moment it is taken until
its call ends. The consumer runs only while there is room: it is cancelled when a dial finds the worker full
(the dial goes back to the queue for another worker) and started again when a call ends here.

The dial message is acked just before ``connect`` is sent, not when it is taken: a worker that dies before
that point leaves the dial in the queue for another worker, and one that dies after it can never cause a
second call to the same person (``connect`` is never repeated when its outcome is unknown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage

from ingress import contract
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, settle
from worker.errors import TransientError
from worker.events import DialRequest, dial_decoder
from worker.metrics import WorkerMetrics
from worker.ownership import Ownership, Reservation
from worker.supervised import Supervised

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[None]]
StartDial = Callable[[DialRequest, Reservation, Ack], None]


class DialIntake(Supervised):
    """``async with DialIntake(link, ownership, start_dial, metrics)``: follows the ownership's room and
    draining (:meth:`Ownership.watch_room`), so it takes dials exactly while a call could be owned."""

    def __init__(
        self, link: AmqpLink, ownership: Ownership, start_dial: StartDial, metrics: WorkerMetrics
    ) -> None:
        super().__init__("dial-intake")
        self._link = link
        self._ownership = ownership
        self._start_dial = start_dial
        self._metrics = metrics
        self._room = asyncio.Event()
        self._full = asyncio.Event()

    def _starting(self) -> None:
        self._ownership.watch_room(self.room_changed)
        self.room_changed()

    def room_changed(self) -> None:
        """Re-check capacity (the ownership calls this on every change of room or draining)."""
        if self._ownership.room > 0 and not self._ownership.draining:
            self._full.clear()
            self._room.set()
        else:
            self._room.clear()
            self._full.set()

    async def _run(self) -> None:
        session: Session | None = None
        while True:
            session = await self._link.wait_session(after=session)
            try:
                await self._serve(session)
            except TransientError as exc:
                log.warning("dial intake lost its channel", extra={"error": str(exc)})
                session.abort("dial intake failed")

    async def _serve(self, session: Session) -> None:
        channel = await session.channel(prefetch=1)
        try:
            queue = await channel.get_queue(contract.DIALS_QUEUE, ensure=False)
            lost = asyncio.ensure_future(session.wait_lost())
            try:
                while not lost.done():
                    await _first(self._room.wait(), lost)
                    if lost.done():
                        return
                    tag = await queue.consume(self._on_message)
                    await _first(self._full.wait(), lost)
                    if not lost.done():
                        await queue.cancel(tag)
            finally:
                lost.cancel()
        except AMQP_FAILURES as exc:
            raise TransientError(f"dials consumer failed: {exc!r}") from exc
        finally:
            await session.close_channel(channel)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            request = dial_decoder.decode(message.body)
        except msgspec.DecodeError as exc:
            log.warning("undecodable dial dead-lettered", extra={"error": str(exc)[:200]})
            self._metrics.dead_letters.labels(source="dials", reason="undecodable").inc()
            await settle(message, ack=False, requeue=False)  # the queue dead-letters it to callhook.dead
            return
        reservation = self._ownership.reserve()
        if reservation is None:  # full or draining: another worker, or us once room frees
            await settle(message, ack=False, requeue=True)
            self.room_changed()
            return
        acked = False

        async def ack() -> None:
            nonlocal acked
            if not acked:
                acked = True
                await settle(message, ack=True)

        self._start_dial(request, reservation, ack)
        self.room_changed()


async def _first(wait: Coroutine[Any, Any, Any], lost: asyncio.Future[None]) -> None:
    """Until ``wait`` completes or the session is lost (``lost`` itself is left running)."""
    task: asyncio.Future[Any] = asyncio.ensure_future(wait)
    try:
        await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
